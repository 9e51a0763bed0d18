"""``saferl demo``: the main job (a pipeline of stages on one 3D task)."""

from __future__ import annotations

import argparse

from saferl.commands import _checks as c
from saferl.demo import STAGES, DemoConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    stages = ", ".join(s.name for s in STAGES)
    p = subparsers.add_parser(
        "demo",
        help=f"run the main job: {stages}",
        description="Run the toolkit end to end on one task, stage by stage: "
        + "; ".join(f"{s.name}: {s.description}" for s in STAGES)
        + ". --quick runs every stage at its smallest budget.",
    )
    p.add_argument("--env-id", default=DemoConfig.env_id, help="3D task id (see `saferl envs`)")
    p.add_argument("--episodes", type=c.positive_int, default=DemoConfig.episodes,
                   help="episodes per evaluation")  # fmt: skip
    p.add_argument("--seed", type=int, default=DemoConfig.seed,
                   help="seeds numpy, torch and the envs")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="smallest budgets")
    p.add_argument("--stages", nargs="+", default=[], choices=[s.name for s in STAGES],
                   help="run only these stages (default: all)")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import envs
    from saferl.common import seeded
    from saferl.demo import run_demo

    # --- checks
    if args.env_id not in envs.registered_ids():
        with c.user_errors("--env-id"):
            envs.make(args.env_id)  # raises a KeyError naming close matches
    config = DemoConfig(env_id=args.env_id, episodes=args.episodes, seed=args.seed,
                        quick=args.quick, stages=tuple(args.stages))  # fmt: skip

    # --- the work (seeded without touching the caller's global RNG states)
    with seeded(args.seed):
        run_demo(config)
    return 0
