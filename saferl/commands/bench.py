"""``saferl bench DATASET...``: the DSRL benchmark grid over dataset files."""

from __future__ import annotations

import argparse
from pathlib import Path

from saferl.commands import _checks as c
from saferl.commands._checks import UsageError

METHODS = ["bc_all", "bc_safe", "bcq_lag", "cpq", "fisor"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="run offline safe-RL methods on DSRL-format datasets (DSRL protocol)",
        description="Train each method on each dataset for each seed (and threshold, for "
        "threshold-conditioned methods), evaluate with the DSRL protocol and write "
        "<out>/<prefix>_table.md, <prefix>_scatter.png, <prefix>_rows.json, "
        "<prefix>_summary.json and <prefix>_config.json.",
    )
    p.add_argument("datasets", nargs="+", help="DSRL-format HDF5 files (saferl.data)")
    p.add_argument("--task", nargs="+", default=None, metavar="TASK",
                   help="DSRL task of each dataset, in order (e.g. "
                        "OfflineHopperVelocityGymnasium-v1): DSRL's reference returns, κ "
                        "20/40/80 and our env for it. Default: the file's own metadata, else "
                        "the task its DSRL file name shows, else from the data (a warning)"
                   )  # fmt: skip
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS,
                   help="methods to run")  # fmt: skip
    p.add_argument("--thresholds", type=c.non_negative_float, nargs="+", default=None,
                   help="cost thresholds κ (default: each dataset's cost_thresholds)")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--episodes", type=c.positive_int, default=20, help="evaluation episodes")
    p.add_argument("--max-eval-steps", type=c.positive_int, default=None,
                   help="truncate evaluation episodes (default: the dataset's length)")  # fmt: skip
    p.add_argument("--fisor-steps", type=c.positive_int, default=1_000_000,
                   help="FISOR gradient steps")  # fmt: skip
    p.add_argument("--fisor-actor-batch", type=c.positive_int, default=2048,
                   help="FISOR actor transitions per iteration (split in two updates)")  # fmt: skip
    p.add_argument("--fisor-critic-batch", type=c.positive_int, default=256,
                   help="FISOR critic batch size")  # fmt: skip
    p.add_argument("--fisor-width", type=c.positive_int, default=256,
                   help="FISOR actor LN-ResNet width")  # fmt: skip
    p.add_argument("--bc-steps", type=c.positive_int, default=100_000,
                   help="BC-All / BC-Safe gradient steps")  # fmt: skip
    p.add_argument("--bcq-steps", type=c.positive_int, default=100_000,
                   help="BCQ-Lag gradient steps")  # fmt: skip
    p.add_argument("--bcq-batch", type=c.positive_int, default=512, help="BCQ-Lag batch size")
    p.add_argument("--cpq-steps", type=c.positive_int, default=100_000,
                   help="CPQ gradient steps")  # fmt: skip
    p.add_argument("--cpq-batch", type=c.positive_int, default=512, help="CPQ batch size")
    p.add_argument("--device", default=None, help=c.DEVICE_HELP)
    p.add_argument("--threads", type=c.positive_int, default=1,
                   help="torch threads per cell (and the default of --cpus-per-cell)")  # fmt: skip
    c.add_grid_arguments(p, "cell", None)
    p.add_argument("--out", default="bench_results",
                   help="output folder; finished cells are kept in <out>/<prefix>_grid/cells and "
                        "a re-run skips them")  # fmt: skip
    p.add_argument("--prefix", default="bench", help="output file prefix")
    p.set_defaults(func=run)


def load_datasets(
    paths: list[str], bc_safe: bool, thresholds: list[float] | None, dsrl: list[str] | None = None
) -> list:
    """(task name, data, metadata) per file, every file checked before any training: it loads
    (as the DSRL task ``dsrl[i]`` if given), names a task of its own, its env can be built for
    evaluation and, when BC-Safe runs, each threshold (``thresholds`` or the dataset's own)
    leaves it at least one trajectory."""
    if dsrl is not None and len(dsrl) != len(paths):
        raise UsageError(f"--task names {len(dsrl)} task(s) for {len(paths)} dataset(s); "
                         "give one per dataset, in order")  # fmt: skip
    tasks, names = [], {}
    for i, path in enumerate(paths):
        data, meta = c.load_dataset(path, task=dsrl[i] if dsrl else None)
        name = Path(path).stem
        if name in names:
            raise UsageError(f"datasets {names[name]!r} and {path!r} have the same name {name!r}; "
                             "their rows would be merged (rename one)")  # fmt: skip
        names[name] = path
        c.check_env(meta, path)
        if bc_safe:
            for kappa in thresholds or meta.cost_thresholds:
                c.check_safe_data(data, kappa, path)
        tasks.append((name, data, meta))
    return tasks


def run(args: argparse.Namespace) -> int:
    from saferl.common import write_json
    from saferl.offline import make_config
    from saferl.offline.bench import BenchConfig, result_path, run_bench, write_results

    # --- checks: nothing below trains until every input and output is known to be good
    device = c.check_device(args.device)
    if not args.prefix or Path(args.prefix).name != args.prefix or args.prefix in (".", ".."):
        raise UsageError(f"--prefix must be a plain file-name prefix, got {args.prefix!r}")
    out = c.check_output_dir(args.out, "--out folder")
    for name in ("rows.json", "summary.json", "table.md", "scatter.png", "config.json"):
        c.check_output_file(result_path(out, args.prefix, name), "output file")
    tasks = load_datasets(args.datasets, "bc_safe" in args.methods, args.thresholds, args.task)
    with c.user_errors():
        budgets = {
            "fisor": {"steps": args.fisor_steps, "actor_batch_size": args.fisor_actor_batch,
                      "critic_batch_size": args.fisor_critic_batch,
                      "actor_width": args.fisor_width,
                      "log_every": max(1, args.fisor_steps // 10)},
            "bc_all": {"steps": args.bc_steps},
            "bc_safe": {"steps": args.bc_steps},
            "bcq_lag": {"steps": args.bcq_steps, "batch_size": args.bcq_batch},
            "cpq": {"steps": args.cpq_steps, "batch_size": args.cpq_batch},
        }  # fmt: skip
        configs = {name: budgets[name] for name in args.methods}
        for name, budget in configs.items():  # checked now (κ: a placeholder)
            make_config(name, budget, cost_limit=1.0)
        config = BenchConfig(
            methods=tuple(args.methods),
            thresholds=tuple(args.thresholds) if args.thresholds else None,
            seeds=tuple(args.seeds),
            episodes=args.episodes,
            max_eval_steps=args.max_eval_steps,
            configs=configs,
            device=device,
            cpus_per_cell=args.cpus_per_cell or args.threads,
            gpus_per_cell=args.gpus_per_cell,
        )
    if args.workers > 1 or args.address:
        c.check_ray()

    # --- the work
    grid = run_bench(tasks, config, result_path(out, args.prefix, "grid"), args.workers,
                     args.address)  # fmt: skip
    if grid.rows:
        summary, table = write_results(grid.rows, out, args.prefix)
        print(table)
    argv = {k: v for k, v in vars(args).items() if k != "func"}
    write_json(
        result_path(out, args.prefix, "config.json"), {"argv": argv, "device": device}, indent=1
    )
    return c.report_grid(grid, "bench", "cell")
