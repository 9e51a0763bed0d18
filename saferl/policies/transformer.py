"""Transformer over limbs without equivariance (SWAT-like baseline; Hong et al., ICLR 2022).

Each limb is a token built from its raw world-frame vectors (flattened, 24 numbers) and its
scalars; pre-LayerNorm attention over limbs with the padding mask and the same hop-distance
graph bias in the first layer as SET (SWAT adds structural embeddings; the bias plays that
role here). Torques per limb from a linear read-out and tanh. Not equivariant: the vector
coordinates enter as plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from envs.layout import NUM_SCALARS, NUM_VECTORS, ObsLayout
from saferl.policies.graph import GraphBias, graph_view, masked_mean, masked_softmax_attention


@dataclass
class TransformerConfig:
    """Sizes of the limb transformer (matched to SET's reference sizes)."""

    width: int = 128
    """Token width."""
    ff: int = 256
    """Feed-forward hidden width."""
    heads: int = 2
    """Attention heads."""
    layers: int = 3
    """Attention layers."""
    max_hops: int = 6
    """Hop distances beyond this share one graph-bias entry."""


class TransformerLayer(nn.Module):
    """Pre-LN multi-head attention over limbs plus a feed-forward block."""

    def __init__(self, cfg: TransformerConfig, first: bool) -> None:
        super().__init__()
        if cfg.width % cfg.heads != 0:
            raise ValueError(f"width {cfg.width} must be divisible by heads {cfg.heads}")
        self.heads = cfg.heads
        self.norm_attn = nn.LayerNorm(cfg.width)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.out = nn.Linear(cfg.width, cfg.width)
        self.bias = GraphBias(cfg.heads, cfg.max_hops) if first else None
        self.ff = nn.Sequential(
            nn.LayerNorm(cfg.width),
            nn.Linear(cfg.width, cfg.ff),
            nn.SiLU(),
            nn.Linear(cfg.ff, cfg.width),
        )

    def forward(self, h: Tensor, mask: Tensor, parents: Tensor) -> Tensor:
        b, n, _ = h.shape
        q, k, v = self.qkv(self.norm_attn(h)).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        bias = self.bias(parents) if self.bias is not None else None
        attn = masked_softmax_attention(q, k, mask, bias)
        h = h + self.out((attn @ v).transpose(1, 2).reshape(b, n, -1))
        return h + self.ff(h)


class TransformerBackbone(nn.Module):
    """Limb tokens -> contextual features ``h`` (B, L, width)."""

    def __init__(self, layout: ObsLayout, cfg: TransformerConfig, extra: int = 0) -> None:
        super().__init__()
        self.layout = layout
        self.embed = nn.Linear(NUM_VECTORS * 3 + NUM_SCALARS + extra, cfg.width)
        self.layers = nn.ModuleList(TransformerLayer(cfg, i == 0) for i in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, obs: Tensor, extra: Tensor | None = None) -> dict[str, Tensor]:
        view = graph_view(obs, self.layout)
        parts = [view["vectors"].flatten(-2), view["scalars"]]
        h = self.embed(torch.cat(parts if extra is None else [*parts, extra], -1))
        for layer in self.layers:
            h = layer(h, view["mask"], view["parents"])
        return {**view, "h": self.norm(h)}


class TransformerActor(nn.Module):
    """flat obs (B, L*PER_LIMB) -> torques (B, L*3); torso and padded rows are 0."""

    def __init__(self, layout: ObsLayout, cfg: TransformerConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or TransformerConfig()
        self.layout = layout
        self.backbone = TransformerBackbone(layout, self.cfg)
        self.head = nn.Linear(self.cfg.width, 3)

    def forward(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.pre_activation(obs))

    def pre_activation(self, obs: Tensor) -> Tensor:
        """Torques before tanh, (B, L*3), 0 on the torso and padded rows (``forward`` is tanh
        of this; SAC and PPO use it as a Gaussian mean)."""
        out = self.backbone(obs)
        return (self.head(out["h"]) * out["act_mask"].unsqueeze(-1)).flatten(1)


class TransformerCritic(nn.Module):
    """(obs (B, flat), actions (B, L, 3)) -> Q (B, 1), mean of per-limb Qs over real limbs."""

    def __init__(self, layout: ObsLayout, cfg: TransformerConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or TransformerConfig()
        self.layout = layout
        self.backbone = TransformerBackbone(layout, self.cfg, extra=3)
        self.head = nn.Linear(self.cfg.width, 1)

    def forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        view = graph_view(obs, self.layout)
        out = self.backbone(obs, extra=actions * view["act_mask"].unsqueeze(-1))
        return masked_mean(self.head(out["h"]), out["mask"])
