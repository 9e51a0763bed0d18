"""``saferl collect TASK [TASK ...]``: DSRL-format datasets from Lagrangian behaviour policies.

Each task is one cell of a :mod:`saferl.grid` grid (in this process, or as Ray tasks with
``--workers``/``--address``); the grid folder ``collect_grid`` lies beside the datasets, so a
finished task does no work on a re-run, and a task stopped (SIGTERM/SIGINT: exit status 75) or
killed mid-way resumes from its newest checkpoint in ``<dataset>.collect/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from saferl.commands import _checks as c
from saferl.commands._checks import UsageError

GRID = "collect_grid"
"""The grid folder (row files of the finished tasks), beside the datasets."""
RESUMABLE_EXIT = 75
"""Exit status of a collection stopped by SIGTERM/SIGINT at a checkpoint (as train-online's)."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "collect",
        help="train Lagrangian behaviour policies on each TASK and write DSRL-format datasets",
        description="Per task: train an SB3 PPO/SAC learner with a PID-Lagrangian cost penalty "
        "and an annealed episode cost limit, roll out checkpoints along training, keep "
        "trajectories spread over the (cost, reward) plane, and write an HDF5 dataset, a JSON "
        "summary and a spread plot. Each task is one cell of a grid (side by side as Ray tasks "
        f"with --workers or --address); finished tasks are recorded in {GRID}/ beside the "
        "datasets and a re-run skips them (unless their settings changed).",
    )
    p.add_argument("tasks", nargs="+", metavar="TASK",
                   help="env ids, e.g. SaferlPlanar-HopperVelocity-v1 "
                        "Saferl3D-Hopper3-v0")  # fmt: skip
    p.add_argument("--out", default=None,
                   help="one TASK: the dataset path, .hdf5 or .h5, with the summary (.json) and "
                        "the plot (.png) beside it (default: data/<TASK>.hdf5); several: a "
                        "folder that gets <TASK>.hdf5, .json and .png per task (default: "
                        "data)")  # fmt: skip
    p.add_argument("--algo", choices=("ppo", "sac"), default="ppo", help="behaviour learner")
    p.add_argument("--steps", type=c.positive_int, default=50_000, help="training env steps")
    p.add_argument("--max-episode-steps", type=c.positive_int, default=1000,
                   help="episode length limit")  # fmt: skip
    p.add_argument("--max-limbs", type=c.positive_int, default=None,
                   help="3D tasks: padding (default: the agent's limb count)")  # fmt: skip
    p.add_argument("--checkpoints", type=c.positive_int, default=8, help="policies rolled out")
    p.add_argument("--episodes", type=c.positive_int, default=4,
                   help="episodes per checkpoint and mode")  # fmt: skip
    p.add_argument("--noise", type=c.non_negative_float, nargs="+", default=[0.0, 0.3],
                   help="action-noise stds of the deterministic rollout modes")  # fmt: skip
    p.add_argument("--no-stochastic", action="store_true", help="skip stochastic rollouts")
    p.add_argument(
        "--cost-limit-start",
        type=c.non_negative_float,
        default=None,
        help="annealed episode cost limit at start (default 0.25 × episode length)",
    )
    p.add_argument("--cost-limit-end", type=c.non_negative_float, default=None,
                   help="... and at the end (default 0.01 × episode length)")  # fmt: skip
    p.add_argument(
        "--thresholds",
        type=c.non_negative_float,
        nargs="+",
        default=None,
        help="evaluation cost limits (default 0.02/0.04/0.08 × episode length)",
    )
    p.add_argument("--grid-bins", type=c.positive_int, default=10,
                   help="cells per axis of the (cost, reward) filter grid")  # fmt: skip
    p.add_argument("--max-per-cell", type=c.positive_int, default=8,
                   help="most trajectories kept per grid cell")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seeds the learner and every env")
    p.add_argument("--threads", type=c.positive_int, default=1,
                   help="torch threads per task (and the default of --cpus-per-cell)")  # fmt: skip
    c.add_grid_arguments(
        p, "task", None, " (the dataset paths must be on storage the cluster shares)"
    )
    p.add_argument("--checkpoint-every", type=c.positive_int, default=10_000,
                   help="checkpoint each task's collection every this many env steps into "
                        "<dataset>.collect/ (removed once the dataset is written); a killed or "
                        f"SIGTERM'd collection (exit status {RESUMABLE_EXIT}) resumes there when "
                        "the same command is run again")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


DATASET_SUFFIXES = (".hdf5", ".h5")


def output_paths(task: str, out: str | None) -> tuple[Path, Path, Path]:
    """(dataset, summary, plot) paths of one task, checked: the dataset ends in .hdf5/.h5, the
    three are different files and each can be written."""
    dataset = Path(out) if out else Path("data") / f"{task}.hdf5"
    if dataset.suffix.lower() not in DATASET_SUFFIXES:
        raise UsageError(f"--out {str(dataset)!r} must end in .hdf5 or .h5 (the dataset; its "
                         "summary and plot are written beside it as .json and .png)")  # fmt: skip
    paths = (dataset, dataset.with_suffix(".json"), dataset.with_suffix(".png"))
    c.check_distinct(list(zip(("dataset", "summary", "plot"), paths, strict=True)))
    for what, path in zip(("dataset", "summary", "plot"), paths, strict=True):
        c.check_output_file(path, what)
    return paths


def all_output_paths(tasks: list[str], out: str | None) -> tuple[list[Path], Path]:
    """The dataset path of each task and the grid folder, checked before any work. One task:
    ``--out`` is its dataset path (default ``data/<TASK>.hdf5``); several: ``--out`` is a folder
    (default ``data``) and task T's dataset is ``<out>/T.hdf5``. The grid folder lies beside the
    datasets."""
    twice = sorted({t for t in tasks if tasks.count(t) > 1})
    if twice:
        raise UsageError(f"each TASK may be given once; given more than once: {', '.join(twice)}")
    if len(tasks) == 1:
        datasets = [output_paths(tasks[0], out)[0]]
        grid = datasets[0].parent / GRID
    else:
        folder = Path(out) if out else Path("data")
        if folder.suffix.lower() in DATASET_SUFFIXES:
            raise UsageError(f"with several tasks --out is a folder (task T's dataset is "
                             f"<out>/T.hdf5), got {str(folder)!r}")  # fmt: skip
        c.check_output_dir(folder, "--out folder")
        datasets = [output_paths(t, str(folder / f"{t}.hdf5"))[0] for t in tasks]
        grid = folder / GRID
    c.check_output_dir(grid, "grid folder")
    return datasets, grid


def check_task(task: str, max_limbs: int | None) -> None:
    """UsageError unless ``task`` is a registered env id (that, given ``max_limbs``, is a 3D
    task with at most that many limbs)."""
    import envs

    with c.user_errors():
        env = envs.make(task)  # an unknown id: a KeyError naming close matches
    morph = getattr(env.unwrapped, "morph", None)
    env.close()
    if max_limbs is None:
        return
    if morph is None:
        raise UsageError(f"--max-limbs pads the limbs of 3D tasks (Saferl3D-*); {task} has none")
    if max_limbs < morph.num_limbs:
        raise UsageError(f"--max-limbs {max_limbs} is fewer than the {morph.num_limbs} limbs "
                         f"of {task}")  # fmt: skip
    with c.user_errors(f"--max-limbs {max_limbs}"):
        envs.make(task, max_limbs=max_limbs).close()


def run(args: argparse.Namespace) -> int:
    from saferl.common import stop_on_signals
    from saferl.data.collection import STOP, CollectConfig, output_files, run_collect

    # --- checks: nothing below trains until every input and output is known to be good
    datasets, grid_dir = all_output_paths(args.tasks, args.out)
    for task in args.tasks:
        check_task(task, args.max_limbs)
    env_kwargs = {"max_limbs": args.max_limbs} if args.max_limbs is not None else None
    thresholds = tuple(args.thresholds) if args.thresholds else None
    settings = {
        "env_kwargs": env_kwargs, "algo": args.algo, "total_timesteps": args.steps,
        "num_checkpoints": args.checkpoints, "episodes_per_mode": args.episodes,
        "rollout_noise": tuple(args.noise), "stochastic_rollouts": not args.no_stochastic,
        "cost_limit_start": args.cost_limit_start, "cost_limit_end": args.cost_limit_end,
        "cost_thresholds": thresholds, "grid_bins": args.grid_bins,
        "max_per_cell": args.max_per_cell, "seed": args.seed, "verbose": 0 if args.quiet else 1,
    }  # fmt: skip
    with c.user_errors():
        steps = args.max_episode_steps
        configs = [CollectConfig.for_task(task, steps, **settings) for task in args.tasks]
    if args.workers > 1 or args.address:
        c.check_ray()

    # --- the work
    # each task runs with as many torch threads as its cell has CPUs (default: --threads)
    cpus = args.cpus_per_cell if args.cpus_per_cell is not None else float(args.threads)
    log = (lambda _: None) if args.quiet else print
    STOP.clear()
    with stop_on_signals(STOP, "saferl collect: got {signal}; checkpointing"):
        grid = run_collect(list(zip(configs, datasets, strict=True)), grid_dir, args.workers,
                           args.address, cpus, args.gpus_per_cell, log=log,
                           checkpoint_every=args.checkpoint_every)  # fmt: skip
    rows = {row["task"]: row for row in grid.rows}
    for task in args.tasks:
        if task not in rows:
            continue
        r = rows[task]
        _, summary, plot = output_files(r["path"])
        what = (f"{r['transitions']} transitions, {r['trajectories']} trajectories, "
                f"R_min {r['reward_min']:.1f}, R_max {r['reward_max']:.1f}, "
                f"max cost {r['max_cost']:.0f}")  # fmt: skip
        if task in grid.ran:
            print(f"wrote {r['path']}, {summary.name} and {plot.name} ({what}) in "
                  f"{r['seconds']:.0f} s")  # fmt: skip
        else:
            print(f"already collected: {r['path']} ({what})")
    if STOP.is_set() and any(e.startswith("CollectionInterrupted") for e in grid.failed.values()):
        for key, error in grid.failed.items():
            print(f"stopped {key}: {error}", file=sys.stderr)
        print("saferl collect: stopped at a checkpoint; run the same command again to resume",
              file=sys.stderr)  # fmt: skip
        return RESUMABLE_EXIT
    return c.report_grid(grid, "collect", "task")


def write_summary(path: Path, result) -> None:
    """Per-trajectory returns, filter decisions, the training log and the metadata, as JSON
    (:func:`saferl.data.collection.write_summary`)."""
    from saferl.data.collection import write_summary as write

    write(path, result)
