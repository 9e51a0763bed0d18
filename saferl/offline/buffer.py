"""DSRL-format transition data as the offline learners consume it: tensors on any device.

The dataset model itself (validation, trajectories, metadata, normalised scores) lives in
:mod:`saferl.data`; this module only samples minibatches.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from saferl.data.dsrl import validate_data


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
        self.size = validate_data(data, strict_dtype=False, extra_keys=True)
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
