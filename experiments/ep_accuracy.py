"""Experiment (c): test accuracy of EP learners vs recurrent backprop (BP) on the same network.

Datasets: scikit-learn digits (10 classes) and unsafe-state prediction from Hopper rollouts
(2 classes, see saferl.ep.data). Methods: BP (RBP gradient through the fixed point), one-sided
EP (N = 1), holomorphic EP (N = 2, |beta| = 0.5), and hEP with Jacobian homeostasis, at several
initial asymmetry angles. Reports mean +- std over seeds, the gap to BP at the same angle, and the
fixed-point statistics of the final test evaluation (non-converged / oscillating samples counted).

    python experiments/ep_accuracy.py            # full budget (see --help), ~40 min on 1 core
    python experiments/ep_accuracy.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from saferl.common.io import save_figure, write_text
from saferl.ep import EPNetConfig, EPTrainer, EPTrainerConfig, load_digits_split, load_safety_split


@dataclass(frozen=True)
class Method:
    """One row of the table: a learner at an asymmetry angle."""

    name: str
    method: str
    n_points: int
    beta: float
    homeostasis: float
    angle: float


def methods_for(angles: list[float], homeostasis: float) -> list[Method]:
    """BP, EP (N=1), hEP (N=2) and hEP + homeostasis at each angle."""
    rows = []
    for a in angles:
        rows += [
            Method("BP (RBP)", "bp", 2, 0.5, 0.0, a),
            Method("EP N=1", "ep", 1, 0.1, 0.0, a),
            Method("hEP N=2", "ep", 2, 0.5, 0.0, a),
        ]
        if a != 0:
            rows.append(Method("hEP N=2 + homeostasis", "ep", 2, 0.5, homeostasis, a))
    return rows


def run_one(split, m: Method, seed: int, args, lr: float, epochs: int) -> dict:
    """Train one learner on one split; returns final metrics."""
    net_cfg = EPNetConfig(
        in_dim=split.x_train.shape[1],
        hidden=tuple(args.hidden),
        n_classes=split.n_classes,
        angle_deg=m.angle,
    )
    cfg = EPTrainerConfig(
        method=m.method,
        n_points=m.n_points,
        beta=m.beta,
        t1=args.t1,
        t2=args.t2,
        rbp_steps=args.t1,
        homeostasis=m.homeostasis,
        grad_clip=args.grad_clip,
        lr=lr,
        batch_size=50,
        epochs=epochs,
        seed=seed,
    )
    trainer = EPTrainer(net_cfg, cfg, device=args.device)
    t0 = time.perf_counter()
    logs = trainer.fit(split.x_train, split.y_train, split.x_test, split.y_test)
    last = logs[-1]
    return {
        "test_acc": last.test_acc,
        "train_acc": last.train_acc,
        "curve": [log.test_acc for log in logs],
        "seconds": time.perf_counter() - t0,
        **last.residual,
    }


def summarise(results: list[dict]) -> list[dict]:
    """Group per (dataset, method, angle): mean/std accuracy, gap to BP, residual statistics."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["method"], r["angle"]), []).append(r)
    bp = {
        (k[0], k[2]): float(np.mean([r["test_acc"] for r in v]))
        for k, v in groups.items()
        if k[1].startswith("BP")
    }
    rows = []
    for (ds, name, angle), rs in groups.items():
        acc = np.array([r["test_acc"] for r in rs])
        rows.append(
            {
                "dataset": ds,
                "method": name,
                "angle": angle,
                "acc_mean": float(acc.mean()),
                "acc_std": float(acc.std()),
                "gap_to_bp": bp.get((ds, angle), float("nan")) - float(acc.mean()),
                "n_seeds": len(rs),
                "not_converged": int(sum(r["n_not_converged"] for r in rs)),
                "oscillating": int(sum(r["n_oscillating"] for r in rs)),
                "evaluated": int(sum(r["n_samples"] for r in rs)),
                "log10_res_median": float(np.median([r["log10_residual_median"] for r in rs])),
                "log10_res_max": float(np.max([r["log10_residual_max"] for r in rs])),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table of the summary rows."""
    lines = [
        "| dataset | method | angle | test acc (mean ± std) | gap to BP | not conv. / osc. "
        "(of test evals) | log10 res. median / max |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['angle']:.0f}° | "
            f"{100 * r['acc_mean']:.1f} ± {100 * r['acc_std']:.1f} | "
            f"{100 * r['gap_to_bp']:+.1f} | {r['not_converged']} / {r['oscillating']} "
            f"(of {r['evaluated']}) | {r['log10_res_median']:.1f} / {r['log10_res_max']:.1f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Accuracy vs angle per method, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        for name in sorted({r["method"] for r in rows if r["dataset"] == ds}):
            pts = sorted(
                (r["angle"], r["acc_mean"], r["acc_std"])
                for r in rows
                if r["dataset"] == ds and r["method"] == name
            )
            a, m, s = (np.array(v) for v in zip(*pts, strict=True))
            ax.errorbar(a, 100 * m, yerr=100 * s, marker="o", capsize=3, label=name)
        ax.set_title(ds)
        ax.set_xlabel("initial asymmetry angle (deg)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)


def _save_fig(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=120)


def _save_json(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(obj, indent=1))


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["digits", "safety", "both"], default="both")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..n-1")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--safety-epochs", type=int, default=3)
    p.add_argument("--angles", type=float, nargs="+", default=[0.0, 90.0, 180.0])
    p.add_argument("--safety-angles", type=float, nargs="+", default=[90.0])
    p.add_argument("--hidden", type=int, nargs="+", default=[32])
    p.add_argument("--homeostasis", type=float, default=1.0)
    p.add_argument("--grad-clip", type=float, default=1.0, help="global grad-norm clip, 0 = off")
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--safety-lr", type=float, default=0.05)
    p.add_argument("--t1", type=int, default=40)
    p.add_argument("--t2", type=int, default=10)
    p.add_argument("--safety-steps", type=int, default=3000, help="env steps of rollout data")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--tag", default="", help="suffix of the output file names")
    p.add_argument("--quick", action="store_true", help="tiny budget (a test runs this)")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.angles, args.safety_angles = 1, 1, [90.0], [90.0]
        args.safety_epochs = 1
        args.t1, args.t2, args.safety_steps = 30, 8, 600
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(argv)
    torch.set_num_threads(1)
    splits = []
    if args.dataset in ("digits", "both"):
        d = load_digits_split(seed=0, device=args.device)
        if args.quick:
            d.x_train, d.y_train = d.x_train[:200], d.y_train[:200]
        splits.append((d, args.angles, args.lr, args.epochs))
    if args.dataset in ("safety", "both"):
        splits.append(
            (
                load_safety_split(n_steps=args.safety_steps, seed=0, device=args.device),
                args.safety_angles,
                args.safety_lr,
                args.safety_epochs,
            )
        )
    results, baselines = [], {}
    for split, angles, lr, epochs in splits:
        name = split.name.split(" ")[0]
        majority = float(torch.bincount(split.y_test).max()) / len(split.y_test)
        baselines[name] = majority
        print(f"{split.describe()}; majority-class test accuracy {majority:.3f}", flush=True)
        for m in methods_for(angles, args.homeostasis):
            if args.quick and m.name == "EP N=1":
                continue
            for seed in range(args.seeds):
                r = run_one(split, m, seed, args, lr, epochs)
                r.update(dataset=name, method=m.name, angle=m.angle, seed=seed)
                results.append(r)
                print(
                    f"  {name} {m.name} {m.angle:.0f}deg seed {seed}: "
                    f"acc {r['test_acc']:.3f} ({r['seconds']:.0f}s)",
                    flush=True,
                )
    rows = summarise(results)
    print(
        f"\nbudget: digits {args.epochs} epochs lr {args.lr}, safety {args.safety_epochs} epochs "
        f"lr {args.safety_lr}; batch 50, SGD momentum 0.9, T1 {args.t1}, T2 {args.t2}, "
        f"grad clip {args.grad_clip}, hidden {args.hidden}, seeds 0..{args.seeds - 1}, "
        f"device {args.device}"
    )
    print(table(rows))
    print(
        "majority-class test accuracy: "
        + ", ".join(f"{k} {100 * v:.1f}%" for k, v in baselines.items())
    )
    tag = args.tag or ("_quick" if args.quick else "")
    _save_json(
        {
            "config": vars(args) | {"out": str(args.out)},
            "runs": results,
            "rows": rows,
            "majority_baseline": baselines,
        },
        args.out / f"ep_accuracy{tag}.json",
    )
    plot(rows, args.out / f"ep_accuracy{tag}.png")
    return rows


if __name__ == "__main__":
    main()
