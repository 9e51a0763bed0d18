"""Data for EP learners: scikit-learn's bundled digits and an unsafe-state prediction task.

Safety task: from a state of a Hopper rollout, predict whether the velocity cost fires
(``x_velocity > 0.7402``, Safety-Gymnasium's Hopper velocity threshold) within the next ``k``
steps of the behaviour policy. The rollouts use ``envs.make("SaferlPlanar-HopperVelocity-v0")``
(cost in ``info["cost"]``) when the toolkit's env is registered, else Gymnasium's ``Hopper-v5``
(cost = x_velocity > threshold). The behaviour policy is random and perturbed (per episode: either
uniform actions or a Gaussian around a random bias), so both labels occur. Generated in-process
with a fixed seed; train/test split by episode (neighbouring states never straddle the split).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

HOPPER_VELOCITY_THRESHOLD = 0.7402
"""Safety-Gymnasium's velocity limit for Hopper (m/s)."""


@dataclass
class Split:
    """Train/test tensors: x (m, d) float, y (m,) int64."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int
    name: str

    def describe(self) -> str:
        """One line: sizes and class balance."""
        pos = float(self.y_train.double().mean()) if self.n_classes == 2 else float("nan")
        return (
            f"{self.name}: train {tuple(self.x_train.shape)}, test {tuple(self.x_test.shape)}, "
            f"{self.n_classes} classes" + (f", positive rate {pos:.2f}" if pos == pos else "")
        )


def _to_split(xtr, ytr, xte, yte, n_classes, name, dtype, device) -> Split:
    def t(a, dt):
        return torch.as_tensor(np.asarray(a), dtype=dt, device=device)

    return Split(
        t(xtr, dtype), t(ytr, torch.int64), t(xte, dtype), t(yte, torch.int64), n_classes, name
    )


def load_digits_split(
    seed: int = 0,
    test_fraction: float = 0.2,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Split:
    """scikit-learn's 8x8 digits (1797 samples, bundled, no download), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    d = load_digits()
    x = d.data.astype(np.float64) / 16.0
    xtr, xte, ytr, yte = train_test_split(
        x, d.target, test_size=test_fraction, random_state=seed, stratify=d.target
    )
    return _to_split(xtr, ytr, xte, yte, 10, "digits", dtype, device)


def _make_env(seed: int):
    """The toolkit's planar hopper with velocity cost if registered, else Gymnasium Hopper-v5."""
    try:
        import envs  # noqa: F401  (registers the toolkit's env ids when present)

        return envs.make("SaferlPlanar-HopperVelocity-v0"), "SaferlPlanar-HopperVelocity-v0"
    except Exception:  # env not available (yet): fall back to Gymnasium's planar Hopper
        import gymnasium as gym

        return gym.make("Hopper-v5"), "Hopper-v5"


def _step_cost(info: dict, threshold: float) -> float:
    if "cost" in info:
        return float(info["cost"])
    return float(info["x_velocity"] > threshold)


def hopper_rollouts(
    n_steps: int = 6000, seed: int = 0, threshold: float = HOPPER_VELOCITY_THRESHOLD
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Roll out the perturbed random policy: obs (m, 11), cost (m,), episode id (m,), env id.

    ``cost[t]`` is the cost of the step taken from ``obs[t]``."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    env, env_id = _make_env(seed)
    rng = np.random.default_rng(seed)
    obs_list, costs, episodes = [], [], []
    obs, _ = env.reset(seed=seed)
    episode, bias, scale, uniform = 0, rng.normal(0.3, 0.4, 3), rng.uniform(0.2, 0.8), True
    low, high = env.action_space.low, env.action_space.high
    for _ in range(n_steps):
        if uniform:
            a = rng.uniform(low, high)
        else:
            a = np.clip(bias + scale * rng.standard_normal(3), low, high)
        nxt, _, term, trunc, info = env.step(a)
        obs_list.append(obs)
        costs.append(_step_cost(info, threshold))
        episodes.append(episode)
        obs = nxt
        if term or trunc:
            obs, _ = env.reset()
            episode += 1
            uniform = bool(rng.random() < 0.5)
            bias, scale = rng.normal(0.3, 0.4, 3), rng.uniform(0.2, 0.8)
    env.close()
    return np.asarray(obs_list), np.asarray(costs), np.asarray(episodes), env_id


def unsafe_within(costs: np.ndarray, episodes: np.ndarray, k: int) -> np.ndarray:
    """Label 1 where a cost fires in steps t..t+k-1 of the same episode; (m,) int."""
    if k < 1:
        raise ValueError(f"horizon k must be >= 1, got {k}")
    labels = np.zeros(len(costs), dtype=np.int64)
    for j in range(k):
        shifted = np.zeros_like(costs)
        shifted[: len(costs) - j] = costs[j:]
        same = np.zeros(len(costs), dtype=bool)
        same[: len(costs) - j] = episodes[j:] == episodes[: len(costs) - j]
        labels |= ((shifted > 0) & same).astype(np.int64)
    return labels


def load_safety_split(
    n_steps: int = 6000,
    horizon: int = 5,
    seed: int = 0,
    test_fraction: float = 0.25,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Split:
    """Unsafe-state prediction from Hopper rollouts: x = standardised obs, y = unsafe within k.

    Standardisation uses training statistics only; split by episode."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    obs, costs, episodes, env_id = hopper_rollouts(n_steps, seed)
    y = unsafe_within(costs, episodes, horizon)
    ids = np.unique(episodes)
    rng = np.random.default_rng(seed + 1)
    test_ids = rng.choice(ids, size=max(1, int(round(test_fraction * len(ids)))), replace=False)
    test = np.isin(episodes, test_ids)
    mean, std = obs[~test].mean(0), obs[~test].std(0) + 1e-8
    x = (obs - mean) / std
    name = f"unsafe-within-{horizon} ({env_id})"
    return _to_split(x[~test], y[~test], x[test], y[test], 2, name, dtype, device)
