"""``saferl train-online``: multi-morphology TD3, SAC or PPO with a SET / transformer / MLP policy.

``--algo td3`` (the default, the reference's learner), ``sac`` (same replay, warm-up and one
update per transition) or ``ppo`` (on-policy rollouts of ``--n-steps`` per agent, ``--n-epochs``
passes, SB3's MuJoCo defaults). Off-policy flags (``--learning-starts``, ``--gradient-steps``,
``--buffer-size``, ``--max-grad-norm``) with ``--algo ppo``, and PPO's flags with td3 or sac, are
refused; ``--lr`` and ``--batch-size`` default to the algorithm's own values.

``--seed N`` (the default, 0) trains once and saves into ``--out``; ``--seeds N [N ...]`` trains
once per seed, each seed a cell of a :mod:`saferl.grid` grid (Ray tasks with ``--workers`` or
``--address``), saves seed N's run into ``<out>/seed<N>/``, keeps the finished seeds' rows in
``<out>/seeds_grid/`` (a re-run skips them) and prints a per-agent mean ± sd over the seeds.

``--out`` is required (a run that saves nothing is refused). A ``--seed`` run prints its budget
(transitions, warm-up, updates, update-to-data ratio), writes a resumable checkpoint into
``<out>/checkpoints/`` every ``--checkpoint-every`` transitions, and on SIGTERM/SIGINT writes
one more and exits with status 75 (``RESUMABLE_EXIT``); ``--resume <out>`` continues it to the
same budget with its saved settings, or with ``--steps N`` to a larger budget N (a finished run
trains longer; its learning curve continues).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import threading
from pathlib import Path

from envs.locomotion import COST_TYPES
from saferl.commands import _checks as c
from saferl.commands._checks import UsageError
from saferl.online.td3 import ALGOS, WARMUP_PER_AGENT, TD3Config

GRID = "seeds_grid"
"""The grid folder of ``--seeds`` under ``--out`` (row files of the finished seeds)."""
RESUMABLE_EXIT = 75
"""Exit status of a run stopped by SIGTERM/SIGINT after writing its checkpoint (EX_TEMPFAIL:
continue it with ``--resume``)."""
CONFIG_FLAGS = ("suite", "agents", "policy", "net_config", "steps", "algo", "learning_starts",
                "gradient_steps", "batch_size", "lr", "max_grad_norm", "buffer_size", "n_steps",
                "n_epochs", "eval_episodes", "eval_max_steps", "eval_every", "cost_type", "seed",
                "seeds", "out")  # fmt: skip
"""Flags that set up a run: ``--resume`` takes them from the saved run instead (except
``--steps`` and ``--eval-every``, which may change: a larger budget trains the run longer)."""
SUMMARY = "seeds_summary.json"
"""Rows and per-agent mean ± sd over seeds of ``--seeds``, under ``--out``."""
OFF_POLICY_FLAGS = ("learning_starts", "gradient_steps", "buffer_size", "max_grad_norm")
"""Flags of TD3 and SAC only (replay, warm-up, update ratio, gradient clip)."""
PPO_FLAGS = ("n_steps", "n_epochs")
"""Flags of PPO only."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-online",
        help="train one shared policy on a suite of 3D agents with TD3, SAC or PPO (SET, "
        "transformer, MLP)",
        description="Train one shared policy (TD3, SAC or PPO) on every training agent of an "
        "envs suite, then evaluate it on the training and held-out agents. Defaults are "
        "3D-SGRL's TD3 hyperparameters (SAC shares them; PPO uses SB3's MuJoCo defaults).",
    )
    defaults = TD3Config()
    parser.add_argument("--suite", default=defaults.suite, help="suite of envs.catalogue()")
    parser.add_argument("--agents", nargs="+", default=None,
                        help="train on these catalogue agents (default: the suite's training "
                             "agents)")  # fmt: skip
    parser.add_argument("--policy", default=defaults.policy, choices=["set", "transformer", "mlp"],
                        help="policy network")  # fmt: skip
    parser.add_argument("--net-config", type=c.json_object, default=None,
                        help="JSON object of network sizes, e.g. '{\"width\": 64}' (default: "
                             "the policy's reference sizes)")  # fmt: skip
    parser.add_argument("--steps", type=c.positive_int, default=defaults.total_steps,
                        help="transitions over all agents")  # fmt: skip
    parser.add_argument("--algo", default=defaults.algo, choices=ALGOS,
                        help="learner: td3 (the reference's), sac (SB3's SAC, same replay, "
                             "warm-up and update ratio) or ppo (SB3's PPO)")  # fmt: skip
    parser.add_argument("--learning-starts", type=c.non_negative_int, default=None,
                        help="uniform random transitions (over all training agents) before "
                             f"learning (default: {WARMUP_PER_AGENT} per training agent, the "
                             "reference's)")  # fmt: skip
    parser.add_argument("--gradient-steps", type=c.positive_int, default=None,
                        help="updates after each step of all agents (default: the number of "
                             "training agents, i.e. one update per transition)")  # fmt: skip
    parser.add_argument("--batch-size", type=c.positive_int, default=None,
                        help=f"minibatch size (default: {defaults.batch_size} for td3 and sac, "
                             f"{defaults.ppo_batch_size} for ppo)")  # fmt: skip
    parser.add_argument("--lr", type=c.positive_float, default=None,
                        help=f"Adam step size (default: {defaults.learning_rate:g} for td3 and "
                             f"sac, {defaults.ppo_learning_rate:g} for ppo)")  # fmt: skip
    parser.add_argument("--gamma", type=c.discount, default=None,
                        help=f"discount factor (default: {defaults.gamma:g}, the "
                             "reference's)")  # fmt: skip
    parser.add_argument("--max-grad-norm", type=c.positive_float, default=None,
                        help=f"gradient-norm clip of td3 and sac (default: "
                             f"{defaults.max_grad_norm:g})")  # fmt: skip
    parser.add_argument("--buffer-size", type=c.positive_int, default=None,
                        help=f"replay buffer capacity of td3 and sac (default: "
                             f"{defaults.buffer_size})")  # fmt: skip
    parser.add_argument("--n-steps", type=c.positive_int, default=None,
                        help=f"ppo: steps of every agent per rollout (default: "
                             f"{defaults.n_steps})")  # fmt: skip
    parser.add_argument("--n-epochs", type=c.positive_int, default=None,
                        help="ppo: passes over each rollout (default: "
                             f"{defaults.n_epochs})")  # fmt: skip
    parser.add_argument("--eval-episodes", type=c.positive_int, default=defaults.eval_episodes,
                        help="evaluation episodes per agent")  # fmt: skip
    parser.add_argument("--eval-max-steps", type=c.positive_int, default=None,
                        help="cap evaluation episodes (default: the env's 1000 steps)")  # fmt: skip
    parser.add_argument("--eval-every", type=c.positive_int, default=None,
                        help="also evaluate every this many transitions (the learning curve "
                             "in metrics.json; default: only at the end)")  # fmt: skip
    parser.add_argument("--cost-type", default=defaults.cost_type, choices=COST_TYPES,
                        help="safety cost recorded in info['cost']")  # fmt: skip
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=defaults.seed,
                       help="one run: seeds numpy, torch, the envs and SB3")  # fmt: skip
    seeds.add_argument("--seeds", type=int, nargs="+", default=None,
                       help="one run per seed, each a cell of a grid (side by side with "
                            "--workers/--address); with --out, seed N's run goes to "
                            f"<out>/seed<N>/, finished seeds are kept in <out>/{GRID}/ (a "
                            "re-run skips them) and the mean ± sd over seeds goes to "
                            f"<out>/{SUMMARY}")  # fmt: skip
    parser.add_argument("--device", default=None, help=c.DEVICE_HELP)
    parser.add_argument("--threads", type=c.positive_int, default=1,
                        help="torch threads on CPU (--seed runs; a --seeds cell uses "
                             "--cpus-per-cell)")  # fmt: skip
    parser.add_argument("--out", default=None,
                        help="run folder (required unless --resume): the actor checkpoint and "
                             "metrics at the end, resumable checkpoints in <out>/checkpoints/ "
                             "during the run")  # fmt: skip
    parser.add_argument("--resume", default=None, metavar="DIR",
                        help="continue the run saved in DIR (a folder an earlier --out run "
                             "wrote) to its total budget, with its saved settings; with --steps N "
                             "to a new budget N (train a finished run longer)")  # fmt: skip
    parser.add_argument("--checkpoint-every", type=c.positive_int, default=10_000,
                        help="write a resumable checkpoint every this many transitions (a "
                             "SIGTERM also writes one, then the run exits with status "
                             f"{RESUMABLE_EXIT})")  # fmt: skip
    c.add_grid_arguments(
        parser, "seed", 1.0, " (with --seeds; --out must be on storage the cluster shares)"
    )
    parser.add_argument("--sb3-zip", action="store_true",
                        help="also save Stable-Baselines3's model.zip (read back with pickle: "
                             "load it only from a trusted source)")  # fmt: skip
    parser.add_argument("--progress", action="store_true", help="show a progress bar (--seed runs)")
    parser.set_defaults(func=run)
    parser.set_defaults(flag_defaults={name: parser.get_default(name) for name in CONFIG_FLAGS})


def run(args: argparse.Namespace) -> int:
    from saferl.online.td3 import saved_config, validate

    # --- checks: nothing below trains until every input and output is known to be good
    device = c.check_device(args.device)
    if args.resume is not None:
        return resume_run(args, device)
    if args.out is None:
        raise UsageError("train-online needs --out DIR: the run folder for its checkpoints "
                         "and results (a long run that saves nothing is refused); continue a "
                         "saved run with --resume DIR")  # fmt: skip
    if args.seeds is None and (args.workers > 1 or args.address):
        raise UsageError("--workers and --address run a --seeds grid (one cell per seed); for "
                         "one seed on Ray, give --seeds N")  # fmt: skip
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds must name each seed once, got {' '.join(map(str, args.seeds))}")
    check_algo_flags(args)
    names = ["model.safetensors", "config.json", "metrics.json"]
    names += ["model.zip"] if args.sb3_zip else []
    out = c.check_output_dir(args.out, "--out folder")
    if args.seeds is None:
        for name in names:
            c.check_output_file(out / name, "output file")
        c.check_output_dir(out / "checkpoints", "checkpoint folder")
        with c.user_errors(f"--out {str(out)!r}"):
            if (out / "checkpoints" / "latest").exists():
                saved_config(out)  # raises on a broken checkpoint
                raise UsageError(f"--out {str(out)!r} already holds a run's checkpoints: "
                                 f"continue it with --resume {out}, or pick another "
                                 "folder")  # fmt: skip
    else:
        c.check_output_dir(out / GRID, "grid folder")
        c.check_output_file(out / SUMMARY, "output file")
        for seed in args.seeds:
            c.check_output_dir(out / f"seed{seed}", "seed folder")
            for name in names:
                c.check_output_file(out / f"seed{seed}" / name, "output file")
    with c.user_errors():
        config = config_of(args)
        validate(config)  # suite, agents, policy kind and --net-config fields
    if args.seeds is not None:
        if args.workers > 1 or args.address:
            c.check_ray()
        return run_seeds(args, config, device)
    return train_one(args, config, device, Path(args.out), resumed=False)


def check_algo_flags(args: argparse.Namespace) -> None:
    """One-line errors for flags the chosen ``--algo`` does not use."""
    ppo = args.algo == "ppo"
    wrong = [n for n in (OFF_POLICY_FLAGS if ppo else PPO_FLAGS) if getattr(args, n) is not None]
    if wrong:
        flags = ", ".join("--" + name.replace("_", "-") for name in wrong)
        kind = "off-policy flags of td3 and sac" if ppo else "flags of --algo ppo"
        raise UsageError(f"{flags}: {kind}, not used by --algo {args.algo}")


def config_of(args: argparse.Namespace) -> TD3Config:
    """The run's config from the flags (those not given keep the config's defaults; ``--lr``
    and ``--batch-size`` set PPO's own fields with ``--algo ppo``)."""
    ppo = args.algo == "ppo"
    given = {
        "learning_starts": args.learning_starts, "gradient_steps": args.gradient_steps,
        "max_grad_norm": args.max_grad_norm, "buffer_size": args.buffer_size,
        "gamma": args.gamma,
        "n_steps": args.n_steps, "n_epochs": args.n_epochs,
        "ppo_learning_rate" if ppo else "learning_rate": args.lr,
        "ppo_batch_size" if ppo else "batch_size": args.batch_size,
    }  # fmt: skip
    return TD3Config(
        suite=args.suite, agents=args.agents, policy=args.policy, net_config=args.net_config,
        algo=args.algo, total_steps=args.steps, eval_episodes=args.eval_episodes,
        eval_max_steps=args.eval_max_steps, eval_every=args.eval_every,
        cost_type=args.cost_type, seed=args.seed,
        **{name: value for name, value in given.items() if value is not None},
    )  # fmt: skip


def resume_run(args: argparse.Namespace, device: str) -> int:
    """``--resume DIR``: the saved run's config, then :func:`train_one` from its checkpoint."""
    from saferl.online.td3 import check_resumable, saved_config, validate

    may_change = ("steps", "eval_every")
    given = [name for name, default in args.flag_defaults.items()
             if getattr(args, name) != default and name not in may_change]  # fmt: skip
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"--resume continues a run with its saved settings; drop {flags}")
    folder = Path(args.resume)
    if not folder.is_dir():
        raise UsageError(f"--resume folder {str(folder)!r} does not exist")
    with c.user_errors(f"cannot resume {str(folder)!r}"):
        config = saved_config(folder)
        if args.steps != args.flag_defaults["steps"]:
            config = dataclasses.replace(config, total_steps=args.steps)
        if args.eval_every is not None:
            config = dataclasses.replace(config, eval_every=args.eval_every)
        validate(config)
        check_resumable(config, folder)
    for name in ("model.safetensors", "config.json", "metrics.json"):
        c.check_output_file(folder / name, "output file")
    c.check_output_dir(folder / "checkpoints", "checkpoint folder")
    return train_one(args, config, device, folder, resumed=True)


def train_one(
    args: argparse.Namespace, config: TD3Config, device: str, out: Path, resumed: bool
) -> int:
    """Train one run into ``out`` with checkpoints; SIGTERM/SIGINT write one and stop."""
    from saferl.common import stop_on_signals, torch_threads
    from saferl.online.td3 import budget, save_run, train

    plan = budget(config)
    print(json.dumps(dataclasses.asdict(config)))
    if config.algo == "ppo":
        ratio = (f"{plan['gradient_steps']} per rollout of {plan['rollout']} transitions: "
                 f"{plan['update_to_data']:.3g} update per transition")  # fmt: skip
    else:
        ratio = (f"{plan['gradient_steps']} per step of all agents: {plan['update_to_data']:g} "
                 "update per transition")  # fmt: skip
    print(f"budget ({config.algo}): {plan['transitions']} transitions over {plan['envs']} "
          f"agents, {plan['learning_starts']} random warm-up transitions, {plan['updates']} "
          f"updates ({ratio}); checkpoints every {args.checkpoint_every} transitions in "
          f"{out / 'checkpoints'}")  # fmt: skip
    message = "saferl train-online: got {signal}; writing a checkpoint"
    with stop_on_signals(threading.Event(), message) as stop, torch_threads(args.threads):
        result = train(config, device=device, progress=args.progress, out=out,
                       checkpoint_every=args.checkpoint_every, resume_run=resumed,
                       stop=stop.is_set)  # fmt: skip
    done = result.run["transitions_done"]
    if result.interrupted:
        print(f"stopped at {done} of {plan['transitions']} transitions; checkpoint "
              f"{result.run['checkpoint']}")  # fmt: skip
        print(f"resume with: saferl train-online --resume {out}", flush=True)
        return RESUMABLE_EXIT
    print(f"trained {config.policy} with {config.algo} on {config.suite} for {done} transitions "
          f"({result.run['updates_done']} updates) in {result.seconds:.0f} s; "
          f"{len(result.episodes)} training episodes")  # fmt: skip
    for agent, stats in result.evaluation.items():
        print(f"  {stats['split']:8s} {agent:14s} return {stats['return_mean']:8.1f} "
              f"± {stats['return_sd']:.1f}  cost {stats['cost_mean']:.1f}")  # fmt: skip
    paths = save_run(result, str(out), sb3_zip=args.sb3_zip)
    print("saved", ", ".join(paths.values()))
    return 0


def run_seeds(args: argparse.Namespace, config: TD3Config, device: str) -> int:
    """``--seeds``: one grid cell per seed, then the per-agent mean ± sd over the seeds."""
    from saferl.common import write_json
    from saferl.online.td3 import run_seeds as run_grid
    from saferl.online.td3 import seed_summary

    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "seed"}
    print(json.dumps({**settings, "seeds": args.seeds}))
    grid_kwargs = {"device": device, "out": args.out, "sb3_zip": args.sb3_zip,
                   "workers": args.workers, "address": args.address,
                   "cpus_per_cell": args.cpus_per_cell,
                   "gpus_per_cell": args.gpus_per_cell,
                   "checkpoint_every": args.checkpoint_every}  # fmt: skip
    grid = run_grid(config, args.seeds, Path(args.out) / GRID, **grid_kwargs)
    for row in grid.rows:
        print(f"  seed {row['seed']:<4d} {row['split']:8s} {row['agent']:14s} return "
              f"{row['return_mean']:8.1f} ± {row['return_sd']:.1f}  cost "
              f"{row['cost_mean']:.1f}")  # fmt: skip
    summary = seed_summary(grid.rows)
    if summary:
        print(f"mean ± sd over seeds ({config.policy} on {config.suite}, "
              f"{config.total_steps} transitions each):")  # fmt: skip
        print(f"  {'split':8s} {'agent':14s} {'seeds':>5s}  {'return':>17s}  {'cost':>15s}")
        for r in summary:
            print(f"  {r['split']:8s} {r['agent']:14s} {r['seeds']:5d}  "
                  f"{r['return_mean']:8.1f} ± {r['return_sd']:6.1f}  "
                  f"{r['cost_mean']:6.1f} ± {r['cost_sd']:6.1f}")  # fmt: skip
    if args.out is not None:
        path = Path(args.out) / SUMMARY
        write_json(path, {"config": settings, "seeds": args.seeds, "device": device,
                          "rows": grid.rows, "summary": summary}, indent=1)  # fmt: skip
        print(f"saved {path}; the runs in {Path(args.out) / 'seed<N>'}/")
    return c.report_grid(grid, "train-online", "seed")
