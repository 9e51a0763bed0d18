"""SET: the SubEquivariant Transformer actor and critic of 3D-SGRL (Chen et al., ICML 2023).

Symmetry (paper Sec. 3): the group O_g(3) of orthogonal maps fixing the gravity direction g.
Per limb the observation has 8 world-frame vectors (position, gravity, target, velocities, joint
axes) and 26 invariant scalars. Every vector feature inside the network is a bias-free linear
mix of world-frame vectors with invariant coefficients, and every scalar feature depends on the
vectors only through Gram matrices (inner products), so:

* vector features are equivariant: rotating all input vectors by R rotates them by R;
* scalar features, and torques ``tanh(axis_k . u)`` (axis_k and u both turn by R), are
  invariant. This holds for *any* orthogonal R applied to all 8 input vectors together; the
  env-level symmetry we claim and test is rotation about the vertical axis (which fixes g).
  Reflections are not claimed at env level: angular velocities and hinge axes are pseudovectors,
  and, as in the reference, we feed them as ordinary vectors.

Construction (paper Eq. 5-9, SGNN's basic map f(Z, h) = [Z, g] sigma([Z, g]^T [Z, g], h)):
embedding: Z = V W (bias-free, m channels), invariants = Gram([Z, g, d]) / (||.||_F + 1);
attention layers: queries/keys/values from LN(h) + invariants, masked softmax over limbs with a
hop-distance bias in the first layer, scalar messages = A v, vector messages = A ([Z, g, d] W_v);
feed-forward: a second Gram matrix of the updated vectors updates h and re-mixes the vectors
through sigma's (m+2) x m coefficient matrix. Critic: actions appended to the limb scalars,
one Q per limb, mean over real limbs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from envs.layout import NUM_SCALARS, NUM_VECTORS, VECTOR_INDEX, ObsLayout, vector_slice, xyz
from saferl.policies.graph import (
    GraphBias,
    graph_view,
    masked_mean,
    masked_softmax_attention,
)

GRAVITY, TARGET = VECTOR_INDEX["gravity"], VECTOR_INDEX["target"]
"""Indices of g and d among the limb vectors (``envs.layout.VECTOR_NAMES``)."""
AXES = vector_slice(*xyz("axis"))
"""Indices of the three hinge axes (x, y, z: MuJoCo's ``data.xaxis``) among the limb vectors."""


@dataclass
class SETConfig:
    """Sizes of the SET network (reference values of 3D-SGRL)."""

    width: int = 128
    """Scalar feature width d of each limb token."""
    ff: int = 256
    """Hidden width of the feed-forward blocks."""
    heads: int = 2
    """Attention heads."""
    layers: int = 3
    """Attention layers."""
    channels: int = 30
    """Vector channels m per limb (g and d are appended, giving m + 2)."""
    max_hops: int = 6
    """Hop distances beyond this share one graph-bias entry."""


def gram_invariants(vectors: Tensor, gd: Tensor) -> Tensor:
    """Invariant features of ``[Z, g, d]``: its flattened, normalised Gram matrix.

    ``vectors`` (B, L, 3, m), ``gd`` (B, L, 3, 2) -> (B, L, (m+2)^2). Invariant under any
    orthogonal map applied to both: (RZ)^T (RZ) = Z^T Z. M = [Z, g, d]^T [Z, g, d] is divided
    by (||M||_F + 1) for stability (3D-SGRL code).
    """
    z = torch.cat([vectors, gd], dim=-1)
    gram = (z.transpose(-1, -2) @ z).flatten(-2)
    return gram / (torch.linalg.vector_norm(gram, dim=-1, keepdim=True) + 1.0)


def gram_size(channels: int) -> int:
    """Length of :func:`gram_invariants` for ``channels`` vector channels."""
    return (channels + 2) ** 2


# Speed (same function, fewer FLOPs): the Gram matrix is symmetric, so a linear map of its
# flattened entries, sum_ij W[:, ij] G_ij, equals sum_{i<=j} W'[:, ij] G_ij with the folded
# weight W'_ij = W_ij + W_ji (i < j), W'_ii = W_ii. The layers keep their full-Gram weights
# (checkpoints and gram_invariants unchanged) and fold them on the fly; only the upper
# triangle of the Gram matrix is fed in, almost halving the widest matmuls of SET.


class _Triangle(nn.Module):
    """Index buffers of the upper triangle of a k x k Gram matrix (k = channels + 2)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        rows, cols = torch.triu_indices(k, k)
        self.register_buffer("upper", rows * k + cols, persistent=False)
        self.register_buffer("lower", cols * k + rows, persistent=False)
        self.register_buffer("offdiag", (rows != cols).to(torch.float32), persistent=False)

    def gram(self, zc: Tensor) -> Tensor:
        """Upper triangle of :func:`gram_invariants` of ``zc = [Z, g, d]`` (..., 3, k)."""
        gram = (zc.transpose(-1, -2) @ zc).flatten(-2)  # (..., k*k)
        norm = torch.linalg.vector_norm(gram, dim=-1, keepdim=True) + 1.0
        return gram.index_select(-1, self.upper) / norm

    def fold(self, weight: Tensor, start: int) -> Tensor:
        """``weight`` (out, a + k*k + b) of a linear map on [x, flat Gram, y] (``start`` = a)
        -> the weight (out, a + k(k+1)/2 + b) of the same map on [x, upper triangle, y]."""
        end = start + self.k * self.k
        w_gram = weight[:, start:end]
        folded = w_gram.index_select(1, self.upper)
        folded = folded + w_gram.index_select(1, self.lower) * self.offdiag
        return torch.cat([weight[:, :start], folded, weight[:, end:]], 1)


class VectorMix(nn.Module):
    """Bias-free linear map of vector channels ``(..., 3, c_in) -> (..., 3, c_out)``."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_in, c_out) / c_in**0.5)

    def forward(self, z: Tensor) -> Tensor:
        return z @ self.weight


class SETLayer(nn.Module):
    """One subequivariant attention layer plus its feed-forward block."""

    def __init__(self, cfg: SETConfig, first: bool) -> None:
        super().__init__()
        m, d, g = cfg.channels, cfg.width, gram_size(cfg.channels)
        if d % cfg.heads != 0:
            raise ValueError(f"width {d} must be divisible by heads {cfg.heads}")
        self.heads, self.m = cfg.heads, m
        self.norm_attn = nn.LayerNorm(d)
        self.qkv = nn.Linear(d + g, 3 * d)
        self.out = nn.Linear(d, d)
        self.bias = GraphBias(cfg.heads, cfg.max_hops) if first else None
        self.vec_value = VectorMix(m + 2, cfg.heads * m)
        self.vec_out = VectorMix(cfg.heads * m, m)
        self.norm_ff = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d + g, cfg.ff), nn.SiLU())
        self.ff_scalar = nn.Linear(cfg.ff, d)
        self.ff_coeff = nn.Linear(cfg.ff, (m + 2) * m)
        nn.init.normal_(self.ff_coeff.weight, std=0.1 / cfg.ff**0.5)
        nn.init.zeros_(self.ff_coeff.bias)
        self.tri = _Triangle(m + 2)

    def forward(
        self, h: Tensor, z: Tensor, gd: Tensor, mask: Tensor, parents: Tensor
    ) -> tuple[Tensor, Tensor]:
        """h (B, L, d) invariant, z (B, L, 3, m) equivariant -> updated (h, z)."""
        return self._forward(h, z, gd, mask, self.bias(parents) if self.bias else None)

    def _forward(
        self, h: Tensor, z: Tensor, gd: Tensor, mask: Tensor, bias: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        b, n, d = h.shape
        zc = torch.cat([z, gd], -1)  # [Z, g, d], shared by the Gram and the value mix
        w_qkv = self.tri.fold(self.qkv.weight, d)
        qkv = F.linear(torch.cat([self.norm_attn(h), self.tri.gram(zc)], -1), w_qkv, self.qkv.bias)
        q, k, v = qkv.reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = masked_softmax_attention(q, k, mask, bias)  # (B, H, L, L), invariant
        # vector messages: the same weights on bias-free mixes of [z, g, d] (equivariant)
        zv = self.vec_value(zc).reshape(b, n, 3 * self.heads, self.m)
        zv = zv.reshape(b, n, 3, self.heads, self.m).permute(0, 3, 1, 2, 4).flatten(3)
        msg = attn @ torch.cat([v, zv], -1)  # one product for scalar and vector messages
        dh = v.shape[-1]
        h = h + self.out(msg[..., :dh].transpose(1, 2).reshape(b, n, -1))
        msg_vec = msg[..., dh:].reshape(b, self.heads, n, 3, self.m).permute(0, 2, 3, 1, 4)
        z = z + self.vec_out(msg_vec.reshape(b, n, 3, -1))
        # feed-forward: f(Z, h) = [Z, g, d] sigma(Gram, h)   (SGNN basic map)
        zc = torch.cat([z, gd], -1)
        w_ff = self.tri.fold(self.ff[0].weight, d)
        hidden = F.silu(
            F.linear(torch.cat([self.norm_ff(h), self.tri.gram(zc)], -1), w_ff, self.ff[0].bias)
        )
        h = h + self.ff_scalar(hidden)
        coeff = self.ff_coeff(hidden).reshape(b, n, self.m + 2, self.m)
        z = z + zc @ coeff
        return h, z


class SETBackbone(nn.Module):
    """Embedding plus ``cfg.layers`` SET layers: flat obs -> (h invariant, z equivariant)."""

    def __init__(self, layout: ObsLayout, cfg: SETConfig, extra_scalars: int = 0) -> None:
        super().__init__()
        self.layout, self.cfg = layout, cfg
        m = cfg.channels
        self.embed_vec = VectorMix(NUM_VECTORS, m)
        self.embed = nn.Sequential(
            nn.Linear(gram_size(m) + NUM_SCALARS + extra_scalars, cfg.width),
            nn.SiLU(),
            nn.Linear(cfg.width, cfg.width),
        )
        self.layers = nn.ModuleList(SETLayer(cfg, first=i == 0) for i in range(cfg.layers))
        self.tri = _Triangle(m + 2)

    def forward(
        self, obs: Tensor, extra: Tensor | None = None, view: dict[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """``obs`` (B, flat_dim), ``extra`` (B, L, e) scalars -> graph view plus h, z, gd.

        ``view``: the :func:`graph_view` of ``obs`` when the caller has decoded it already."""
        view = graph_view(obs, self.layout) if view is None else view
        vectors = view["vectors"].transpose(-1, -2)  # (B, L, 3, 8): channels last
        gd = vectors[..., [GRAVITY, TARGET]]
        z = self.embed_vec(vectors)
        scalars = view["scalars"] if extra is None else torch.cat([view["scalars"], extra], -1)
        first, act, second = self.embed
        inv = self.tri.gram(torch.cat([z, gd], -1))
        h = F.linear(torch.cat([inv, scalars], -1), self.tri.fold(first.weight, 0), first.bias)
        h = second(act(h))
        for layer in self.layers:
            h, z = layer(h, z, gd, view["mask"], view["parents"])
        return {**view, "h": h, "z": z, "gd": gd}


class SETActor(nn.Module):
    """SET policy: flat obs (B, L*PER_LIMB) -> torques (B, L*3) in [-1, 1].

    Per limb an equivariant vector u = [z, g, d] c(h) (c invariant) gives the torque of hinge k
    as tanh(axis_k . u): invariant under rotations of the scene. Torso and padded rows are 0.
    """

    def __init__(self, layout: ObsLayout, cfg: SETConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or SETConfig()
        self.layout = layout
        self.backbone = SETBackbone(layout, self.cfg)
        self.norm = nn.LayerNorm(self.cfg.width)
        self.coeff = nn.Linear(self.cfg.width, self.cfg.channels + 2)

    def forward(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.pre_activation(obs))

    def pre_activation(self, obs: Tensor) -> Tensor:
        """Torques before tanh, (B, L*3): the invariant scalars axis_k . u, 0 on the torso and
        padded rows (``forward`` is tanh of this; SAC and PPO use it as a Gaussian mean)."""
        out = self.backbone(obs)
        coeff = self.coeff(self.norm(out["h"]))  # (B, L, m+2)
        u = torch.einsum("blci,bli->blc", torch.cat([out["z"], out["gd"]], -1), coeff)
        axes = out["vectors"][:, :, AXES, :]  # (B, L, 3 hinges, 3)
        pre = torch.einsum("blkc,blc->blk", axes, u)
        return (pre * out["act_mask"].unsqueeze(-1)).flatten(1)


class SETCritic(nn.Module):
    """SET Q-function: (obs (B, flat), actions (B, L, 3)) -> Q (B, 1), mean of per-limb Qs."""

    def __init__(self, layout: ObsLayout, cfg: SETConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or SETConfig()
        self.layout = layout
        self.backbone = SETBackbone(layout, self.cfg, extra_scalars=3)
        self.head = nn.Sequential(nn.LayerNorm(self.cfg.width), nn.Linear(self.cfg.width, 1))

    def forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        view = graph_view(obs, self.layout)
        actions = actions * view["act_mask"].unsqueeze(-1)  # unactuated rows carry no signal
        out = self.backbone(obs, extra=actions)
        return masked_mean(self.head(out["h"]), out["mask"])
