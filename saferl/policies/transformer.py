"""Transformer over limbs without equivariance (SWAT-like baseline; Hong et al., ICLR 2022).

Each limb is a token built from its raw world-frame vectors (flattened, 24 numbers) and its
scalars; pre-LayerNorm attention over limbs with the padding mask and the same hop-distance
graph bias in the first layer as SET (SWAT adds structural embeddings; the bias plays that
role here). Torques per limb from a linear read-out and tanh. Not equivariant: the vector
coordinates enter as plain numbers. Laid out as :class:`~saferl.policies.graph.LimbBatch`
says (limb tokens as GEMM columns, attention vectorised over the batch, padding left out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from envs.layout import NUM_SCALARS, NUM_VECTORS, ObsLayout
from saferl.policies.bounded import FixedStructure
from saferl.policies.graph import GraphBias, LimbBatch, attend, graph_view, limb_attention


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

    def forward(self, h: Tensor, batch: LimbBatch) -> Tensor:
        """h (N, width) token rows of ``batch`` (:class:`LimbBatch`) -> updated h."""
        bias = batch.key_bias if self.bias is None else batch.graph_bias(self.bias.table.weight)
        # q, k, v as feature columns (3 * width, N), then on the (L, B) grid: (H, dh, L, B)
        qkv = torch.addmm(self.qkv.bias.unsqueeze(1), self.qkv.weight, self.norm_attn(h).t())
        q, k, v = batch.grid(qkv).unflatten(0, (3, self.heads, -1)).unbind(0)
        msg = batch.tokens(attend(limb_attention(q, k, bias), v).flatten(0, 1))  # (width, N)
        h = h + torch.addmm(self.out.bias, msg.t(), self.out.weight.t())
        return h + self.ff(h)


class TransformerBackbone(nn.Module):
    """Limb tokens -> contextual features ``h`` (B, L, width)."""

    def __init__(self, layout: ObsLayout, cfg: TransformerConfig, extra: int = 0) -> None:
        super().__init__()
        self.layout, self.cfg = layout, cfg
        self.embed = nn.Linear(NUM_VECTORS * 3 + NUM_SCALARS + extra, cfg.width)
        self.layers = nn.ModuleList(TransformerLayer(cfg, i == 0) for i in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)

    def run(self, view: dict[str, Tensor], extra: Tensor | None = None) -> tuple[Tensor, LimbBatch]:
        """The :func:`graph_view` ``view`` (and ``extra`` (B, L, e) inputs) -> token rows
        h (N, width) and their :class:`LimbBatch`."""
        batch = LimbBatch(view, self.cfg.max_hops)
        parts = [view["vectors"].flatten(-2), view["scalars"]]
        x = batch.columns(torch.cat(parts if extra is None else [*parts, extra], -1))
        h = torch.addmm(self.embed.bias, x.t(), self.embed.weight.t())
        for layer in self.layers:
            h = layer(h, batch)
        return self.norm(h), batch

    def forward(self, obs: Tensor, extra: Tensor | None = None) -> dict[str, Tensor]:
        """``obs`` (B, flat) -> graph view plus h (B, L, width), zero on padded limbs."""
        view = graph_view(obs, self.layout)
        h, batch = self.run(view, extra)
        return {**view, "h": batch.rows(h.t())}


class TransformerActor(FixedStructure, nn.Module):
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
        view = graph_view(obs, self.layout)
        h, batch = self.backbone.run(view)
        pre = batch.rows(torch.addmm(self.head.bias.unsqueeze(1), self.head.weight, h.t()))
        return (pre * view["act_mask"].unsqueeze(-1)).flatten(1)


class TransformerCritic(FixedStructure, nn.Module):
    """(obs (B, flat), actions (B, L, 3)) -> Q (B, 1), mean of per-limb Qs over real limbs."""

    def __init__(self, layout: ObsLayout, cfg: TransformerConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or TransformerConfig()
        self.layout = layout
        self.backbone = TransformerBackbone(layout, self.cfg, extra=3)
        self.head = nn.Linear(self.cfg.width, 1)

    def forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        view = graph_view(obs, self.layout)
        h, batch = self.backbone.run(view, actions * view["act_mask"].unsqueeze(-1))
        return batch.masked_mean(torch.mv(h, self.head.weight[0]) + self.head.bias)
