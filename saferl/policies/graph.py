"""Pieces shared by the limb-graph policies: decoding the flat view, hop distances, masks, and
the CPU-friendly layout of a batch of limb graphs (:class:`LimbBatch`) with its attention.

Every policy in :mod:`saferl.policies` reads the padded flat observation of ``envs.layout``
and decodes the graph view (per-limb vectors, scalars, mask, parents) inside its forward pass,
so one network can act for every morphology of a suite in one vector env.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import Tensor

from envs.layout import ACTIONS_PER_LIMB, ObsLayout, decode_flat

NEG_INF = -1e9
"""Finite "minus infinity" for masked attention logits (no NaN when every key is masked)."""


def layout_for(observation_space: Any, action_space: Any | None = None) -> ObsLayout:
    """The limb layout of a flat Box observation space (and a check of the action space).

    Raises ValueError when the observation size matches no layout or the action space is not
    a Box of ``max_limbs * 3`` torques; TypeError when the spaces are not Boxes.
    """
    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
        raise TypeError(
            f"expected a flat gymnasium Box observation space, got {observation_space!r}"
        )
    layout = ObsLayout.from_flat_dim(int(observation_space.shape[0]))
    if action_space is not None:
        if not isinstance(action_space, spaces.Box):
            raise TypeError(f"expected a gymnasium Box action space, got {action_space!r}")
        if tuple(action_space.shape) != (layout.action_dim,):
            raise ValueError(
                f"action space shape {tuple(action_space.shape)} does not match the observation "
                f"layout of {layout.max_limbs} limbs: expected ({layout.action_dim},)"
            )
    return layout


def check_obs(obs: Tensor, layout: ObsLayout) -> None:
    """ValueError unless ``obs`` is a batch ``(B, layout.flat_dim)``."""
    if obs.dim() != 2 or obs.shape[-1] != layout.flat_dim:
        # from_flat_dim names the problem when the size matches no layout at all
        ObsLayout.from_flat_dim(int(obs.shape[-1]))
        raise ValueError(
            f"observation batch of shape {tuple(obs.shape)} does not match this policy: "
            f"expected (batch, {layout.flat_dim}) for {layout.max_limbs} limbs"
        )


def graph_view(obs: Tensor, layout: ObsLayout) -> dict[str, Tensor]:
    """Decoded graph view of a flat batch ``(B, flat_dim)``.

    Returns ``vectors`` (B, L, 8, 3), ``scalars`` (B, L, 26), ``mask`` (B, L) bool (real limb),
    ``parents`` (B, L) long (-1 for torso/padding) and ``act_mask`` (B, L) float: 1 for limbs
    whose hinges the env actuates (real, non-torso).
    """
    check_obs(obs, layout)
    view = decode_flat(obs)
    mask = view["mask"] > 0.5
    parents = torch.round(view["parents"]).long()
    act_mask = (mask & (parents >= 0)).to(obs.dtype)
    return {
        "vectors": view["vectors"],
        "scalars": view["scalars"],
        "mask": mask,
        "parents": parents,
        "act_mask": act_mask,
    }


def hop_distances(parents: Tensor, max_hops: int) -> Tensor:
    """Tree hop distances ``(B, L, L)`` long, capped: pairs further than ``max_hops`` (or not
    connected, e.g. padding) get ``max_hops + 1``. ``parents`` (B, L) with -1 for roots.

    ``parents`` must describe a forest (every layout of ``envs`` does): a parent outside
    ``[0, L)`` makes a root. Computed from ancestor sets, found by pointer jumping in
    ceil(log2(L - 1)) gathers: d(i, j) = |anc(i)| + |anc(j)| - 2 |anc(i) & anc(j)| with
    ancestors counted inclusive of the limb itself (shared ancestors: the path to the LCA).
    """
    batch, n = parents.shape
    idx = torch.arange(n, device=parents.device).expand(batch, n)
    jump = torch.where((parents >= 0) & (parents < n), parents, idx)  # roots point to themselves
    anc = (F.one_hot(idx, n) + F.one_hot(jump, n)) > 0  # ancestors within 1 step, (B, L, L)
    for _ in range(max(n - 2, 0).bit_length()):  # within 2, 4, ... >= L - 1 steps
        anc = anc | anc.gather(1, jump.unsqueeze(-1).expand(batch, n, n))
        jump = jump.gather(1, jump)
    anc = anc.to(torch.float32)
    shared = (anc.unsqueeze(2) * anc.unsqueeze(1)).sum(-1)
    count = anc.sum(-1)
    dist = count.unsqueeze(2) + count.unsqueeze(1) - 2.0 * shared
    return dist.long().masked_fill((shared == 0) | (dist > max_hops), max_hops + 1)


def hop_onehot(parents: Tensor, max_hops: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """One-hot capped hop distances ``(max_hops + 2, L * L * B)`` in the limb-major layout of
    :func:`limb_attention` (column ``(i * L + j) * B + b``): a learned table ``(K, H)`` turns
    it into the graph bias by one matrix product (no embedding gather to differentiate)."""
    dist = hop_distances(parents, max_hops).permute(1, 2, 0).reshape(-1)
    return F.one_hot(dist, max_hops + 2).to(dtype).t()


class GraphBias(torch.nn.Module):
    """Learned additive attention bias per head from hop distances (first layer only)."""

    def __init__(self, heads: int, max_hops: int) -> None:
        super().__init__()
        self.max_hops = max_hops
        self.table = torch.nn.Embedding(max_hops + 2, heads)
        torch.nn.init.zeros_(self.table.weight)

    def forward(self, parents: Tensor) -> Tensor:
        """``parents`` (B, L) -> bias (B, heads, L, L)."""
        dist = hop_distances(parents, self.max_hops)
        onehot = F.one_hot(dist, self.max_hops + 2).to(self.table.weight.dtype)
        return (onehot @ self.table.weight).permute(0, 3, 1, 2)


def key_padding_bias(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Additive logit bias ``(L, B)`` of the limb-major layout: 0 on real limbs (``mask``
    (B, L) true), :data:`NEG_INF` on padded ones, which then get exactly 0 attention weight
    (every sample has a real torso, whose logit is finite)."""
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask.t(), zero, torch.full_like(zero, NEG_INF))


def limb_attention(q: Tensor, k: Tensor, bias: Tensor) -> Tensor:
    """Attention weights over limbs in the batch-innermost layout.

    ``q``, ``k`` (..., dh, L, B) -> weights (..., L, L', B), softmax over the keys L';
    ``bias`` broadcastable to (..., L, L', B) is added to the scaled logits (graph bias,
    :func:`key_padding_bias`). Broadcast products over a batch-innermost layout replace the
    batched 5 x 5 matrix products, which CPUs run one small GEMM at a time.
    """
    logits = (q.unsqueeze(-2) * k.unsqueeze(-3)).sum(-4)
    return torch.softmax(torch.add(bias, logits, alpha=q.shape[-3] ** -0.5), dim=-2)


def attend(weights: Tensor, values: Tensor) -> Tensor:
    """Messages ``(..., F, L, B)`` = weights (..., L, L', B) applied to values (..., F, L', B)."""
    return (weights.unsqueeze(-4) * values.unsqueeze(-3)).sum(-2)


class Slots(NamedTuple):
    """Where a :class:`LimbBatch`'s tokens sit in its (L, B) grid: what moving between the two
    needs, as plain ints. The autograd functions below keep this in their context, never the
    batch: a batch holds tokens that such a function made, so keeping it would close a
    reference cycle through the autograd graph, which Python's garbage collector cannot see,
    and leak every graph whose inputs require gradients (SB3's actor loss feeds the critic
    observations sliced out of a tensor that requires them: about 1 MB per update)."""

    shape: tuple[int, int]
    """(L, B)."""
    counts: tuple[int, ...]
    """Tokens kept per limb slot: the first counts[l] samples of slot l."""


class _Tokens(torch.autograd.Function):
    """(..., L, B) grid -> (..., N) kept tokens, slot by slot (:class:`LimbBatch`); its gradient
    is the grid of the tokens' gradient (one copy each way, where slicing would cost a zero grid
    per slot in the backward pass)."""

    @staticmethod
    def forward(ctx: Any, grid: Tensor, slots: Slots) -> Tensor:
        ctx.slots = slots
        return torch.cat([grid[..., slot, :c] for slot, c in enumerate(slots.counts)], -1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return _Grid.apply(grad, ctx.slots), None


class _Grid(torch.autograd.Function):
    """(..., N) kept tokens -> (..., L, B) grid, zero where no token was kept."""

    @staticmethod
    def forward(ctx: Any, tokens: Tensor, slots: Slots) -> Tensor:
        ctx.slots = slots
        limbs, size = slots.shape
        zeros = tokens.new_zeros(*tokens.shape[:-1], size)
        parts, start = [], 0
        for c in slots.counts:
            parts += [tokens[..., start : start + c], zeros[..., c:]]
            start += c
        return torch.cat(parts, -1).unflatten(-1, (limbs, size))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return _Tokens.apply(grad, ctx.slots), None


class LimbBatch:
    """A batch of limb graphs laid out for CPU-friendly per-limb work: (L, B) grids with the
    batch innermost, and N limb tokens as the last (column) dimension, in limb-major order.

    Per-limb operations are tiny (a few channels, 5 x 5 attention), so batched matrix products
    over limbs would run one small GEMM per limb; with the tokens as columns every linear map
    is one large GEMM and attention is broadcast products vectorised over the batch
    (:func:`limb_attention`, :func:`attend`). Samples are sorted by their number of real limbs
    (most first), so that in each limb slot l the real limbs are the first ``counts[l]``
    samples: only those N = sum(counts) tokens enter the per-limb work (padding costs nothing
    there; attention runs on the full grid with padded keys at weight 0). With masks that are
    not a prefix of the limb rows some padded tokens stay in, which is correct, only slower.

    ``view`` is a :func:`graph_view`; ``max_hops`` sizes the one-hot hop distances.
    """

    def __init__(self, view: dict[str, Tensor], max_hops: int) -> None:
        size, limbs = view["mask"].shape
        dtype = view["scalars"].dtype
        self.shape = (limbs, size)
        """(L, B)."""
        self.order = torch.argsort(view["mask"].sum(1), descending=True, stable=True)
        """(B,) the sample at each sorted position."""
        mask = view["mask"][self.order].t()  # (L, B)
        last = (mask * torch.arange(1, size + 1, device=mask.device)).amax(1)
        self.counts = [int(c) for c in last.tolist()]
        """Tokens kept per limb slot: the first counts[l] sorted samples."""
        self.slots = Slots((limbs, size), tuple(self.counts))
        """Shape and counts for moving between grid and tokens."""
        self.mask = mask.to(dtype)
        """(L, B) 1 on real limbs."""
        self.key_bias = key_padding_bias(mask.t(), dtype)
        """(L, B) 0 on real limbs, NEG_INF on padding."""
        self.hops = hop_onehot(view["parents"][self.order], max_hops, dtype)
        """(max_hops + 2, L * L * B) one-hot hop distances."""

    def tokens(self, grid: Tensor) -> Tensor:
        """(..., L, B) -> (..., N): the kept tokens, slot by slot."""
        return _Tokens.apply(grid, self.slots)

    def grid(self, tokens: Tensor) -> Tensor:
        """(..., N) -> (..., L, B), zero where no token was kept."""
        return _Grid.apply(tokens, self.slots)

    def columns(self, per_limb: Tensor) -> Tensor:
        """A view tensor (B, L, *f) in the caller's sample order -> tokens (*f, N)."""
        grid = per_limb[self.order]
        return self.tokens(grid.permute(*reversed(range(grid.dim()))))

    def rows(self, tokens: Tensor) -> Tensor:
        """Tokens (*f, N) -> (B, L, *f) in the caller's sample order, zero on dropped tokens."""
        grid = self.grid(tokens)
        return self.unsort(grid.permute(*reversed(range(grid.dim()))))

    def unsort(self, x: Tensor, dim: int = 0) -> Tensor:
        """Sorted samples along ``dim`` -> the caller's sample order."""
        return x.index_select(dim, torch.argsort(self.order))

    def graph_bias(self, table: Tensor) -> Tensor:
        """Graph bias (H, L, L, B) plus the key padding bias, from a hop table (K, H)."""
        limbs, size = self.shape
        bias = (table.t() @ self.hops).view(table.shape[1], limbs, limbs, size)
        return bias + self.key_bias

    def masked_mean(self, values: Tensor) -> Tensor:
        """Per-token values (N,) -> (B, 1): mean over each sample's real limbs."""
        grid = self.grid(values)
        mean = (grid * self.mask).sum(0) / self.mask.sum(0).clamp(min=1.0)
        return self.unsort(mean).unsqueeze(-1)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` (B, L, ...) over the limbs where ``mask`` (B, L) is true."""
    weights = mask.to(values.dtype)
    while weights.dim() < values.dim():
        weights = weights.unsqueeze(-1)
    return (values * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def split_obs_actions(inputs: Tensor, layout: ObsLayout) -> tuple[Tensor, Tensor]:
    """Split SB3's critic input ``cat([obs, actions], 1)`` into obs (B, flat) and (B, L, 3)."""
    expected = layout.flat_dim + layout.action_dim
    if inputs.dim() != 2 or inputs.shape[-1] != expected:
        raise ValueError(
            f"critic input of shape {tuple(inputs.shape)}: expected (batch, {expected}) = "
            f"observation ({layout.flat_dim}) + actions ({layout.action_dim})"
        )
    obs, actions = inputs[:, : layout.flat_dim], inputs[:, layout.flat_dim :]
    return obs, actions.reshape(-1, layout.max_limbs, ACTIONS_PER_LIMB)
