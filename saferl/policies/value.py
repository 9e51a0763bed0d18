"""State-value networks V(s) of every policy kind, for on-policy learners (PPO's critic).

Each is its kind's critic without the action input: the same backbone over the limb graph, one
value per limb from the backbone's scalar features, averaged over the real limbs (MLP: one
value from the whole flat view). The SET value reads only SET's invariant features ``h``, so
V is invariant under rotations of the scene like SET's Q.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from envs.layout import ObsLayout
from saferl.common.runtime import resolve_device
from saferl.policies.bounded import FixedStructure
from saferl.policies.factory import make_config
from saferl.policies.graph import check_obs, layout_for, masked_mean
from saferl.policies.mlp import MLPConfig, mlp
from saferl.policies.set import SETBackbone, SETConfig
from saferl.policies.transformer import TransformerBackbone, TransformerConfig


class SETValue(FixedStructure, nn.Module):
    """SET state value: flat obs (B, L*PER_LIMB) -> V (B, 1), mean of per-limb values of the
    invariant features over real limbs (invariant under rotations about gravity)."""

    def __init__(self, layout: ObsLayout, cfg: SETConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or SETConfig()
        self.layout = layout
        self.backbone = SETBackbone(layout, self.cfg)
        self.head = nn.Sequential(nn.LayerNorm(self.cfg.width), nn.Linear(self.cfg.width, 1))

    def forward(self, obs: Tensor) -> Tensor:
        out = self.backbone(obs)
        return masked_mean(self.head(out["h"]), out["mask"])


class TransformerValue(FixedStructure, nn.Module):
    """Limb-transformer state value: flat obs -> V (B, 1), mean of per-limb values."""

    def __init__(self, layout: ObsLayout, cfg: TransformerConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or TransformerConfig()
        self.layout = layout
        self.backbone = TransformerBackbone(layout, self.cfg)
        self.head = nn.Linear(self.cfg.width, 1)

    def forward(self, obs: Tensor) -> Tensor:
        out = self.backbone(obs)
        return masked_mean(self.head(out["h"]), out["mask"])


class MLPValue(FixedStructure, nn.Module):
    """MLP state value: flat obs (B, flat) -> V (B, 1)."""

    def __init__(self, layout: ObsLayout, cfg: MLPConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or MLPConfig()
        self.layout = layout
        self.net = mlp([layout.flat_dim, *self.cfg.hidden, 1])

    def forward(self, obs: Tensor) -> Tensor:
        check_obs(obs, self.layout)
        return self.net(obs)


VALUES: dict[str, type[nn.Module]] = {"set": SETValue, "transformer": TransformerValue,
                                      "mlp": MLPValue}  # fmt: skip
"""kind -> state-value class (configs as :data:`saferl.policies.KINDS`)."""


def build_value(
    kind: str,
    observation_space: Any,
    config: Any = None,
    device: str | torch.device | None = None,
) -> nn.Module:
    """State value of ``kind``: flat obs (B, L*PER_LIMB) -> V (B, 1); ``config`` as the kind's
    actor takes (None = reference sizes). ValueError if the space matches no layout."""
    cfg = make_config(kind, config)
    layout = layout_for(observation_space)
    return VALUES[kind](layout, cfg).to(resolve_device(device))
