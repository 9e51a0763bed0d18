"""``saferl collect TASK``: make a DSRL-format dataset with Lagrangian behaviour policies."""

from __future__ import annotations

import argparse
from pathlib import Path

from saferl.commands import _checks as c
from saferl.commands._checks import UsageError
from saferl.common.io import write_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "collect",
        help="train Lagrangian behaviour policies on TASK and write a DSRL-format dataset",
        description="Train an SB3 PPO/SAC learner with a PID-Lagrangian cost penalty and an "
        "annealed episode cost limit, roll out checkpoints along training, keep trajectories "
        "spread over the (cost, reward) plane, and write an HDF5 dataset, a JSON summary and "
        "a spread plot.",
    )
    p.add_argument("task", help="env id, e.g. SaferlPlanar-HopperVelocity-v0, Saferl3D-Hopper3-v0")
    p.add_argument("--out", default=None,
                   help="dataset path, .hdf5 or .h5; the summary (.json) and the plot (.png) "
                        "go beside it (default: data/<TASK>.hdf5)")  # fmt: skip
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
    p.add_argument("--threads", type=c.positive_int, default=1, help="torch threads")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


DATASET_SUFFIXES = (".hdf5", ".h5")


def output_paths(task: str, out: str | None) -> tuple[Path, Path, Path]:
    """(dataset, summary, plot) paths, checked: the dataset ends in .hdf5/.h5, the three are
    different files and each can be written."""
    dataset = Path(out) if out else Path("data") / f"{task}.hdf5"
    if dataset.suffix.lower() not in DATASET_SUFFIXES:
        raise UsageError(f"--out {str(dataset)!r} must end in .hdf5 or .h5 (the dataset; its "
                         "summary and plot are written beside it as .json and .png)")  # fmt: skip
    paths = (dataset, dataset.with_suffix(".json"), dataset.with_suffix(".png"))
    c.check_distinct(list(zip(("dataset", "summary", "plot"), paths, strict=True)))
    for what, path in zip(("dataset", "summary", "plot"), paths, strict=True):
        c.check_output_file(path, what)
    return paths


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
    from saferl.common import torch_threads
    from saferl.data import save_dataset
    from saferl.data.collection import CollectConfig, collect
    from saferl.data.plot import plot_spread

    # --- checks: nothing below trains until every input and output is known to be good
    out, summary_path, plot_path = output_paths(args.task, args.out)
    check_task(args.task, args.max_limbs)
    env_kwargs = {"max_limbs": args.max_limbs} if args.max_limbs is not None else None
    thresholds = tuple(args.thresholds) if args.thresholds else None
    with c.user_errors():
        config = CollectConfig.for_task(
            args.task,
            args.max_episode_steps,
            env_kwargs=env_kwargs,
            algo=args.algo,
            total_timesteps=args.steps,
            num_checkpoints=args.checkpoints,
            episodes_per_mode=args.episodes,
            rollout_noise=tuple(args.noise),
            stochastic_rollouts=not args.no_stochastic,
            cost_limit_start=args.cost_limit_start,
            cost_limit_end=args.cost_limit_end,
            cost_thresholds=thresholds,
            grid_bins=args.grid_bins,
            max_per_cell=args.max_per_cell,
            seed=args.seed,
            verbose=0 if args.quiet else 1,
        )

    # --- the work
    with torch_threads(args.threads):
        result = collect(config)
    save_dataset(out, result.data, result.metadata)
    write_summary(summary_path, result)
    title = f"{args.task}: {result.metadata.num_trajectories} trajectories kept"
    plot_spread(result.all_returns, result.kept, result.checkpoint,
                result.metadata.cost_thresholds, plot_path, title=title)  # fmt: skip
    meta = result.metadata
    print(f"wrote {out}, {summary_path.name} and {plot_path.name} "
          f"({len(result.data['rewards'])} transitions, {meta.num_trajectories} "
          f"trajectories, R_min {meta.reward_min:.1f}, R_max {meta.reward_max:.1f}, "
          f"max cost {meta.max_cost:.0f}) in {result.seconds:.0f} s")  # fmt: skip
    return 0


def write_summary(path: Path, result) -> None:
    """Per-trajectory returns, filter decisions, the training log and the metadata, as JSON."""
    from dataclasses import asdict

    summary = {
        "metadata": asdict(result.metadata),
        "returns_cost_reward": result.all_returns.round(4).tolist(),
        "kept": result.kept.astype(int).tolist(),
        "checkpoint": result.checkpoint.astype(int).tolist(),
        "training_log": result.training_log,
        "seconds": result.seconds,
    }
    write_json(path, summary, indent=1)
