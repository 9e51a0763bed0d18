"""Split conformal coverage over 200 random calibration/test splits (classification and regression).

    python experiments/conformal_split.py
    python experiments/conformal_split.py --quick --out /tmp/r

Classification: an MLP on scikit-learn's digits (pixels / 16; 50% training, 50% pool), scores
LAC, APS (randomised), RAPS (λ = 0.01, k_reg = 1), and a deliberately broken calibration
(the ⌈n(1 − α)⌉-th score, no (n+1) correction). Regression: scikit-learn's diabetes data with a
ridge fit (absolute residual) and linear quantile regressions at 5%/95% (CQR). For each n_cal,
the table gives the mean coverage over the splits ± its standard error, the acceptance band
[1 − α − 4·se, 1 − α + 1/(n+1) + 4·se] and the verdict of ``certify.conformal.check_coverage``,
and the mean set size (interval width for regression). Writes ``conformal_split.md`` and
``conformal_split.png`` (coverage histograms) under ``--out``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import nn

from certify.conformal import (
    SplitConformalClassifier,
    SplitConformalRegressor,
    check_coverage,
    conformal_quantile,
    sets_over_splits,
)
from saferl.common.io import save_figure, write_text

ALPHA = 0.1


def broken_quantile(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """Wrong on purpose: the ⌈n(1 − α)⌉-th smallest score (no finite-sample correction)."""
    n = scores.shape[-1]
    return torch.kthvalue(scores, max(1, math.ceil(n * (1 - alpha))), dim=-1).values


def digits_probs(seed: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax outputs (N, 10) and labels (N,) of an MLP on the held-out half of digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    tr, pool = perm[: len(y) // 2], perm[len(y) // 2 :]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[tr]), y[tr]).backward()
        opt.step()
    with torch.no_grad():
        return torch.softmax(model(x[pool]), 1), y[pool]


def diabetes_predictions(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ridge predictions (N,), linear 5%/95% quantile predictions (N, 2), targets (N,)."""
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import QuantileRegressor, Ridge

    x, y = load_diabetes(return_X_y=True)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).numpy()
    tr, pool = perm[: len(y) // 2], perm[len(y) // 2 :]
    ridge = Ridge(alpha=1e-2).fit(x[tr], y[tr])
    q = [QuantileRegressor(quantile=t, alpha=0.0).fit(x[tr], y[tr]) for t in (0.05, 0.95)]
    lo_hi = torch.tensor([[m.predict(x[pool])[i] for m in q] for i in range(len(pool))])
    return torch.tensor(ridge.predict(x[pool])), lo_hi, torch.tensor(y[pool])


def _row(name, n_cal, cov, size, alpha=ALPHA) -> str:
    c = check_coverage(cov, alpha, n_cal)
    verdict = "pass" if c.ok else "**FLAGGED**"
    return (
        f"| {name} | {n_cal} | {c.mean:.4f} ± {c.std_err:.4f} | [{c.lower:.4f}, {c.upper:.4f}] | "
        f"{verdict} | {size.mean().item():.2f} |"
    )


def classification_rows(probs, y, n_cals, n_splits, seed, hists) -> list[str]:
    rows = []
    for n_cal in n_cals:
        for score in ("lac", "aps", "raps"):
            cp = SplitConformalClassifier(
                score, ALPHA, generator=torch.Generator().manual_seed(seed)
            )
            s = cp.scores(probs)
            true = s.gather(1, y[:, None]).squeeze(1)
            g = torch.Generator().manual_seed(seed + n_cal)
            cov, size = sets_over_splits(true, s, y, n_cal, ALPHA, n_splits, g)
            rows.append(_row(f"digits {score.upper()}", n_cal, cov, size))
            hists[(score, n_cal)] = cov
        # the broken calibration, same splits as LAC
        s = 1 - probs
        true = s.gather(1, y[:, None]).squeeze(1)
        perm = torch.rand(n_splits, len(y), generator=torch.Generator().manual_seed(seed + n_cal))
        perm = perm.argsort(1)
        q = broken_quantile(true[perm[:, :n_cal]], ALPHA)
        test = perm[:, n_cal:]
        sets = s[test] <= q[:, None, None]
        cov = sets.gather(2, y[test][..., None]).squeeze(2).float().mean(1)
        rows.append(_row("digits LAC, broken (no n+1)", n_cal, cov, sets.float().sum(2).mean(1)))
        hists[("broken", n_cal)] = cov
    return rows


def regression_rows(pred, lo_hi, y, n_cals, n_splits, seed) -> list[str]:
    rows = []
    for n_cal in n_cals:
        for name, reg, p in (("absolute", SplitConformalRegressor(ALPHA), pred),
                             ("cqr", SplitConformalRegressor(ALPHA, "cqr"), lo_hi)):  # fmt: skip
            s = reg.scores(p, y)
            g = torch.Generator().manual_seed(seed + n_cal)
            perm = torch.rand(n_splits, len(y), generator=g).argsort(1)
            q = conformal_quantile(s[perm[:, :n_cal]], ALPHA)
            cov = (s[perm[:, n_cal:]] <= q[:, None]).float().mean(1)
            width = 2 * q if name == "absolute" else (lo_hi[:, 1] - lo_hi[:, 0]).mean() + 2 * q
            rows.append(_row(f"diabetes {name} (width)", n_cal, cov, width))
    return rows


def plot_hists(hists, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cals = sorted({k[1] for k in hists})
    fig, axes = plt.subplots(1, len(n_cals), figsize=(4 * len(n_cals), 3.2), squeeze=False)
    for ax, n_cal in zip(axes[0], n_cals, strict=True):
        for name in ("lac", "aps", "raps", "broken"):
            ax.hist(hists[(name, n_cal)].numpy(), bins=25, alpha=0.45, label=name)
        ax.axvline(1 - ALPHA, color="k", ls=":", lw=1)
        ax.set(title=f"digits, n_cal = {n_cal}", xlabel="test coverage of one split")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget (for the tests)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n_splits, n_cals, steps = (200, [10, 50, 200], 300) if not args.quick else (50, [10], 30)
    start = time.time()
    probs, y = digits_probs(args.seed, steps)
    hists: dict = {}
    rows = classification_rows(probs, y, n_cals, n_splits, args.seed, hists)
    rows += regression_rows(*diabetes_predictions(args.seed), n_cals, n_splits, args.seed)
    head = (
        f"Split CP, α = {ALPHA}, {n_splits} random calibration/test splits of a pool "
        f"({len(y)} digits, 221 diabetes patients); band = [1 − α − 4·se, 1 − α + 1/(n+1) + "
        f"4·se]. Runtime {time.time() - start:.0f} s (2-core shared CPU).\n\n"
        "| data / score | n_cal | mean coverage ± se | acceptance band | verdict | mean size |\n"
        "|---|---|---|---|---|---|"
    )
    text = head + "\n" + "\n".join(rows) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "conformal_split.md", text)
    plot_hists(hists, args.out / "conformal_split.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
