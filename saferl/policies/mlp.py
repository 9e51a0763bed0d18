"""Plain MLP baseline on the padded flat view (TD3's default actor/critic; Fujimoto et al. 2018).

Sees the whole flat observation (vectors, scalars, mask, parents) as one vector; no structure
and no symmetry. Torso and padded action rows are zeroed like the other policies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from envs.layout import ObsLayout
from saferl.policies.bounded import FixedStructure
from saferl.policies.graph import check_obs, graph_view


@dataclass
class MLPConfig:
    """Hidden sizes of the MLP (TD3 paper: 400, 300; SB3 default)."""

    hidden: list[int] = field(default_factory=lambda: [400, 300])
    """Hidden layer widths."""


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear-ReLU stack through ``sizes``; no activation after the last layer."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MLPActor(FixedStructure, nn.Module):
    """flat obs (B, L*PER_LIMB) -> torques (B, L*3) in [-1, 1]."""

    def __init__(self, layout: ObsLayout, cfg: MLPConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or MLPConfig()
        self.layout = layout
        self.net = mlp([layout.flat_dim, *self.cfg.hidden, layout.action_dim])

    def forward(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.pre_activation(obs))

    def pre_activation(self, obs: Tensor) -> Tensor:
        """Torques before tanh, (B, L*3), 0 on the torso and padded rows (``forward`` is tanh
        of this; SAC and PPO use it as a Gaussian mean)."""
        act_mask = graph_view(obs, self.layout)["act_mask"]
        pre = self.net(obs).reshape(-1, self.layout.max_limbs, 3)
        return (pre * act_mask.unsqueeze(-1)).flatten(1)


class MLPCritic(FixedStructure, nn.Module):
    """(obs (B, flat), actions (B, L, 3)) -> Q (B, 1)."""

    def __init__(self, layout: ObsLayout, cfg: MLPConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or MLPConfig()
        self.layout = layout
        self.net = mlp([layout.flat_dim + layout.action_dim, *self.cfg.hidden, 1])

    def forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        check_obs(obs, self.layout)
        return self.net(torch.cat([obs, actions.flatten(1)], -1))
