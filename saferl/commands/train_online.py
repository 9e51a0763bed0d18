"""``saferl train-online``: multi-morphology TD3 with a SET / transformer / MLP policy."""

from __future__ import annotations

import argparse
import dataclasses
import json

from saferl.online.td3 import TD3Config


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
    parser.add_argument("--agents", nargs="+", default=None, help="train on these agents")
    parser.add_argument("--policy", default=defaults.policy, choices=["set", "transformer", "mlp"])
    parser.add_argument(
        "--net-config", default=None, help="JSON dict of network sizes, e.g. '{\"width\": 64}'"
    )
    parser.add_argument("--steps", type=int, default=defaults.total_steps, help="transitions")
    parser.add_argument("--learning-starts", type=int, default=defaults.learning_starts)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--max-grad-norm", type=float, default=defaults.max_grad_norm)
    parser.add_argument("--buffer-size", type=int, default=defaults.buffer_size)
    parser.add_argument("--eval-episodes", type=int, default=defaults.eval_episodes)
    parser.add_argument("--eval-max-steps", type=int, default=None, help="cap eval episodes")
    parser.add_argument("--cost-type", default=defaults.cost_type)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=None, help="cuda if available, else cpu")
    parser.add_argument("--out", default=None, help="folder for the actor checkpoint and metrics")
    parser.add_argument("--sb3-zip", action="store_true",
                        help="also save Stable-Baselines3's model.zip (read back with pickle: "
                             "load it only from a trusted source)")  # fmt: skip
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saferl.online.td3 import save_run, train

    net_config = json.loads(args.net_config) if args.net_config else None
    if net_config is not None and not isinstance(net_config, dict):
        raise ValueError(f"--net-config must be a JSON object, got {args.net_config!r}")
    config = TD3Config(
        suite=args.suite, agents=args.agents, policy=args.policy, net_config=net_config,
        total_steps=args.steps, learning_starts=args.learning_starts,
        batch_size=args.batch_size, learning_rate=args.lr, max_grad_norm=args.max_grad_norm,
        buffer_size=args.buffer_size, eval_episodes=args.eval_episodes,
        eval_max_steps=args.eval_max_steps,
        cost_type=args.cost_type, seed=args.seed,
    )  # fmt: skip
    print(json.dumps(dataclasses.asdict(config)))
    result = train(config, device=args.device, progress=args.progress)
    print(f"trained {config.policy} on {config.suite} for {config.total_steps} transitions "
          f"in {result.seconds:.0f} s; {len(result.episodes)} training episodes")  # fmt: skip
    for agent, stats in result.evaluation.items():
        print(f"  {stats['split']:8s} {agent:14s} return {stats['return_mean']:8.1f} "
              f"± {stats['return_sd']:.1f}  cost {stats['cost_mean']:.1f}")  # fmt: skip
    if args.out:
        paths = save_run(result, args.out, sb3_zip=args.sb3_zip)
        print("saved", ", ".join(paths.values()))
    return 0
