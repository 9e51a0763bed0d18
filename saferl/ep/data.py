"""Data for EP learners: scikit-learn's bundled digits and an unsafe-state prediction task.

Safety task: from a state of a Hopper rollout, predict whether the velocity cost fires
(``x_velocity > 0.7402``, Safety-Gymnasium's Hopper velocity threshold) within the next ``k``
steps of the behaviour policy (:func:`saferl.data.unsafe_within`). The rollouts run on
``SaferlPlanar-HopperVelocity-v0`` through the toolkit's one rollout; the behaviour policy is
random and perturbed (per episode: either uniform actions or a Gaussian around a random bias), so
both labels occur. Generated in-process with a fixed seed; train/test split by episode
(neighbouring states never straddle the split).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from saferl.data.dsrl import make_env
from saferl.data.rollout import rollout_transitions, unsafe_within

SAFETY_TASK = "SaferlPlanar-HopperVelocity-v0"
"""The task of the safety labels: planar Hopper, cost 1{x-velocity > 0.7402} (Safety-Gymnasium)."""


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


def hopper_rollouts(
    n_steps: int = 6000, seed: int = 0, env_id: str = SAFETY_TASK
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Roll out the perturbed random policy (:func:`saferl.data.rollout_transitions`):
    obs (m, 11), cost (m,), episode id (m,), env id. ``cost[t]`` is the cost of the step taken
    from ``obs[t]``.

    Per episode the policy is uniform on the action box, or (with probability 1/2) Gaussian with
    scale U(0.2, 0.8) around a bias N(0.3, 0.4²) per joint."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    rng = np.random.default_rng(seed)
    modes: dict[int, tuple] = {}

    def policy(obs: np.ndarray, episodes: np.ndarray) -> np.ndarray:
        actions = np.empty((len(obs), 3))
        for row, e in enumerate(episodes):
            uniform, bias, scale = modes.setdefault(
                int(e), (rng.random() < 0.5, rng.normal(0.3, 0.4, 3), rng.uniform(0.2, 0.8))
            )
            noise = rng.uniform(-1, 1, 3) if uniform else bias + scale * rng.standard_normal(3)
            actions[row] = noise
        return actions

    runs = rollout_transitions(policy, lambda: make_env(env_id), n_steps, seed,
                               episode_index=True)  # fmt: skip
    d = runs.data
    return (d["observations"][:n_steps], d["costs"][:n_steps],
            runs.episode_ids()[:n_steps], env_id)  # fmt: skip


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
    obs = obs.astype(np.float64)
    y = unsafe_within(costs, episodes, horizon)
    ids = np.unique(episodes)
    rng = np.random.default_rng(seed + 1)
    test_ids = rng.choice(ids, size=max(1, int(round(test_fraction * len(ids)))), replace=False)
    test = np.isin(episodes, test_ids)
    mean, std = obs[~test].mean(0), obs[~test].std(0) + 1e-8
    x = (obs - mean) / std
    name = f"unsafe-within-{horizon} ({env_id})"
    return _to_split(x[~test], y[~test], x[test], y[test], 2, name, dtype, device)
