"""DSRL-format transition data as the offline learners consume it.

A dataset is a dict of float32 arrays (keys :data:`REQUIRED_KEYS`, first axis = transitions)
plus metadata (env id, max episode steps, reference returns ``R_min``/``R_max``). Files are read
and written by :mod:`saferl.data`; this module validates in-memory dicts, splits them into
trajectories, filters trajectories (BC-Safe) and samples batches on any device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from saferl.data.dsrl import REQUIRED_KEYS


@dataclass(frozen=True)
class TaskInfo:
    """The metadata fields the offline learners and the DSRL protocol need."""

    env_id: str
    max_episode_steps: int
    reward_min: float
    reward_max: float

    def __post_init__(self) -> None:
        if self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {self.max_episode_steps}")
        if not self.reward_max > self.reward_min:
            raise ValueError(
                f"need reward_max > reward_min, got {self.reward_max} <= {self.reward_min}"
            )


def task_info(metadata: Any) -> TaskInfo:
    """A :class:`TaskInfo` from a ``DatasetMetadata``, a dict, or a ``TaskInfo``."""
    if isinstance(metadata, TaskInfo):
        return metadata

    def get(name: str) -> Any:
        if isinstance(metadata, Mapping):
            if name not in metadata:
                raise KeyError(f"dataset metadata lacks {name!r}")
            return metadata[name]
        if not hasattr(metadata, name):
            raise KeyError(f"dataset metadata lacks {name!r}")
        return getattr(metadata, name)

    return TaskInfo(
        env_id=str(get("env_id")),
        max_episode_steps=int(get("max_episode_steps")),
        reward_min=float(get("reward_min")),
        reward_max=float(get("reward_max")),
    )


def check_data(data: Mapping[str, np.ndarray]) -> int:
    """Validate a DSRL dict (keys, shapes, finiteness); return the number of transitions."""
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise KeyError(f"dataset lacks keys {missing}; expected {list(REQUIRED_KEYS)}")
    n = len(data["observations"])
    if n == 0:
        raise ValueError("dataset is empty")
    for k in REQUIRED_KEYS:
        arr = np.asarray(data[k])
        if arr.shape[0] != n:
            raise ValueError(f"dataset key {k!r} has {arr.shape[0]} rows, expected {n}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"dataset key {k!r} contains NaN or inf")
    for k in ("observations", "next_observations", "actions"):
        if np.asarray(data[k]).ndim != 2:
            raise ValueError(f"dataset key {k!r} must be 2-D (N, dim), got {data[k].shape}")
    if data["observations"].shape != data["next_observations"].shape:
        raise ValueError("observations and next_observations shapes differ")
    for k in ("rewards", "costs", "terminals", "timeouts"):
        if np.asarray(data[k]).ndim != 1:
            raise ValueError(f"dataset key {k!r} must be 1-D (N,), got {data[k].shape}")
    return n


def episode_ids(data: Mapping[str, np.ndarray]) -> np.ndarray:
    """Trajectory index of each transition; a trajectory ends at a terminal or timeout."""
    ends = np.maximum(data["terminals"], data["timeouts"]) > 0
    starts = np.concatenate([[0], ends[:-1].astype(np.int64)])
    return np.cumsum(starts)


def trajectory_returns(data: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Undiscounted (reward return, cost return) of every trajectory, each of shape (n_traj,)."""
    ids = episode_ids(data)
    n_traj = int(ids[-1]) + 1
    rewards = np.bincount(ids, weights=data["rewards"], minlength=n_traj)
    costs = np.bincount(ids, weights=data["costs"], minlength=n_traj)
    return rewards, costs


def select_trajectories(data: Mapping[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """The transitions of the trajectories where ``keep`` (shape (n_traj,)) is true."""
    ids = episode_ids(data)
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (int(ids[-1]) + 1,):
        raise ValueError(
            f"keep must have one entry per trajectory ({ids[-1] + 1}), got {keep.shape}"
        )
    rows = keep[ids]
    if not rows.any():
        raise ValueError("no trajectory selected")
    return {k: np.asarray(v)[rows] for k, v in data.items() if k in REQUIRED_KEYS}


def safe_trajectories(data: Mapping[str, np.ndarray], cost_limit: float) -> dict[str, np.ndarray]:
    """BC-Safe's data: trajectories with cost return ≤ ``cost_limit`` (OSRL)."""
    _, costs = trajectory_returns(data)
    return select_trajectories(data, costs <= cost_limit)


class TransitionBuffer:
    """The dataset as tensors on ``device``; :meth:`sample` draws uniform minibatches.

    Batches are dicts with ``obs (B, obs_dim)``, ``act (B, act_dim)``, ``next_obs``,
    ``reward (B,)``, ``cost (B,)``, ``done (B,)`` (terminal or timeout, as 0/1 floats).
    """

    def __init__(
        self,
        data: Mapping[str, np.ndarray],
        device: str | torch.device = "cpu",
        reward_scale: float = 1.0,
    ) -> None:
        self.size = check_data(data)
        self.device = torch.device(device)

        def t(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device)

        done = np.maximum(data["terminals"], data["timeouts"])
        self.tensors = {
            "obs": t(data["observations"]),
            "act": t(data["actions"]),
            "next_obs": t(data["next_observations"]),
            "reward": t(data["rewards"]) * reward_scale,
            "cost": t(data["costs"]),
            "done": (t(done) > 0).float(),
        }
        self.obs_dim = self.tensors["obs"].shape[1]
        self.act_dim = self.tensors["act"].shape[1]

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict:
        """A uniform minibatch (with replacement) of ``batch_size`` transitions."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        idx = torch.randint(self.size, (batch_size,), device=self.device, generator=generator)
        return {k: v[idx] for k, v in self.tensors.items()}
