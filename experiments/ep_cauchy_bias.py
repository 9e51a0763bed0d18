"""Experiment (b): bias of the N-point Cauchy (holomorphic EP) estimate vs N at |beta| = 0.05, 0.5.

For a 45-degree asymmetric net on digits (float64), compares the error vector of the N-point
estimate (N = 1 one-sided EP, N >= 2 holomorphic) with the exact beta-derivative (N = 0, forward
AD through the same T2 nudged steps): relative error ||v_N - v_0|| / ||v_0|| and cosine, averaged
over seeds (network initialisations). Spec reference (toy 45-degree net, |beta| = 0.5):
cos 0.87 / 0.99 / 0.997 / 0.9998 for N = 1 / 2 / 4 / 6.

    python experiments/ep_cauchy_bias.py [--quick]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from saferl.common.io import save_figure, write_text
from saferl.ep import EPNetConfig, EPNetwork, cosine, ep_error, load_digits_split


def measure(seed: int, n_list: list[int], betas: list[float], args) -> dict:
    """Relative error and cosine to the exact derivative for each (|beta|, N); one net."""
    net = EPNetwork(
        EPNetConfig(
            in_dim=64,
            hidden=tuple(args.hidden),
            n_classes=10,
            angle_deg=args.angle,
            dtype="float64",
        ),
        device="cpu",
        seed=seed,
    )
    d = load_digits_split(seed=0, dtype=torch.float64)
    x, y = d.x_test[: args.batch], d.y_test[: args.batch]
    u, stats = net.free_phase(x, args.t1)
    exact = ep_error(net, x, y, u, 0, t2=args.t2)
    out = {"n_not_converged": stats.summary()["n_not_converged"]}
    for beta in betas:
        for n in n_list:
            v = ep_error(net, x, y, u, n, beta, t2=args.t2)
            out[(beta, n)] = (float((v - exact).norm() / exact.norm()), cosine(v, exact))
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
    p.add_argument("--betas", type=float, nargs="+", default=[0.05, 0.5])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--angle", type=float, default=45.0)
    p.add_argument("--hidden", type=int, nargs="+", default=[64])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--t1", type=int, default=150)
    p.add_argument("--t2", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--quick", action="store_true", help="tiny budget (a test runs this)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.seeds, args.batch, args.t1, args.t2 = [1, 2, 4], 1, 10, 40, 10
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    torch.set_num_threads(1)
    per_seed = [measure(s, args.n, args.betas, args) for s in range(args.seeds)]
    summary = {}
    lines = [
        "| abs(beta) | N | rel. error (mean) | cosine to exact (mean) | 1 - cosine |",
        "|---|---|---|---|---|",
    ]
    for beta in args.betas:
        for n in args.n:
            err = float(np.mean([r[(beta, n)][0] for r in per_seed]))
            cos = float(np.mean([r[(beta, n)][1] for r in per_seed]))
            summary[f"{beta}/{n}"] = {"rel_error": err, "cosine": cos}
            lines.append(f"| {beta} | {n} | {err:.2e} | {cos:.6f} | {1 - cos:.1e} |")
    not_conv = sum(r["n_not_converged"] for r in per_seed)
    print(
        f"net 64-{args.hidden}-10 at {args.angle:.0f} deg, float64, T1 {args.t1}, T2 {args.t2}, "
        f"{args.batch} test digits, seeds 0..{args.seeds - 1}; not converged: {not_conv}"
    )
    print("\n".join(lines))
    _plot(summary, args)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"config": vars(args) | {"out": str(args.out)}, "summary": summary}
    write_text(
        args.out / f"ep_cauchy_bias{'_quick' if args.quick else ''}.json",
        json.dumps(payload, indent=1),
    )
    return summary


def _plot(summary: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    for beta in args.betas:
        errs = [summary[f"{beta}/{n}"]["rel_error"] for n in args.n]
        ax.semilogy(args.n, np.maximum(errs, 1e-17), marker="o", label=f"|beta| = {beta}")
    ax.set_xlabel("N (Cauchy points)")
    ax.set_ylabel("||v_N - v_exact|| / ||v_exact||")
    ax.set_title("holomorphic EP bias vs N")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    save_figure(fig, args.out / f"ep_cauchy_bias{'_quick' if args.quick else ''}.png", dpi=120)


if __name__ == "__main__":
    main()
