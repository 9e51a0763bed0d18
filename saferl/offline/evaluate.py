"""The DSRL evaluation protocol (Liu et al., "Datasets and Benchmarks for Offline Safe RL", 2023).

* Normalised reward ``(R − R_min)/(R_max − R_min)`` with the dataset's reference returns.
* Normalised cost ``(C + ε)/(κ + ε)``, ``ε = 1`` iff ``κ = 0`` else 0; a result is *safe* iff
  its normalised cost is ≤ 1. ``R`` and ``C`` are undiscounted episode sums.
* Several thresholds κ per task, 20 episodes each (OSRL default), several seeds.

Episodes run side by side: one env per episode, one batched ``policy(obs (B, obs_dim))`` call per
step over the episodes still running.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from saferl.offline.dataset import TaskInfo

Policy = Callable[[np.ndarray], np.ndarray]
"""A batched policy: observations ``(B, obs_dim)`` -> actions ``(B, act_dim)``."""


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """An env whose ``info["cost"]`` is the safety cost.

    ``Saferl*`` ids come from :func:`envs.make`; a plain Gymnasium MuJoCo id that one of
    ``envs.PLANAR_TASKS`` wraps (e.g. ``"Hopper-v5"``) gets that task's velocity cost; any other
    id is passed to ``gymnasium.make`` and must report ``info["cost"]`` itself.
    """
    import envs

    if env_id.startswith("Saferl"):
        return envs.make(env_id, **kwargs)
    for task in envs.PLANAR_TASKS.values():
        if task.base_id == env_id:
            env = gym.make(env_id, **{**dict(task.base_kwargs), **kwargs})
            return envs.VelocityCostWrapper(env, task.threshold, task.planar_speed)
    return gym.make(env_id, **kwargs)


@dataclass(frozen=True)
class EpisodeResults:
    """Undiscounted per-episode sums, each of shape (episodes,)."""

    returns: np.ndarray
    costs: np.ndarray
    lengths: np.ndarray


def evaluate_policy(
    policy: Policy,
    env_fn: Callable[[], gym.Env],
    episodes: int = 20,
    seed: int = 0,
    max_steps: int | None = None,
) -> EpisodeResults:
    """Roll out ``episodes`` episodes in parallel (env ``i`` reset with seed ``seed + i``).

    Actions are clipped to the action space. ``max_steps`` optionally truncates every episode
    earlier than the env's own limit.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    envs = [env_fn() for _ in range(episodes)]
    try:
        obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]).astype(np.float32)
        space = envs[0].action_space
        ret = np.zeros(episodes)
        cost = np.zeros(episodes)
        length = np.zeros(episodes, dtype=np.int64)
        alive = np.ones(episodes, dtype=bool)
        while alive.any():
            idx = np.flatnonzero(alive)
            actions = np.clip(policy(obs[idx]), space.low, space.high)
            for j, i in enumerate(idx):
                o, r, term, trunc, info = envs[i].step(actions[j])
                if "cost" not in info:
                    raise KeyError("env step info lacks 'cost'; use make_env or add a cost")
                obs[i] = o
                ret[i] += r
                cost[i] += info["cost"]
                length[i] += 1
                if term or trunc or (max_steps is not None and length[i] >= max_steps):
                    alive[i] = False
        return EpisodeResults(ret, cost, length)
    finally:
        for e in envs:
            e.close()


def normalized_reward(returns: np.ndarray | float, info: TaskInfo) -> np.ndarray:
    """``(R − R_min)/(R_max − R_min)``."""
    return (np.asarray(returns, dtype=np.float64) - info.reward_min) / (
        info.reward_max - info.reward_min
    )


def normalized_cost(costs: np.ndarray | float, threshold: float) -> np.ndarray:
    """``(C + ε)/(κ + ε)`` with ``ε = 1`` iff ``κ = 0``; safe iff ≤ 1."""
    if threshold < 0:
        raise ValueError(f"cost threshold must be >= 0, got {threshold}")
    eps = 1.0 if threshold == 0 else 0.0
    return (np.asarray(costs, dtype=np.float64) + eps) / (threshold + eps)


def dsrl_scores(
    results: EpisodeResults, info: TaskInfo, thresholds: Sequence[float]
) -> list[dict[str, float]]:
    """One row per threshold: mean normalised reward and cost over episodes, and ``safe``."""
    rows = []
    reward = float(normalized_reward(results.returns, info).mean())
    for kappa in thresholds:
        c = float(normalized_cost(results.costs.mean(), kappa))
        rows.append(
            {
                "threshold": float(kappa),
                "reward": reward,
                "cost": c,
                "safe": c <= 1.0,
                "raw_return": float(results.returns.mean()),
                "raw_cost": float(results.costs.mean()),
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
