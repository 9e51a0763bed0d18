"""``saferl demo``: the main job (a pipeline of stages on one 3D task)."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from saferl.demo import STAGES, DemoConfig, run_demo


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the main job: " + ", ".join(s.name for s in STAGES))
    p.add_argument("--env-id", default=DemoConfig.env_id, help="3D task id (see `saferl envs`)")
    p.add_argument("--episodes", type=int, default=DemoConfig.episodes)
    p.add_argument("--seed", type=int, default=DemoConfig.seed)
    p.add_argument("--quick", action="store_true", help="smallest budgets")
    p.add_argument("--stages", nargs="+", default=[], choices=[s.name for s in STAGES],
                   help="run only these stages")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise SystemExit("--episodes must be >= 1")
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    config = DemoConfig(env_id=args.env_id, episodes=args.episodes, seed=args.seed,
                        quick=args.quick, stages=tuple(args.stages))  # fmt: skip
    run_demo(config)
    return 0
