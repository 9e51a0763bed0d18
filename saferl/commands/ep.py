"""``saferl ep``: train an equilibrium-propagation learner (or the BP baseline) and save it."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser("ep", help="train an equilibrium-propagation learner (digits/safety)")
    p.add_argument("--dataset", choices=["digits", "safety"], default="digits")
    p.add_argument("--method", choices=["ep", "bp"], default="ep")
    p.add_argument("--n-points", type=int, default=2, help="N: 0 exact, 1 one-sided, >=2 hEP")
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--angle", type=float, default=90.0, help="initial asymmetry angle (deg)")
    p.add_argument("--homeostasis", type=float, default=0.0)
    p.add_argument("--hidden", type=int, nargs="+", default=[32])
    p.add_argument("--activation", default="sigmoid4")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--t1", type=int, default=40)
    p.add_argument("--t2", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="folder for model.safetensors + config.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    import torch

    from saferl.ep import EPNetConfig, EPTrainer, EPTrainerConfig
    from saferl.ep.checkpoint import save_network
    from saferl.ep.data import load_digits_split, load_safety_split

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.dataset == "digits":
        split = load_digits_split(seed=args.seed, device=device)
    else:
        split = load_safety_split(seed=args.seed, device=device)
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
    trainer = EPTrainer(net_cfg, cfg, device=device)
    print(split.describe())
    logs = trainer.fit(split.x_train, split.y_train, split.x_test, split.y_test, progress=True)
    for log in logs:
        print(json.dumps(asdict(log)))
    if args.out:
        extra = {"trainer": asdict(cfg), "dataset": split.name, "final": asdict(logs[-1])}
        print(f"saved to {save_network(trainer.net, args.out, extra)}")
    return 0
