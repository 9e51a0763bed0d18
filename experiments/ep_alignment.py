"""Experiment (a): cosine between EP and RBP error vectors vs initial asymmetry angle,
with and without Jacobian homeostasis.

For each angle, a 64-64-10 net is trained on digits with holomorphic EP (N = 2, |beta| = 0.5) for
a few epochs, with homeostasis coefficient 0 and with the reference coefficient 1.0; then on test
digits we measure the hidden-layer cosine between the EP error vector (exact beta-derivative,
N = 0, and the N = 2 estimate the learner uses) and the RBP error -delta, plus the whitened
asymmetry 1/2 ||J - J^T||_F^2 / n. The cosine at initialisation is reported too.

    python experiments/ep_alignment.py [--quick]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from saferl.common.io import save_figure, write_text
from saferl.ep import (
    EPNetConfig,
    EPTrainer,
    EPTrainerConfig,
    ep_error,
    homeostasis_exact,
    layer_cosines,
    load_digits_split,
    rbp_error,
)


def alignment(trainer: EPTrainer, x, y, args) -> dict:
    """Hidden-layer cosines (exact EP vs RBP, hEP N=2 vs RBP) and asymmetry on a test batch."""
    net = trainer.net
    steps = args.measure_steps
    u, stats = net.free_phase(x, steps)
    v_rbp = rbp_error(net, x, y, u, steps=steps)
    v_exact = ep_error(net, x, y, u, 0, t2=steps)
    v_hep = ep_error(net, x, y, u, 2, 0.5, t2=steps)
    return {
        "cos_exact": layer_cosines(net, v_exact, v_rbp)[0],
        "cos_hep": layer_cosines(net, v_hep, v_rbp)[0],
        "asymmetry": float(
            homeostasis_exact(net, x[: args.asym_batch], u[: args.asym_batch]).mean()
        ),
        "n_not_converged": stats.summary()["n_not_converged"],
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--angles", type=float, nargs="+", default=[0, 45, 90, 135, 180])
    p.add_argument("--homeostasis", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, nargs="+", default=[32])
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--t1", type=int, default=40)
    p.add_argument("--t2", type=int, default=10)
    p.add_argument(
        "--measure-steps",
        type=int,
        default=200,
        help="free, nudged and adjoint steps when measuring",
    )
    p.add_argument("--batch", type=int, default=100, help="test samples for the cosines")
    p.add_argument("--asym-batch", type=int, default=20, help="samples for the exact asymmetry")
    p.add_argument("--n-train", type=int, default=0, help="0 = all training digits")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--quick", action="store_true", help="tiny budget (a test runs this)")
    args = p.parse_args(argv)
    if args.quick:
        args.angles, args.epochs, args.n_train, args.batch = [0.0, 90.0], 1, 100, 20
        args.t1, args.t2, args.measure_steps, args.asym_batch = 30, 8, 40, 5
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(argv)
    torch.set_num_threads(1)
    d = load_digits_split(seed=0, device=args.device)
    n = args.n_train or len(d.x_train)
    xt, yt = d.x_test[: args.batch], d.y_test[: args.batch]
    rows = []
    for angle in args.angles:
        row = {"angle": float(angle)}
        for coef in (0.0, args.homeostasis):
            net_cfg = EPNetConfig(
                in_dim=64, hidden=tuple(args.hidden), n_classes=10, angle_deg=angle
            )
            cfg = EPTrainerConfig(
                n_points=2,
                beta=0.5,
                t1=args.t1,
                t2=args.t2,
                lr=args.lr,
                epochs=args.epochs,
                homeostasis=coef,
                seed=args.seed,
            )
            trainer = EPTrainer(net_cfg, cfg, device=args.device)
            if coef == 0.0:
                row["init"] = alignment(trainer, xt, yt, args)
            logs = trainer.fit(d.x_train[:n], d.y_train[:n], d.x_test, d.y_test)
            key = "no_homeostasis" if coef == 0.0 else "homeostasis"
            row[key] = alignment(trainer, xt, yt, args) | {"test_acc": logs[-1].test_acc}
        rows.append(row)
        print(
            f"angle {angle:5.0f}: cos init {row['init']['cos_exact']:.3f}, "
            f"no hom {row['no_homeostasis']['cos_exact']:.3f}, "
            f"hom {row['homeostasis']['cos_exact']:.3f}",
            flush=True,
        )
    print(
        f"\nmeasured with {args.measure_steps} free / nudged / adjoint steps; "
        f"hEP N=2 |beta|=0.5 on digits, 64-{args.hidden}-10, {args.epochs} epochs, lr {args.lr}, "
        f"seed {args.seed}, homeostasis coef {args.homeostasis}; hidden-layer cosines on "
        f"{args.batch} test digits"
    )
    print(table(rows))
    tag = "_quick" if args.quick else ""
    _save(rows, args, tag)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table: cosines (exact EP / hEP N=2 vs RBP) and asymmetry per angle."""
    lines = [
        "| angle | cos at init | cos, no homeostasis (exact / N=2) "
        "| cos, homeostasis (exact / N=2) | asym. 1/2‖J−Jᵀ‖²/n no hom / hom "
        "| test acc no hom / hom |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b, i = r["no_homeostasis"], r["homeostasis"], r["init"]
        lines.append(
            f"| {r['angle']:.0f}° | {i['cos_exact']:.3f} "
            f"| {a['cos_exact']:.3f} / {a['cos_hep']:.3f} "
            f"| {b['cos_exact']:.3f} / {b['cos_hep']:.3f} "
            f"| {a['asymmetry']:.2e} / {b['asymmetry']:.2e} "
            f"| {100 * a['test_acc']:.1f} / {100 * b['test_acc']:.1f} |"
        )
    return "\n".join(lines)


def _save(rows: list[dict], args, tag: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    angles = [r["angle"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(angles, [r["init"]["cos_exact"] for r in rows], "k:", marker=".", label="at init")
    for key, style in (("no_homeostasis", "o-"), ("homeostasis", "s-")):
        ax.plot(angles, [r[key]["cos_exact"] for r in rows], style, label=key.replace("_", " "))
    ax.set_xlabel("initial asymmetry angle (deg)")
    ax.set_ylabel("cos(EP error, RBP error), hidden layer")
    ax.set_ylim(-1.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, args.out / f"ep_alignment{tag}.png", dpi=120)
    payload = {"config": vars(args) | {"out": str(args.out)}, "rows": rows}
    write_text(args.out / f"ep_alignment{tag}.json", json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
