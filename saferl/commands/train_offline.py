"""``saferl train-offline METHOD DATASET``: train one offline safe-RL method and save it."""

from __future__ import annotations

import argparse

from saferl.commands import _checks as c
from saferl.commands._checks import UsageError

METHODS = ["fisor", "bc_all", "bc_safe", "bcq_lag", "cpq"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-offline",
        help="train FISOR / BC-All / BC-Safe / BCQ-Lag / CPQ on a DSRL-format dataset",
        description="Train one method, write a safetensors + JSON checkpoint to --out and, "
        "unless --episodes 0, evaluate it with the DSRL protocol (metrics.json).",
    )
    p.add_argument("method", choices=METHODS, help="offline safe-RL method")
    p.add_argument("dataset", help="DSRL-format HDF5 file (saferl.data)")
    p.add_argument("--task", default=None,
                   help="DSRL task of the dataset (e.g. OfflineHopperVelocityGymnasium-v1; "
                        "default: its metadata, else its DSRL file name)")  # fmt: skip
    p.add_argument("--out", required=True, help="checkpoint folder")
    p.add_argument("--steps", type=c.positive_int, default=None,
                   help="gradient steps (default: the method's reference budget)")  # fmt: skip
    p.add_argument(
        "--threshold",
        type=c.non_negative_float,
        default=None,
        help="cost threshold κ for bc_safe / bcq_lag / cpq (default: the dataset's first)",
    )
    p.add_argument("--episodes", type=c.non_negative_int, default=20,
                   help="evaluation episodes (0: no evaluation)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="training and evaluation seed")
    p.add_argument("--device", default=None, help=c.DEVICE_HELP)
    p.add_argument("--threads", type=c.positive_int, default=1, help="torch threads on CPU")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saferl.common import torch_threads, write_json
    from saferl.offline import get_method, make_config

    # --- checks: nothing below trains until every input and output is known to be good
    device = c.check_device(args.device)
    out = c.check_output_dir(args.out, "--out folder")
    for name in ("model.safetensors", "config.json", "metrics.json"):
        c.check_output_file(out / name, "output file")
    data, meta = c.load_dataset(args.dataset, task=args.task)
    method = get_method(args.method)
    kappa = args.threshold
    if kappa is None and method.threshold_conditioned:
        if not meta.cost_thresholds:
            raise UsageError(f"dataset {args.dataset!r} records no cost thresholds; "
                             f"pass --threshold for {args.method}")  # fmt: skip
        kappa = float(meta.cost_thresholds[0])
    if args.method == "bc_safe":
        c.check_safe_data(data, kappa, args.dataset)
    if args.episodes > 0:
        c.check_env(meta, args.dataset)
    steps = {} if args.steps is None else {"steps": args.steps}
    with c.user_errors():
        config = make_config(args.method, seed=args.seed, cost_limit=kappa, **steps)

    # --- the work
    with torch_threads(args.threads):
        agent, log = method.train(data, meta, config, device, progress=True)
        agent.save(out)
        metrics = {"method": args.method, "dataset": args.dataset, "device": device,
                   "train_log": log}  # fmt: skip
        if args.episodes > 0:
            metrics["scores"] = evaluate(agent, meta, args.episodes, args.seed)
            for r in metrics["scores"]:
                print(
                    f"κ={r['threshold']:g}: normalised reward {r['reward']:.3f}, "
                    f"normalised cost {r['cost']:.3f} ({'safe' if r['safe'] else 'unsafe'})"
                )
    write_json(out / "metrics.json", metrics, indent=1)
    return 0


def evaluate(agent, meta, episodes: int, seed: int) -> list[dict]:
    """DSRL scores of ``agent`` on the dataset's own task, at each of its thresholds."""
    from saferl.data import rollout
    from saferl.offline import dsrl_scores

    res = rollout(agent.act, meta.make_env, episodes, seed=seed,
                  max_steps=meta.max_episode_steps, record=False)  # fmt: skip
    return dsrl_scores(res, meta, meta.cost_thresholds)
