"""Behaviour cloning baselines of the DSRL/OSRL benchmark: BC-All and BC-Safe.

* BC-All clones every transition of the dataset (cost-blind).
* BC-Safe clones only the trajectories whose cost return is at most the threshold κ
  (Liu et al., "Datasets and Benchmarks for Offline Safe RL", 2023 — OSRL's BC-Safe).

As OSRL's ``osrl/algorithms/bc.py`` with the defaults of ``examples/configs/bc_configs.py``: a
deterministic ReLU MLP actor ``a = tanh(f(s))`` (256-256), the mean squared error to the data
action (averaged over batch and action dimensions), Adam at a constant 1e-3, batch 512, 1e5
steps. BC-Safe's filter is OSRL's ``bc_mode="safe"`` with its ``gamma = 1``: a trajectory (split
at terminals and timeouts) is kept iff its undiscounted cost return is ≤ κ.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from saferl.common.runtime import seeded
from saferl.data.dsrl import DatasetMetadata, safe_trajectories, validate_data
from saferl.offline.buffer import TransitionBuffer
from saferl.offline.networks import MLP
from saferl.offline.trainer import AgentBase, fit


@dataclass
class BCConfig:
    """BC hyperparameters; defaults are OSRL's (``examples/configs/bc_configs.py``)."""

    steps: int = 100_000
    """Gradient steps."""
    batch_size: int = 512
    """Transitions per step."""
    lr: float = 1e-3
    """Adam learning rate (constant: OSRL has no schedule)."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the actor."""
    cost_limit: float | None = None
    """κ for BC-Safe (keep trajectories with cost return ≤ κ); None = BC-All."""
    seed: int = 0
    """Seeds initialisation and minibatches."""
    log_every: int = 1000
    """Steps between logged statistics."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.log_every < 1:
            raise ValueError(f"BCConfig needs steps, batch_size, log_every >= 1 and lr > 0, "
                             f"got {self}")  # fmt: skip
        if self.cost_limit is not None and self.cost_limit < 0:
            raise ValueError(f"cost_limit must be >= 0 or None, got {self.cost_limit}")
        self.hidden = tuple(self.hidden)


def bc_loss(batch: Mapping[str, torch.Tensor], actor: MLP) -> tuple[torch.Tensor, dict]:
    """``mean (π(s) − a)²`` over batch and action dims (OSRL's ``F.mse_loss``); returns
    ``(loss, stats)``."""
    loss = (actor(batch["obs"]) - batch["act"]).square().mean()
    return loss, {"losses/bc": loss.detach()}


class BC(AgentBase):
    """A behaviour-cloned deterministic policy (BC-All or BC-Safe).

    Args:
        obs_dim, act_dim: widths of observations and actions (actions in [−1, 1]).
        config: :class:`BCConfig`.
        device: torch device; default "cuda" if available else "cpu".
    """

    kind = "bc"
    config_class = BCConfig
    weights = "actor"

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        config: BCConfig | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self._setup(obs_dim, act_dim, config, device)
        with seeded(self.config.seed):  # initialisation, without reseeding the caller's RNG
            self.actor = MLP(obs_dim, act_dim, self.config.hidden, squash=True).to(self.device)
        self.opt = torch.optim.Adam(self.actor.parameters(), lr=self.config.lr)

    def update(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One Adam step on :func:`bc_loss`."""
        loss, stats = bc_loss(batch, self.actor)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return stats

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """``(B, obs_dim) -> (B, act_dim)``."""
        obs = np.asarray(obs, dtype=np.float32)
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs must have shape (B, {self.obs_dim}), got {obs.shape}")
        return self.actor(torch.as_tensor(obs, device=self.device)).cpu().numpy()


def train_bc(
    data: Mapping[str, np.ndarray],
    metadata: DatasetMetadata | None = None,
    config: BCConfig | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    writer: Any = None,
) -> tuple[BC, list[dict[str, float]]]:
    """Train BC-All (``config.cost_limit`` None) or BC-Safe on a DSRL dict (``metadata`` is not
    needed; accepted so every method trains through one signature)."""
    config = config or BCConfig()
    validate_data(data, strict_dtype=False, extra_keys=True)
    if config.cost_limit is not None:
        data = safe_trajectories(data, config.cost_limit)
    agent = BC(data["observations"].shape[1], data["actions"].shape[1], config, device)
    buffer = TransitionBuffer(data, agent.device)

    def batches():
        return (buffer.sample(config.batch_size, agent.generator),)

    return agent, fit(agent, batches, config.steps, config.log_every, "BC", progress, writer)
