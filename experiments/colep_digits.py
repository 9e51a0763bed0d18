"""COLEP vs single-model robust conformal prediction on scikit-learn's digits (ℓ∞, CROWN).

    python experiments/colep_digits.py            # full: 200 splits, ε ∈ {0, 0.01, 0.02, 0.03}
    python experiments/colep_digits.py --quick --out /tmp/r

Data: ``sklearn.datasets.load_digits`` (1797 8×8 images, bundled), pixels scaled to [0, 1].
Attributes (our knowledge): even, ≥ 5, has a closed loop (0, 6, 8, 9), straight strokes only
(1, 4, 7), prime (2, 3, 5, 7). Rules: digit i ⇒ attribute j when i has j, digit i ⇒ ¬attribute j
otherwise (50 weighted rules). Split: 50% training, 15% circuit weights, 35% (629 images) pool
for 200 random 50/50 calibration/test splits. α = 0.1. Writes ``colep_digits.md`` and
``colep_digits.png`` under ``--out`` (default experiments/results).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from colep_benchmark import BenchConfig, Task, markdown_table, run_benchmark, write_results  # noqa: E402

ATTRIBUTES = {
    "even": {0, 2, 4, 6, 8},
    ">=5": {5, 6, 7, 8, 9},
    "closed loop": {0, 6, 8, 9},
    "straight strokes": {1, 4, 7},
    "prime": {2, 3, 5, 7},
}


def digits_task() -> Task:
    """The digits task with its attributes and (±1) implication rules."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    names = list(ATTRIBUTES)
    member = torch.tensor([[d in ATTRIBUTES[a] for a in names] for d in range(10)])
    rules = torch.where(member, 1, -1)
    attrs = member[y].float()
    return Task("digits", x, y, attrs, rules, [str(d) for d in range(10)], names, 0.0, 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget (for the tests)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=0.1, help="miscoverage level")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    eps = [0.0, 0.01, 0.02, 0.03]
    cfg = BenchConfig(seed=args.seed, alpha=args.alpha, eps=eps, noise_std=0.05)
    if args.quick:
        cfg = BenchConfig(seed=args.seed, alpha=args.alpha, eps=[0.05], train_steps=20,
                          n_splits=10, pgd_steps=2, hidden=8, fit_steps=20)  # fmt: skip
    start = time.time()
    rows, models = run_benchmark(digits_task(), cfg)
    table = markdown_table(rows)
    acc = ", ".join(f"{k} {v:.3f}" for k, v in models.accuracy.items())
    text = (
        f"Digits (sklearn), α = {cfg.alpha}, {cfg.n_splits} random calibration/test splits, "
        f"ℓ∞ ε on [0, 1] pixels, bounds: {cfg.method}. Pool accuracy: {acc}. "
        f"Runtime {time.time() - start:.0f} s (2-core shared CPU, 1 thread).\n\n{table}\n"
    )
    print(text)
    write_results(args.out, "colep_digits", text, rows, "digits", cfg.alpha)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
