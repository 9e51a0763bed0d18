"""``saferl train-online``: multi-morphology TD3 with a SET / transformer / MLP policy."""

from __future__ import annotations

import argparse
import dataclasses
import json

from envs.locomotion import COST_TYPES
from saferl.commands import _checks as c
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
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seeds numpy, torch, the envs and SB3")  # fmt: skip
    parser.add_argument("--device", default=None, help=c.DEVICE_HELP)
    parser.add_argument("--out", default=None, help="folder for the actor checkpoint and metrics")
    parser.add_argument("--sb3-zip", action="store_true",
                        help="also save Stable-Baselines3's model.zip (read back with pickle: "
                             "load it only from a trusted source)")  # fmt: skip
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saferl.online.td3 import save_run, train, validate

    # --- checks: nothing below trains until every input and output is known to be good
    device = c.check_device(args.device)
    if args.out is not None:
        out = c.check_output_dir(args.out, "--out folder")
        names = ["model.safetensors", "config.json", "metrics.json"]
        for name in names + (["model.zip"] if args.sb3_zip else []):
            c.check_output_file(out / name, "output file")
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
