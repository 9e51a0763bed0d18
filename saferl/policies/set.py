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

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from envs.layout import NUM_SCALARS, NUM_VECTORS, VECTOR_INDEX, ObsLayout, vector_slice, xyz
from saferl.policies.bounded import FixedStructure
from saferl.policies.graph import GraphBias, LimbBatch, attend, graph_view, limb_attention

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


# Speed (same function, laid out for CPUs). SET's per-limb operations are tiny (3 x (m+2)
# blocks, 5 x 5 attention), so batched matrix products would run one small GEMM per limb.
# Inside the network the limb tokens are instead the last (column) dimension, in limb-major
# order (token l * B + b, padding left out, :class:`_Graph`), so each step is one large GEMM or
# a broadcast product that vectorises over the batch: h (N, d) token rows (LayerNorm,
# residuals), z (m, 3, N) vector channels, Gram features (T, N), attention (H, L, L', B).
# The Gram matrix is symmetric, so a linear map of its flattened entries,
# sum_ij W[:, ij] G_ij, equals sum_{i<=j} W'[:, ij] G_ij with W'_ij = W_ij + W_ji (i < j),
# W'_ii = W_ii: only its upper triangle is built (:class:`_GramTriangle`), and the layers keep
# their full-Gram weights (checkpoints unchanged), folded on the fly.


def _linear_cols(x: Tensor, linear: nn.Linear, weight: Tensor | None = None) -> Tensor:
    """``linear`` on feature columns: ``x`` (in, N) -> (out, N); ``weight`` replaces its
    weight (a folded one)."""
    weight = linear.weight if weight is None else weight
    return torch.addmm(linear.bias.unsqueeze(1), weight, x)


def _linear_rows(x: Tensor, linear: nn.Linear) -> Tensor:
    """``linear`` from feature columns to token rows: ``x`` (in, N) -> (N, out)."""
    return torch.addmm(linear.bias, x.t(), linear.weight.t())


def _mix(weight: Tensor, z: Tensor) -> Tensor:
    """:class:`VectorMix` on channel rows: ``weight`` (c_in, c_out), ``z`` (c_in, 3, N)
    -> (c_out, 3, N)."""
    return torch.mm(weight.t(), z.flatten(1)).view(-1, *z.shape[1:])


class _GramTriangle(torch.autograd.Function):
    """Normalised upper triangle of the Gram matrix of ``zc`` (k, 3, N) -> (T, N),
    T = k(k+1)/2: row p = (i, j), i <= j (``torch.triu_indices`` order), holds
    G_ij = sum_c zc[i, c] zc[j, c], divided by (||G||_F + 1).

    Forward: the whole k x k matrix as a sum of three outer products (one per spatial
    component, k x k x N each), then its triangle. Backward written out by hand, one channel
    at a time (d zc += D_.j zc_j with D symmetric from the triangle's gradient, diagonal
    doubled): no temporary larger than k x k x N, where autograd's graph of gathers, products
    and sums builds several T x 3 x N ones and three times as many kernels.
    """

    @staticmethod
    def forward(ctx: Any, zc: Tensor, tri: _Triangle) -> Tensor:
        k, _, n = zc.shape
        x, y, w = (c.unsqueeze(1) * c for c in zc.unbind(1))  # x_i x_j, ... (k, k, N)
        gram = (x + y + w).view(k * k, n).index_select(0, tri.upper)  # sum over c in order
        root = torch.mv((gram * gram).t(), tri.square_weight.to(zc.dtype)).sqrt()  # ||G||_F
        norm = root + 1.0
        out = gram.div_(norm)
        ctx.save_for_backward(zc, out, root, norm)
        ctx.tri = tri
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        zc, out, root, norm = ctx.saved_tensors
        tri: _Triangle = ctx.tri
        k = zc.shape[0]
        weight = tri.square_weight_col.to(zc.dtype)
        # out = G / (r + 1), r = sqrt(sum_p w_p G_p^2): dG = g / (r + 1) - w out (g . out) / r
        coef = (grad * out).sum(0) / root.clamp(min=torch.finfo(root.dtype).tiny)
        d_gram = grad / norm - weight * out * coef
        d_gram = d_gram * tri.double_diag.to(zc.dtype)  # D_ii = 2 dG_ii
        sym = d_gram.index_select(0, tri.symmetric).view(k, k, 1, -1).unbind(1)  # D_.j
        rows = zc.unbind(0)
        d_zc = sym[0] * rows[0]
        for j in range(1, k):
            d_zc.addcmul_(sym[j], rows[j])
        return d_zc, None


class _Mix(torch.autograd.Function):
    """Per-limb channel mix ``zc`` (k, 3, N), ``coeff`` (k, m, N) -> (m, 3, N),
    out[j, c] = sum_i zc[i, c] coeff[i, j] (the feed-forward block's [Z, g, d] sigma), one
    input channel at a time in place, where a broadcast product would build a k x m x 3 x N
    temporary."""

    @staticmethod
    def forward(ctx: Any, zc: Tensor, coeff: Tensor) -> Tensor:
        zs, cs = zc.unbind(0), coeff.unsqueeze(2).unbind(0)
        out = cs[0] * zs[0]
        for i in range(1, len(zs)):
            out.addcmul_(cs[i], zs[i])
        ctx.save_for_backward(zc, coeff)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        zc, coeff = ctx.saved_tensors
        cs, gs = coeff.unsqueeze(2).unbind(1), grad.unbind(0)
        d_zc = cs[0] * gs[0]  # d zc[i, c] = sum_j coeff[i, j] grad[j, c]
        for j in range(1, len(gs)):
            d_zc.addcmul_(cs[j], gs[j])
        zs, gs = zc.unsqueeze(1).unbind(2), grad.unbind(1)
        d_coeff = zs[0] * gs[0]  # d coeff[i, j] = sum_c zc[i, c] grad[j, c]
        for c in range(1, 3):
            d_coeff.addcmul_(zs[c], gs[c])
        return d_zc, d_coeff


class _Fold(torch.autograd.Function):
    """:meth:`_Triangle.fold` as one function: W'_ij = W_ij + W_ji (i < j), W'_ii = W_ii; the
    gradient of W_ij and of W_ji is that of W'_ij (a gather). Three small kernels forward, one
    backward, where autograd would record a dozen."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, tri: _Triangle) -> Tensor:
        ctx.tri = tri
        folded = weight.index_select(1, tri.upper)  # W_ij, i <= j
        return folded.index_add_(1, tri.off_diag, weight.index_select(1, tri.lower))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad.index_select(1, ctx.tri.symmetric), None


class _Triangle(nn.Module):
    """Upper triangle of the Gram matrix of k = channels + 2 vector channels: index buffers,
    the features (:class:`_GramTriangle`) and the folding of full-Gram weights onto them."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        rows, cols = torch.triu_indices(k, k)
        diag = (rows == cols).to(torch.float32)
        position = torch.zeros(k, k, dtype=torch.long)
        position[rows, cols] = position[cols, rows] = torch.arange(len(rows))
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.register_buffer("upper", rows * k + cols, persistent=False)
        self.register_buffer("symmetric", position.flatten(), persistent=False)
        off = torch.nonzero(rows != cols).flatten()
        self.register_buffer("off_diag", off, persistent=False)
        self.register_buffer("lower", cols[off] * k + rows[off], persistent=False)
        # ||G||_F^2 = sum over the triangle of G_ij^2, off-diagonal entries counted twice
        self.register_buffer("square_weight", 2.0 - diag, persistent=False)
        self.register_buffer("square_weight_col", (2.0 - diag).unsqueeze(1), persistent=False)
        self.register_buffer("double_diag", (1.0 + diag).unsqueeze(1), persistent=False)

    def gram(self, zc: Tensor) -> Tensor:
        """Triangle of :func:`gram_invariants` of ``zc = [Z, g, d]`` (k, 3, N) -> (T, N)."""
        return _GramTriangle.apply(zc, self)

    def fold(self, weight: Tensor) -> Tensor:
        """``weight`` (out, k*k) of a linear map of the flat Gram matrix -> the weight
        (out, T) of the same map of its upper triangle."""
        return _Fold.apply(weight, self)

    def linear(self, linear: nn.Linear, zc: Tensor, x: Tensor, x_first: bool) -> Tensor:
        """``linear`` on the feature columns [x, Gram(zc)] (or [Gram(zc), x] when not
        ``x_first``), x (in, N) -> (out, N): one GEMM per part, no concatenated copy."""
        size = self.k * self.k
        sizes = [x.shape[0], size] if x_first else [size, x.shape[0]]
        w_x, w_gram = linear.weight.split(sizes, 1)[:: 1 if x_first else -1]
        out = torch.addmm(linear.bias.unsqueeze(1), self.fold(w_gram), self.gram(zc))
        return torch.addmm(out, w_x, x)


class VectorMix(nn.Module):
    """Bias-free linear map of vector channels ``(..., 3, c_in) -> (..., 3, c_out)``."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_in, c_out) / c_in**0.5)

    def forward(self, z: Tensor) -> Tensor:
        return z @ self.weight


class _Graph(LimbBatch):
    """One batch in SET's layout (:class:`LimbBatch`) with the limbs' inputs as tokens: the
    decoded form of a batch of flat observations, which every SET net of one layout and
    ``max_hops`` can take (:func:`decode`)."""

    def __init__(self, view: dict[str, Tensor], layout: ObsLayout, max_hops: int) -> None:
        super().__init__(view, max_hops)
        self.view, self.layout, self.max_hops = view, layout, max_hops
        """The :func:`graph_view` and what it was decoded for."""
        self.vectors = self.columns(view["vectors"].transpose(-1, -2))
        """(8, 3, N) limb vectors as channel rows."""
        self.gd = self.vectors[[GRAVITY, TARGET]]
        """(2, 3, N) g and d, appended to the vector channels of every layer."""
        self.scalars = self.columns(view["scalars"])
        """(S, N) limb scalars (plus extra inputs) as feature columns."""

    def with_extra(self, extra: Tensor) -> _Graph:
        """This batch with ``extra`` (B, L, e) scalars appended to the limbs' (a copy; the
        decoded tokens are shared)."""
        graph = copy.copy(self)
        graph.scalars = torch.cat([self.scalars, self.columns(extra)])
        return graph

    def check(self, layout: ObsLayout, max_hops: int) -> None:
        """ValueError unless decoded for ``layout`` and ``max_hops``."""
        if (self.layout, self.max_hops) != (layout, max_hops):
            raise ValueError(
                f"batch decoded for {self.layout.max_limbs} limbs and max_hops {self.max_hops}, "
                f"net expects {layout.max_limbs} limbs and max_hops {max_hops}"
            )


def decode(obs: Tensor, layout: ObsLayout, max_hops: int) -> _Graph:
    """A batch of flat observations (B, flat_dim) decoded into SET's layout once, for any number
    of SET nets (actor, critics, their targets) of ``layout`` and ``max_hops``: pass it as their
    ``decoded`` argument. Decoding (graph view, limb sorting, hop distances, inputs as tokens)
    costs about a tenth of a small SET's forward pass."""
    return _Graph(graph_view(obs, layout), layout, max_hops)


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
        self, h: Tensor, z: Tensor, graph: _Graph, vectors_out: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """h (N, d) invariant, z (m, 3, N) equivariant -> updated (h, z); z is None when not
        ``vectors_out`` (its feed-forward update, which nothing after a critic's last layer
        reads, is skipped)."""
        n, d = h.shape
        bias = graph.key_bias if self.bias is None else graph.graph_bias(self.bias.table.weight)
        # attention: q, k, v from [LN(h), Gram([Z, g, d])]; weights invariant
        zc = torch.cat([z, graph.gd])
        qkv = self.tri.linear(self.qkv, zc, self.norm_attn(h).t(), x_first=True)
        # vector values: the same weights on bias-free mixes of [z, g, d] (equivariant)
        zv = _mix(self.vec_value.weight, zc).view(-1, n)
        grid = graph.grid(torch.cat([qkv, zv]))  # one trip to the (L, B) grid
        qkv, zv = grid.split([3 * d, zv.shape[0]])
        q, k, v = qkv.unflatten(0, (3, self.heads, -1)).unbind(0)  # (H, dh, L, B)
        attn = limb_attention(q, k, bias)  # (H, L, L', B)
        zv = zv.unflatten(0, (self.heads, -1))  # (H, m * 3, L, B)
        msg = torch.cat([attend(attn, v).flatten(0, 1), attend(attn, zv).flatten(0, 1)])
        msg, msg_vec = graph.tokens(msg).split([d, zv.shape[0] * zv.shape[1]])
        h = h + _linear_rows(msg, self.out)
        z = z + _mix(self.vec_out.weight, msg_vec.unflatten(0, (-1, 3)))
        # feed-forward: f(Z, h) = [Z, g, d] sigma(Gram, h)   (SGNN basic map)
        zc = torch.cat([z, graph.gd])
        hidden = F.silu(self.tri.linear(self.ff[0], zc, self.norm_ff(h).t(), x_first=True))
        h = h + _linear_rows(hidden, self.ff_scalar)
        if not vectors_out:
            return h, None
        coeff = _linear_cols(hidden, self.ff_coeff).view(self.m + 2, self.m, n)
        z = z + _Mix.apply(zc, coeff)
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

    def graph(self, view: dict[str, Tensor], extra: Tensor | None = None) -> _Graph:
        """The batch of ``view`` (:func:`graph_view`) in SET's layout; ``extra`` (B, L, e)."""
        graph = _Graph(view, self.layout, self.cfg.max_hops)
        return graph if extra is None else graph.with_extra(extra)

    def run(self, graph: _Graph, vectors_out: bool = True) -> tuple[Tensor, Tensor | None]:
        """The batch ``graph`` -> h (N, d) invariant, z (m, 3, N) equivariant (None when not
        ``vectors_out``: a critic reads only h)."""
        z = _mix(self.embed_vec.weight, graph.vectors)
        first, act, second = self.embed
        h = act(self.tri.linear(first, torch.cat([z, graph.gd]), graph.scalars, x_first=False))
        h = _linear_rows(h, second)
        for i, layer in enumerate(self.layers):
            h, z = layer(h, z, graph, vectors_out or i + 1 < len(self.layers))
        return h, z

    def forward(
        self, obs: Tensor, extra: Tensor | None = None, view: dict[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """``obs`` (B, flat_dim), ``extra`` (B, L, e) scalars -> graph view plus h (B, L, d),
        z (B, L, 3, m), gd (B, L, 3, 2) (zero on padded limbs).

        ``view``: the :func:`graph_view` of ``obs`` when the caller has decoded it already."""
        view = graph_view(obs, self.layout) if view is None else view
        graph = self.graph(view, extra)
        h, z = self.run(graph)
        h, z, gd = (graph.rows(x) for x in (h.t(), z, graph.gd))
        return {**view, "h": h, "z": z, "gd": gd}


class SETActor(FixedStructure, nn.Module):
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

    def forward(self, obs: Tensor, decoded: _Graph | None = None) -> Tensor:
        return torch.tanh(self.pre_activation(obs, decoded))

    def decode(self, obs: Tensor) -> _Graph:
        """:func:`decode` for this net (and any SET net of its layout and config)."""
        return decode(obs, self.layout, self.cfg.max_hops)

    def pre_activation(self, obs: Tensor, decoded: _Graph | None = None) -> Tensor:
        """Torques before tanh, (B, L*3): the invariant scalars axis_k . u, 0 on the torso and
        padded rows (``forward`` is tanh of this; SAC and PPO use it as a Gaussian mean).
        ``decoded``: :meth:`decode` of ``obs``, when the caller has it already."""
        graph = self.decode(obs) if decoded is None else decoded
        graph.check(self.layout, self.cfg.max_hops)
        view = graph.view
        h, z = self.backbone.run(graph)
        coeff = _linear_cols(self.norm(h).t(), self.coeff)  # (m+2, N)
        u = (torch.cat([z, graph.gd]) * coeff.unsqueeze(1)).sum(0)  # (3, N)
        pre = graph.rows((graph.vectors[AXES] * u).sum(1))  # (B, L, 3 hinges)
        return (pre * view["act_mask"].unsqueeze(-1)).flatten(1)


class SETCritic(FixedStructure, nn.Module):
    """SET Q-function: (obs (B, flat), actions (B, L, 3)) -> Q (B, 1), mean of per-limb Qs."""

    def __init__(self, layout: ObsLayout, cfg: SETConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or SETConfig()
        self.layout = layout
        self.backbone = SETBackbone(layout, self.cfg, extra_scalars=3)
        self.head = nn.Sequential(nn.LayerNorm(self.cfg.width), nn.Linear(self.cfg.width, 1))

    def forward(self, obs: Tensor, actions: Tensor, decoded: _Graph | None = None) -> Tensor:
        """``decoded``: :func:`decode` of ``obs``, when the caller has it already."""
        graph = decode(obs, self.layout, self.cfg.max_hops) if decoded is None else decoded
        graph.check(self.layout, self.cfg.max_hops)
        actions = actions * graph.view["act_mask"].unsqueeze(-1)  # unactuated rows: no signal
        graph = graph.with_extra(actions)
        h, _ = self.backbone.run(graph, vectors_out=False)
        norm, linear = self.head
        return graph.masked_mean(_linear_cols(norm(h).t(), linear)[0])
