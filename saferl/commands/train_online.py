"""``saferl train-online``: multi-morphology TD3 with a SET / transformer / MLP policy.

``--seed N`` (the default, 0) trains once and saves into ``--out``; ``--seeds N [N ...]`` trains
once per seed, each seed a cell of a :mod:`saferl.grid` grid (Ray tasks with ``--workers`` or
``--address``), saves seed N's run into ``<out>/seed<N>/``, keeps the finished seeds' rows in
``<out>/seeds_grid/`` (a re-run skips them) and prints a per-agent mean ± sd over the seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from envs.locomotion import COST_TYPES
from saferl.commands import _checks as c
from saferl.commands._checks import UsageError
from saferl.online.td3 import TD3Config

GRID = "seeds_grid"
"""The grid folder of ``--seeds`` under ``--out`` (row files of the finished seeds)."""
SUMMARY = "seeds_summary.json"
"""Rows and per-agent mean ± sd over seeds of ``--seeds``, under ``--out``."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-online",
        help="train one shared policy on a suite of 3D agents with TD3 (SET, transformer, MLP)",
        description="Train one shared TD3 policy on every training agent of an envs suite, "
        "then evaluate it on the training and held-out agents. Defaults are 3D-SGRL's TD3 "
        "hyperparameters.",
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
    parser.add_argument("--learning-starts", type=c.non_negative_int,
                        default=defaults.learning_starts,
                        help="uniform random transitions before learning")  # fmt: skip
    parser.add_argument("--batch-size", type=c.positive_int, default=defaults.batch_size,
                        help="minibatch size")  # fmt: skip
    parser.add_argument("--lr", type=c.positive_float, default=defaults.learning_rate,
                        help="Adam step size")  # fmt: skip
    parser.add_argument("--max-grad-norm", type=c.positive_float, default=defaults.max_grad_norm,
                        help="gradient-norm clip")  # fmt: skip
    parser.add_argument("--buffer-size", type=c.positive_int, default=defaults.buffer_size,
                        help="replay buffer capacity")  # fmt: skip
    parser.add_argument("--eval-episodes", type=c.positive_int, default=defaults.eval_episodes,
                        help="evaluation episodes per agent")  # fmt: skip
    parser.add_argument("--eval-max-steps", type=c.positive_int, default=None,
                        help="cap evaluation episodes (default: the env's 1000 steps)")  # fmt: skip
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
    parser.add_argument("--out", default=None, help="folder for the actor checkpoint and metrics")
    parser.add_argument("--workers", type=c.positive_int, default=1,
                        help="with --seeds: seeds trained side by side as Ray tasks on this "
                             "machine (1: in-process, no Ray)")  # fmt: skip
    parser.add_argument("--address", default=None,
                        help="with --seeds: train on an existing Ray cluster, 'auto' or "
                             "ray://HOST:PORT (--out must be on storage the cluster "
                             "shares)")  # fmt: skip
    parser.add_argument("--cpus-per-cell", type=c.positive_float, default=1.0,
                        help="with --seeds: CPUs (and torch threads) a seed reserves")  # fmt: skip
    parser.add_argument("--gpus-per-cell", type=c.non_negative_float, default=0.0,
                        help="with --seeds: GPUs a seed reserves under Ray (a fraction shares "
                             "one GPU)")  # fmt: skip
    parser.add_argument("--sb3-zip", action="store_true",
                        help="also save Stable-Baselines3's model.zip (read back with pickle: "
                             "load it only from a trusted source)")  # fmt: skip
    parser.add_argument("--progress", action="store_true", help="show a progress bar (--seed runs)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saferl.online.td3 import save_run, train, validate

    # --- checks: nothing below trains until every input and output is known to be good
    device = c.check_device(args.device)
    if args.seeds is None and (args.workers > 1 or args.address):
        raise UsageError("--workers and --address run a --seeds grid (one cell per seed); for "
                         "one seed on Ray, give --seeds N")  # fmt: skip
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds must name each seed once, got {' '.join(map(str, args.seeds))}")
    names = ["model.safetensors", "config.json", "metrics.json"]
    names += ["model.zip"] if args.sb3_zip else []
    if args.out is not None:
        out = c.check_output_dir(args.out, "--out folder")
        if args.seeds is None:
            for name in names:
                c.check_output_file(out / name, "output file")
        else:
            c.check_output_dir(out / GRID, "grid folder")
            c.check_output_file(out / SUMMARY, "output file")
            for seed in args.seeds:
                c.check_output_dir(out / f"seed{seed}", "seed folder")
                for name in names:
                    c.check_output_file(out / f"seed{seed}" / name, "output file")
    with c.user_errors():
        config = TD3Config(
            suite=args.suite, agents=args.agents, policy=args.policy, net_config=args.net_config,
            total_steps=args.steps, learning_starts=args.learning_starts,
            batch_size=args.batch_size, learning_rate=args.lr, max_grad_norm=args.max_grad_norm,
            buffer_size=args.buffer_size, eval_episodes=args.eval_episodes,
            eval_max_steps=args.eval_max_steps,
            cost_type=args.cost_type, seed=args.seed,
        )  # fmt: skip
        validate(config)  # suite, agents, policy kind and --net-config fields
    if args.seeds is not None:
        if args.workers > 1 or args.address:
            c.check_ray()
        return run_seeds(args, config, device)

    # --- the work
    print(json.dumps(dataclasses.asdict(config)))
    result = train(config, device=device, progress=args.progress)
    print(f"trained {config.policy} on {config.suite} for {config.total_steps} transitions "
          f"in {result.seconds:.0f} s; {len(result.episodes)} training episodes")  # fmt: skip
    for agent, stats in result.evaluation.items():
        print(f"  {stats['split']:8s} {agent:14s} return {stats['return_mean']:8.1f} "
              f"± {stats['return_sd']:.1f}  cost {stats['cost_mean']:.1f}")  # fmt: skip
    if args.out:
        paths = save_run(result, args.out, sb3_zip=args.sb3_zip)
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
                   "gpus_per_cell": args.gpus_per_cell}  # fmt: skip
    if args.out is not None:
        grid = run_grid(config, args.seeds, Path(args.out) / GRID, **grid_kwargs)
    else:  # nothing is saved: the grid lives as long as the command
        with tempfile.TemporaryDirectory(prefix="saferl-seeds-") as folder:
            grid = run_grid(config, args.seeds, folder, **grid_kwargs)
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
    print(f"{len(grid.ran)} cells ran, {len(grid.skipped)} were already done, "
          f"{len(grid.failed)} failed ({grid.seconds:.0f} s)")  # fmt: skip
    if grid.failed:
        for key, error in grid.failed.items():
            print(f"failed cell {key}: {error}", file=sys.stderr)
        print(f"saferl train-online: {len(grid.failed)} of {len(args.seeds)} seeds failed; "
              "re-run the same command to retry them (finished seeds are kept)",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0
