"""``saferl train-offline METHOD DATASET``: train one offline safe-RL method and save it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-offline",
        help="train FISOR / BC-All / BC-Safe / BCQ-Lag on a DSRL-format dataset",
        description="Train one method, write a safetensors + JSON checkpoint to --out and, "
        "unless --episodes 0, evaluate it with the DSRL protocol (metrics.json).",
    )
    p.add_argument("method", choices=["fisor", "bc_all", "bc_safe", "bcq_lag"])
    p.add_argument("dataset", help="DSRL-format HDF5 file (saferl.data)")
    p.add_argument("--out", required=True, help="checkpoint folder")
    p.add_argument("--iterations", type=int, default=None,
                   help="gradient steps (default: the method's reference budget)")  # fmt: skip
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="cost threshold κ for bc_safe / bcq_lag (default: the dataset's first)",
    )
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from saferl.data import load_dataset
    from saferl.offline import (
        BCConfig,
        BCQLagConfig,
        FISORConfig,
        dsrl_scores,
        evaluate_policy,
        make_env,
        task_info,
        train_bc,
        train_bcq_lag,
        train_fisor,
    )

    torch.set_num_threads(args.threads)
    data, meta = load_dataset(args.dataset)
    kappa = args.threshold if args.threshold is not None else meta.cost_thresholds[0]
    steps = {} if args.iterations is None else {"steps": args.iterations}
    if args.method == "fisor":
        its = {} if args.iterations is None else {"iterations": args.iterations}
        agent, log = train_fisor(data, meta, FISORConfig(seed=args.seed, **its), args.device,
                                 progress=True)  # fmt: skip
    elif args.method == "bcq_lag":
        cfg = BCQLagConfig(seed=args.seed, cost_limit=kappa, **steps)
        agent, log = train_bcq_lag(data, meta, cfg, args.device, progress=True)
    else:
        limit = kappa if args.method == "bc_safe" else None
        cfg = BCConfig(seed=args.seed, cost_limit=limit, **steps)
        agent, log = train_bc(data, meta, cfg, args.device, progress=True)
    agent.save(args.out)
    out = {"method": args.method, "dataset": args.dataset, "train_log": log}
    if args.episodes > 0:
        info = task_info(meta)
        res = evaluate_policy(agent.act, lambda: make_env(info.env_id, **meta.env_kwargs),
                              args.episodes, args.seed, info.max_episode_steps)  # fmt: skip
        out["scores"] = dsrl_scores(res, info, meta.cost_thresholds)
        for r in out["scores"]:
            print(
                f"κ={r['threshold']:g}: normalised reward {r['reward']:.3f}, "
                f"normalised cost {r['cost']:.3f} ({'safe' if r['safe'] else 'unsafe'})"
            )
    Path(args.out, "metrics.json").write_text(json.dumps(out, indent=1))
    return 0
