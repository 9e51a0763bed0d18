"""``saferl envs``: list every registered env id with its observation and action sizes."""

from __future__ import annotations

import argparse

import envs


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "envs",
        help="list env ids with observation/action sizes",
        description="List every env id this package registers (3D tasks and planar velocity "
        "tasks) with its observation and action sizes and, for 3D tasks, its limb count.",
    )
    p.add_argument("--filter", default="", help="only ids containing this text (any case)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = []
    for env_id in envs.registered_ids():
        if args.filter and args.filter.lower() not in env_id.lower():
            continue
        env = envs.make(env_id)
        unwrapped = env.unwrapped
        limbs = getattr(getattr(unwrapped, "morph", None), "num_limbs", "-")
        rows.append((env_id, env.observation_space.shape[0], env.action_space.shape[0], limbs))
        env.close()
    width = max((len(r[0]) for r in rows), default=10)
    print(f"{'id':<{width}}  {'obs':>5}  {'act':>4}  {'limbs':>5}")
    for env_id, obs, act, limbs in rows:
        print(f"{env_id:<{width}}  {obs:>5}  {act:>4}  {limbs!s:>5}")
    return 0
