"""``saferl ep``: train an equilibrium-propagation learner (or the BP baseline) and save it."""

from __future__ import annotations

import argparse
import json

from saferl.commands import _checks as c


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ep",
        help="train an equilibrium-propagation learner (digits/safety)",
        description="Train a recurrent network with equilibrium propagation (N-point "
        "holomorphic EP, optionally with Jacobian homeostasis) or, with --method bp, recurrent "
        "backpropagation, on scikit-learn's digits or a safety-cost prediction task; print one "
        "JSON line per epoch and, with --out, save the network (model.safetensors + "
        "config.json).",
    )
    p.add_argument("--dataset", choices=["digits", "safety"], default="digits",
                   help="digits: 8x8 digits; safety: cost within a horizon")  # fmt: skip
    p.add_argument("--method", choices=["ep", "bp"], default="ep",
                   help="equilibrium propagation or the recurrent-backprop baseline")  # fmt: skip
    p.add_argument("--n-points", type=c.non_negative_int, default=2,
                   help="N: 0 exact, 1 one-sided, >=2 hEP")  # fmt: skip
    p.add_argument("--beta", type=c.finite_float, default=0.5, help="nudge strength β")
    p.add_argument("--angle", type=c.finite_float, default=90.0,
                   help="initial asymmetry angle (deg)")  # fmt: skip
    p.add_argument("--homeostasis", type=c.non_negative_float, default=0.0,
                   help="Jacobian-homeostasis coefficient (0: off)")  # fmt: skip
    p.add_argument("--hidden", type=c.positive_int, nargs="+", default=[32],
                   help="hidden layer sizes")  # fmt: skip
    p.add_argument("--activation", default="sigmoid4",
                   help="rate function: sigmoid4, holo_sigmoid, tanh (holomorphic), "
                        "hard_sigmoid, relu (N <= 1 only)")  # fmt: skip
    p.add_argument("--epochs", type=c.positive_int, default=6, help="passes over the data")
    p.add_argument("--lr", type=c.positive_float, default=0.2, help="SGD learning rate")
    p.add_argument("--t1", type=c.positive_int, default=40, help="free-phase steps")
    p.add_argument("--t2", type=c.positive_int, default=10, help="nudged-phase steps")
    p.add_argument("--seed", type=int, default=0, help="seeds the data split and the training")
    p.add_argument("--device", default=None, help=c.DEVICE_HELP)
    p.add_argument("--out", default=None, help="folder for model.safetensors + config.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from saferl.ep import EPNetConfig, EPTrainer, EPTrainerConfig
    from saferl.ep.checkpoint import save_network
    from saferl.ep.data import load_digits_split, load_safety_split

    # --- checks: nothing below trains until every input and output is known to be good
    device = c.check_device(args.device)
    if args.out is not None:
        out = c.check_output_dir(args.out, "--out folder")
        for name in ("model.safetensors", "config.json"):
            c.check_output_file(out / name, "output file")
    with c.user_errors():
        load = load_digits_split if args.dataset == "digits" else load_safety_split
        split = load(seed=args.seed, device=device)
        net_cfg = EPNetConfig(
            in_dim=split.x_train.shape[1],
            hidden=tuple(args.hidden),
            n_classes=split.n_classes,
            activation=args.activation,
            angle_deg=args.angle,
        )
        cfg = EPTrainerConfig(
            method=args.method,
            n_points=args.n_points,
            beta=args.beta,
            t1=args.t1,
            t2=args.t2,
            rbp_steps=args.t1,
            homeostasis=args.homeostasis,
            lr=args.lr,
            epochs=args.epochs,
            seed=args.seed,
        )
        trainer = EPTrainer(net_cfg, cfg, device=device)  # checks N, β and the activation

    # --- the work
    print(split.describe())
    logs = trainer.fit(split.x_train, split.y_train, split.x_test, split.y_test, progress=True)
    for log in logs:
        print(json.dumps(asdict(log)))
    if args.out:
        extra = {"trainer": asdict(cfg), "dataset": split.name, "final": asdict(logs[-1])}
        print(f"saved to {save_network(trainer.net, args.out, extra)}")
    return 0
