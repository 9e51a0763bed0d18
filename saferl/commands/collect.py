"""``saferl collect TASK``: make a DSRL-format dataset with Lagrangian behaviour policies."""

from __future__ import annotations

import argparse
from pathlib import Path

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
    p.add_argument("--out", default=None, help="dataset path (default data/<TASK>.hdf5)")
    p.add_argument("--algo", choices=("ppo", "sac"), default="ppo")
    p.add_argument("--steps", type=int, default=50_000, help="training env steps")
    p.add_argument("--max-episode-steps", type=int, default=1000)
    p.add_argument("--max-limbs", type=int, default=None,
                   help="3D tasks: padding (default: the agent's limb count)")  # fmt: skip
    p.add_argument("--checkpoints", type=int, default=8, help="policies rolled out")
    p.add_argument("--episodes", type=int, default=4, help="episodes per checkpoint and mode")
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3],
                   help="action-noise stds of the deterministic rollout modes")  # fmt: skip
    p.add_argument("--no-stochastic", action="store_true", help="skip stochastic rollouts")
    p.add_argument(
        "--cost-limit-start",
        type=float,
        default=None,
        help="annealed episode cost limit at start (default 0.25 × episode length)",
    )
    p.add_argument("--cost-limit-end", type=float, default=None,
                   help="... and at the end (default 0.01 × episode length)")  # fmt: skip
    p.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=None,
        help="evaluation cost limits (default 0.02/0.04/0.08 × episode length)",
    )
    p.add_argument("--grid-bins", type=int, default=10)
    p.add_argument("--max-per-cell", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from saferl.data import save_dataset
    from saferl.data.collection import CollectConfig, collect
    from saferl.data.plot import plot_spread

    torch.set_num_threads(max(1, args.threads))
    thresholds = tuple(args.thresholds) if args.thresholds else None
    config = CollectConfig.for_task(
        args.task,
        args.max_episode_steps,
        env_kwargs={"max_limbs": args.max_limbs} if args.max_limbs else None,
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
    result = collect(config)
    out = Path(args.out or Path("data") / f"{args.task}.hdf5")
    save_dataset(out, result.data, result.metadata)
    write_summary(out.with_suffix(".json"), result)
    title = f"{args.task}: {result.metadata.num_trajectories} trajectories kept"
    plot_spread(result.all_returns, result.kept, result.checkpoint,
                result.metadata.cost_thresholds, out.with_suffix(".png"), title=title)  # fmt: skip
    meta = result.metadata
    print(f"wrote {out} ({len(result.data['rewards'])} transitions, {meta.num_trajectories} "
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
