"""Plot of a dataset's spread over the (cost return, reward return) plane."""

from __future__ import annotations

import os

import numpy as np

from saferl.common.io import save_figure


def plot_spread(
    returns: np.ndarray,
    kept: np.ndarray,
    checkpoint: np.ndarray,
    thresholds: list[float],
    path: str | os.PathLike,
    title: str = "",
) -> None:
    """Scatter every rolled-out trajectory's (cost, reward) return (grey: filtered out;
    coloured by checkpoint: kept) with the cost thresholds as vertical lines; writes a PNG.

    ``returns`` (K, 2) holds (cost, reward) rows; ``kept`` (K,) bool; ``checkpoint`` (K,) int.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    returns = np.asarray(returns, np.float64)
    kept = np.asarray(kept, bool)
    fig, ax = plt.subplots(figsize=(5.0, 3.8), dpi=110)
    ax.scatter(*returns[~kept].T, s=8, c="0.75", label="filtered out")
    sc = ax.scatter(*returns[kept].T, s=12, c=np.asarray(checkpoint)[kept], cmap="viridis",
                    label="kept")  # fmt: skip
    fig.colorbar(sc, ax=ax, label="checkpoint (0 = untrained)")
    for k in thresholds:
        ax.axvline(k, color="tab:red", lw=0.8, ls="--")
    ax.set_xlabel("episode cost return")
    ax.set_ylabel("episode reward return")
    ax.set_title(title or "dataset spread", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
