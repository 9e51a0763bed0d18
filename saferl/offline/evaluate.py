"""The DSRL evaluation protocol (Liu et al., "Datasets and Benchmarks for Offline Safe RL", 2023).

* Normalised reward ``(R − R_min)/(R_max − R_min)`` with the dataset's reference returns.
* Normalised cost ``(C + ε)/(κ + ε)``, ``ε = 1`` iff ``κ = 0`` else 0; a result is *safe* iff
  its normalised cost is ≤ 1. ``R`` and ``C`` are undiscounted episode sums.
* Several thresholds κ per task, 20 episodes each (OSRL default), several seeds.

Episodes run side by side through the toolkit's one rollout (:func:`saferl.data.rollout`); the
normalised scores are the dataset's own (:class:`saferl.data.DatasetMetadata`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from saferl.data.dsrl import DatasetMetadata
from saferl.data.rollout import Rollouts


def dsrl_scores(
    results: Rollouts, metadata: DatasetMetadata, thresholds: Sequence[float]
) -> list[dict[str, float]]:
    """One row per threshold: mean normalised reward and cost over episodes (the dataset's
    :meth:`~saferl.data.DatasetMetadata.normalized_reward` / ``normalized_cost``), ``safe``, the
    raw episode return and cost, and the mean episode length."""
    rows = []
    reward = float(metadata.normalized_reward(results.returns).mean())
    for kappa in thresholds:
        c = float(metadata.normalized_cost(results.costs.mean(), kappa))
        rows.append(
            {
                "threshold": float(kappa),
                "reward": reward,
                "cost": c,
                "safe": c <= 1.0,
                "raw_return": float(results.returns.mean()),
                "raw_cost": float(results.costs.mean()),
                "length": float(results.lengths.mean()),
            }
        )
    return rows


def summarize(rows: Sequence[Mapping[str, Any]], keys: Sequence[str] = ("task", "method")):
    """Average ``reward`` and ``cost`` over all rows sharing ``keys`` (thresholds and seeds);
    ``safe`` is re-derived from the averaged cost, as DSRL tables do. Also the spread (std over
    seeds of the threshold-averaged values)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, group in groups.items():
        by_seed: dict[Any, list] = {}
        for r in group:
            by_seed.setdefault(r.get("seed", 0), []).append(r)
        seed_reward = [np.mean([r["reward"] for r in g]) for g in by_seed.values()]
        seed_cost = [np.mean([r["cost"] for r in g]) for g in by_seed.values()]
        cost = float(np.mean(seed_cost))
        out.append(
            {
                **dict(zip(keys, key, strict=True)),
                "reward": float(np.mean(seed_reward)),
                "cost": cost,
                "reward_std": float(np.std(seed_reward)),
                "cost_std": float(np.std(seed_cost)),
                "safe": cost <= 1.0,
                "n": len(group),
            }
        )
    return out
