"""Fixed-structure forms of the policy networks, for bound propagation (:mod:`certify`).

The limb-graph nets decode the structure of every sample (which limbs are real, their parents)
from the flat observation and lay the batch out by it (:class:`~saferl.policies.graph.LimbBatch`:
samples sorted by limb count, padding left out, hand-written autograd functions), which
``torch.fx`` cannot trace. The structure is read by thresholds (mask > 0.5, rounded parents),
so over an input set that does not cross them it is constant, and the net is an ordinary
function of the observation. Each net implements certify's structure protocol
(:mod:`certify.bounds.structured`): the rows of the input box are grouped by their decoded
structure, and per group a plain module (below) computes what the net computes for that
structure, on the same (B, flat_dim) observations (actors and state values; critics on
[obs, actions], (B, flat_dim + action_dim)):

* only the real limbs are tokens, tokens are (B, n, ...) rows;
* attention over the real limbs only (the nets give padded keys exactly zero weight), the
  first layer's hop-distance bias a constant;
* the act mask (torso and padding rows) a constant factor; mask and parent entries of the
  observation enter nowhere else, so they are inputs the bounds do not depend on.

The modules share the nets' parameters (no copies) and are kept per structure on the net, so
the engine's traced graph is reused (it retraces when a weight changes). Tests hold them equal to
the nets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from envs.layout import ACTIONS_PER_LIMB, NUM_VECTORS, ObsLayout, decode_flat
from saferl.policies.graph import hop_distances

GroupList = list[tuple[Tensor, nn.Module]]


@dataclass(frozen=True)
class Structure:
    """The decoded structure of one group of samples: ``real`` (n,) indices of the real limbs,
    ``act`` (n,) 1 on actuated real limbs (not the torso), ``hops`` (n, n) capped hop
    distances between real limbs (``max_hops`` + 1 beyond)."""

    layout: ObsLayout
    real: Tensor
    act: Tensor
    parents: Tensor

    @property
    def n(self) -> int:
        return int(self.real.numel())

    @property
    def key(self) -> tuple:
        """Hashable identity of the structure (its real limbs and parents)."""
        return (self.layout.max_limbs, tuple(self.real.tolist()), tuple(self.parents.tolist()))

    def hops(self, max_hops: int) -> Tensor:
        dist = hop_distances(self.parents.unsqueeze(0), max_hops)[0]
        return dist[self.real][:, self.real]

    def placement(self, dtype: torch.dtype) -> Tensor:
        """(n, L) matrix putting real limb rows into the padded layout, act mask folded in."""
        P = torch.zeros(self.n, self.layout.max_limbs, dtype=dtype, device=self.real.device)
        P[torch.arange(self.n, device=self.real.device), self.real] = self.act.to(dtype)
        return P


def decode_structure(lo: Tensor, hi: Tensor, layout: ObsLayout) -> tuple[Tensor, Tensor]:
    """Mask (B, L) bool and parents (B, L) long of every row of the box ``[lo, hi]``
    (B, >= flat_dim), constant over the box.

    Raises ValueError where the box crosses a decoding threshold (mask 0.5, parents at
    half-integers): the structure would change inside it. Perturb the structural entries by
    less than 0.5, or by 0 (a per-feature eps).
    """
    if lo.dim() != 2 or lo.shape[1] < layout.flat_dim:
        raise ValueError(
            f"expected a box of shape (B, >= {layout.flat_dim}), got {tuple(lo.shape)}"
        )
    low = decode_flat(lo[:, : layout.flat_dim])
    high = decode_flat(hi[:, : layout.flat_dim])
    mask, mask_hi = low["mask"] > 0.5, high["mask"] > 0.5
    parents, parents_hi = torch.round(low["parents"]), torch.round(high["parents"])
    if not (torch.equal(mask, mask_hi) and torch.equal(parents, parents_hi)):
        raise ValueError(
            "the input set changes the limb structure: its mask or parent entries cross a "
            "decoding threshold (mask 0.5, parents rounded), so no single network is bounded; "
            "perturb the structural entries by less than 0.5 (or not at all: per-feature eps)"
        )
    if not bool(mask.any(1).all()):
        raise ValueError("every observation needs at least one real limb (mask > 0.5)")
    return mask, parents.long()


def structures(lo: Tensor, hi: Tensor, layout: ObsLayout) -> list[tuple[Tensor, Structure]]:
    """Rows of the box grouped by their decoded structure."""
    mask, parents = decode_structure(lo, hi, layout)
    codes = torch.cat([mask.long(), parents], 1)
    unique, inverse = torch.unique(codes, dim=0, return_inverse=True)
    out = []
    L = layout.max_limbs
    for g in range(unique.shape[0]):
        rows = (inverse == g).nonzero().squeeze(1)
        m, p = unique[g, :L].bool(), unique[g, L:]
        real = m.nonzero().squeeze(1)
        act = (p[real] >= 0).to(lo.dtype)
        out.append((rows, Structure(layout, real, act, p)))
    return out


# ---------------------------------------------------------------------------- decoding


class _Decode(nn.Module):
    """Reads the real limbs of a flat observation: vectors (B, n, 8, 3), scalars (B, n, 26)."""

    def __init__(self, s: Structure) -> None:
        super().__init__()
        self.L = s.layout.max_limbs
        self.bounds = s.layout.bounds()
        self.register_buffer("real", s.real.clone(), persistent=False)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        v0, v1, s1 = self.bounds[:3]
        vectors = obs[:, v0:v1].reshape(-1, self.L, NUM_VECTORS, 3)[:, self.real]
        scalars = obs[:, v1:s1].reshape(-1, self.L, (s1 - v1) // self.L)[:, self.real]
        return vectors, scalars


def attention(q: Tensor, k: Tensor, heads: int, bias: Tensor | None) -> Tensor:
    """Softmax attention weights (B, H, n, n') of rows q, k (B, n, H * dh) (scaled dot
    product, plus a constant bias (H, n, n') when given)."""
    n, d = q.shape[1], q.shape[2]
    q = q.reshape(-1, n, heads, d // heads)
    k = k.reshape(-1, n, heads, d // heads)
    logits = torch.einsum("bihe,bjhe->bhij", q, k) * (d // heads) ** -0.5
    if bias is not None:
        logits = logits + bias
    return torch.softmax(logits, dim=-1)


def attend(weights: Tensor, v: Tensor, heads: int) -> Tensor:
    """Messages (B, n, H * dh) of weights (B, H, n, n') on values (B, n', H * dh)."""
    n, d = v.shape[1], v.shape[2]
    v = v.reshape(-1, n, heads, d // heads)
    return torch.einsum("bhij,bjhe->bihe", weights, v).reshape(-1, n, d)


def hop_bias(table: Tensor, hops: Tensor) -> Tensor:
    """Constant graph bias (H, n, n) from a hop table (K, H) and distances (n, n)."""
    return table[hops].permute(2, 0, 1)


# ---------------------------------------------------------------------------- SET


def gram_linear(linear: nn.Linear, zc: Tensor, x: Tensor, x_first: bool) -> Tensor:
    """``linear`` of ``[x, gram_invariants(zc)]`` (``[gram, x]`` unless ``x_first``) for
    ``zc = [Z, g, d]`` (B, n, 3, k) and x (B, n, e) -> (B, n, out).

    The same function as :func:`~saferl.policies.set.gram_invariants` then ``linear``, in a
    form with fewer intermediate values to bound: the normalisation is one number per limb, so
    W (G / s) = (W G) / s; and ||G||_F = ||Z^T Z||_F = ||Z Z^T||_F, a 3 x 3 matrix instead of
    k x k. Equal up to float rounding."""
    n, k, e = zc.shape[1], zc.shape[3], x.shape[2]
    w = linear.weight
    w_x, w_g = (w[:, :e], w[:, e:]) if x_first else (w[:, k * k :], w[:, : k * k])
    w_x, w_g = w_x.contiguous(), w_g.contiguous()  # column slices: GEMM kernels want dense rows
    g = torch.einsum("bnci,bncj->bnij", zc, zc).reshape(-1, n, k * k)
    small = torch.einsum("bnci,bndi->bncd", zc, zc).reshape(-1, n, 9)
    scale = torch.linalg.vector_norm(small, dim=-1, keepdim=True) + 1.0
    return F.linear(x, w_x, linear.bias) + F.linear(g, w_g) / scale


class FixedSETBackbone(nn.Module):
    """:class:`~saferl.policies.set.SETBackbone` for one structure: vectors (B, n, 8, 3),
    scalars (B, n, S) -> h (B, n, d), zc = [z, g, d] (B, n, 3, m + 2)."""

    def __init__(self, backbone: nn.Module, s: Structure) -> None:
        super().__init__()
        from saferl.policies.set import GRAVITY, TARGET

        self.net = backbone
        self.gd = [GRAVITY, TARGET]
        self.register_buffer("hops", s.hops(backbone.cfg.max_hops), persistent=False)

    def forward(self, vectors: Tensor, scalars: Tensor) -> tuple[Tensor, Tensor]:
        net = self.net
        gd = vectors[:, :, self.gd].transpose(-1, -2)  # (B, n, 3, 2)
        z = torch.einsum("bnvc,vm->bncm", vectors, net.embed_vec.weight)
        first, act, second = net.embed
        h = second(act(gram_linear(first, torch.cat([z, gd], -1), scalars, x_first=False)))
        for layer in net.layers:
            h, z = self.layer(layer, h, z, gd)
        return h, torch.cat([z, gd], -1)

    def layer(self, layer: nn.Module, h: Tensor, z: Tensor, gd: Tensor) -> tuple[Tensor, Tensor]:
        """:class:`~saferl.policies.set.SETLayer` on (B, n, ...) rows."""
        n, d, H = h.shape[1], h.shape[2], layer.heads
        bias = None if layer.bias is None else hop_bias(layer.bias.table.weight, self.hops)
        zc = torch.cat([z, gd], -1)
        qkv = gram_linear(layer.qkv, zc, layer.norm_attn(h), x_first=True)
        weights = attention(qkv[..., :d], qkv[..., d : 2 * d], H, bias)
        msg = attend(weights, qkv[..., 2 * d :], H)
        zv = torch.einsum("bnci,io->bnco", zc, layer.vec_value.weight)
        zv = zv.reshape(-1, n, 3, H, layer.m)
        msg_vec = torch.einsum("bhij,bjchm->bichm", weights, zv).reshape(-1, n, 3, H * layer.m)
        h = h + layer.out(msg)
        z = z + torch.einsum("bnco,om->bncm", msg_vec, layer.vec_out.weight)
        zc = torch.cat([z, gd], -1)
        linear, act = layer.ff
        hidden = act(gram_linear(linear, zc, layer.norm_ff(h), x_first=True))
        h = h + layer.ff_scalar(hidden)
        coeff = layer.ff_coeff(hidden).reshape(-1, n, layer.m + 2, layer.m)
        return h, z + torch.einsum("bnci,bnij->bncj", zc, coeff)


class FixedSETActor(nn.Module):
    """:class:`~saferl.policies.set.SETActor` for one structure: obs (B, flat) -> (B, L*3)."""

    def __init__(self, actor: nn.Module, s: Structure) -> None:
        super().__init__()
        from saferl.policies.set import AXES

        self.decode = _Decode(s)
        self.backbone = FixedSETBackbone(actor.backbone, s)
        self.norm, self.coeff = actor.norm, actor.coeff
        self.axes = list(range(NUM_VECTORS))[AXES]
        self.L = s.layout.max_limbs
        self.register_buffer("place", s.placement(actor.coeff.weight.dtype), persistent=False)

    def forward(self, obs: Tensor) -> Tensor:
        vectors, scalars = self.decode(obs)
        h, zc = self.backbone(vectors, scalars)
        u = torch.einsum("bnci,bni->bnc", zc, self.coeff(self.norm(h)))
        pre = torch.einsum("bnac,bnc->bna", vectors[:, :, self.axes], u)
        out = torch.einsum("bna,nl->bla", pre, self.place)
        return torch.tanh(out.reshape(-1, self.L * ACTIONS_PER_LIMB))


class _Actions(nn.Module):
    """The action part of a critic input (B, flat + L*3) -> real limbs' actions (B, n, 3),
    zero on unactuated ones."""

    def __init__(self, s: Structure) -> None:
        super().__init__()
        self.flat, self.L = s.layout.flat_dim, s.layout.max_limbs
        self.register_buffer("real", s.real.clone(), persistent=False)
        self.register_buffer("act", s.act.unsqueeze(-1).clone(), persistent=False)

    def forward(self, z: Tensor) -> Tensor:
        actions = z[:, self.flat :].reshape(-1, self.L, ACTIONS_PER_LIMB)[:, self.real]
        return actions * self.act


class FixedSETCritic(nn.Module):
    """:class:`~saferl.policies.set.SETCritic` for one structure on the concatenation
    [obs, actions] (B, flat + L*3) -> Q (B, 1)."""

    def __init__(self, critic: nn.Module, s: Structure) -> None:
        super().__init__()
        self.decode, self.actions = _Decode(s), _Actions(s)
        self.backbone = FixedSETBackbone(critic.backbone, s)
        self.head = critic.head

    def forward(self, z: Tensor) -> Tensor:
        vectors, scalars = self.decode(z)
        scalars = torch.cat([scalars, self.actions(z)], -1)
        h, _ = self.backbone(vectors, scalars)
        return self.head(h).mean(1)


class FixedSETValue(nn.Module):
    """:class:`~saferl.policies.value.SETValue` for one structure: obs (B, flat) -> V (B, 1)."""

    def __init__(self, value: nn.Module, s: Structure) -> None:
        super().__init__()
        self.decode = _Decode(s)
        self.backbone = FixedSETBackbone(value.backbone, s)
        self.head = value.head

    def forward(self, obs: Tensor) -> Tensor:
        h, _ = self.backbone(*self.decode(obs))
        return self.head(h).mean(1)


# ---------------------------------------------------------------------------- transformer


class FixedTransformerBackbone(nn.Module):
    """:class:`~saferl.policies.transformer.TransformerBackbone` for one structure: tokens
    (B, n, in) -> h (B, n, width)."""

    def __init__(self, backbone: nn.Module, s: Structure) -> None:
        super().__init__()
        self.net = backbone
        self.register_buffer("hops", s.hops(backbone.cfg.max_hops), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.net.embed(x)
        for layer in self.net.layers:
            bias = None if layer.bias is None else hop_bias(layer.bias.table.weight, self.hops)
            d = h.shape[2]
            qkv = layer.qkv(layer.norm_attn(h))
            weights = attention(qkv[..., :d], qkv[..., d : 2 * d], layer.heads, bias)
            h = h + layer.out(attend(weights, qkv[..., 2 * d :], layer.heads))
            h = h + layer.ff(h)
        return self.net.norm(h)


def _tokens(vectors: Tensor, scalars: Tensor) -> Tensor:
    n = vectors.shape[1]
    return torch.cat([vectors.reshape(-1, n, NUM_VECTORS * 3), scalars], -1)


class FixedTransformerActor(nn.Module):
    """:class:`~saferl.policies.transformer.TransformerActor` for one structure."""

    def __init__(self, actor: nn.Module, s: Structure) -> None:
        super().__init__()
        self.decode = _Decode(s)
        self.backbone = FixedTransformerBackbone(actor.backbone, s)
        self.head = actor.head
        self.L = s.layout.max_limbs
        self.register_buffer("place", s.placement(actor.head.weight.dtype), persistent=False)

    def forward(self, obs: Tensor) -> Tensor:
        h = self.backbone(_tokens(*self.decode(obs)))
        out = torch.einsum("bna,nl->bla", self.head(h), self.place)
        return torch.tanh(out.reshape(-1, self.L * ACTIONS_PER_LIMB))


class FixedTransformerCritic(nn.Module):
    """:class:`~saferl.policies.transformer.TransformerCritic` for one structure on
    [obs, actions] (B, flat + L*3) -> Q (B, 1)."""

    def __init__(self, critic: nn.Module, s: Structure) -> None:
        super().__init__()
        self.decode, self.actions = _Decode(s), _Actions(s)
        self.backbone = FixedTransformerBackbone(critic.backbone, s)
        self.head = critic.head

    def forward(self, z: Tensor) -> Tensor:
        vectors, scalars = self.decode(z)
        h = self.backbone(torch.cat([_tokens(vectors, scalars), self.actions(z)], -1))
        return self.head(h).mean(1)


class FixedTransformerValue(nn.Module):
    """:class:`~saferl.policies.value.TransformerValue` for one structure: obs -> V (B, 1)."""

    def __init__(self, value: nn.Module, s: Structure) -> None:
        super().__init__()
        self.decode = _Decode(s)
        self.backbone = FixedTransformerBackbone(value.backbone, s)
        self.head = value.head

    def forward(self, obs: Tensor) -> Tensor:
        return self.head(self.backbone(_tokens(*self.decode(obs)))).mean(1)


# ---------------------------------------------------------------------------- MLP


class FixedMLPActor(nn.Module):
    """:class:`~saferl.policies.mlp.MLPActor` for one structure (the act mask a constant)."""

    def __init__(self, actor: nn.Module, s: Structure) -> None:
        super().__init__()
        self.net = actor.net
        act = s.placement(actor.net[0].weight.dtype).sum(0)  # (L,)
        self.register_buffer("act", act.repeat_interleave(ACTIONS_PER_LIMB), persistent=False)

    def forward(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.net(obs) * self.act)


class FixedMLPCritic(nn.Module):
    """:class:`~saferl.policies.mlp.MLPCritic` on [obs, actions], and
    :class:`~saferl.policies.value.MLPValue` on obs (no structure at all)."""

    def __init__(self, critic: nn.Module, s: Structure) -> None:
        super().__init__()
        self.net = critic.net

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


# ---------------------------------------------------------------------------- the protocol


def _fixed_class(net: nn.Module) -> type[nn.Module]:
    from saferl.policies.mlp import MLPActor, MLPCritic
    from saferl.policies.set import SETActor, SETCritic
    from saferl.policies.transformer import TransformerActor, TransformerCritic
    from saferl.policies.value import MLPValue, SETValue, TransformerValue

    table = {
        SETActor: FixedSETActor,
        SETCritic: FixedSETCritic,
        TransformerActor: FixedTransformerActor,
        TransformerCritic: FixedTransformerCritic,
        MLPActor: FixedMLPActor,
        MLPCritic: FixedMLPCritic,
        SETValue: FixedSETValue,
        TransformerValue: FixedTransformerValue,
        MLPValue: FixedMLPCritic,
    }
    for cls, fixed in table.items():
        if isinstance(net, cls):
            return fixed
    raise TypeError(f"no fixed-structure form of {type(net).__name__}")


class FixedStructure:
    """Mixin: certify's structure protocol (:mod:`certify.bounds.structured`) for a policy
    net; ``compute_bounds(net, ...)`` then bounds its fixed-structure forms. Critics are
    bounded over the concatenation [obs, actions] (B, flat + L*3)."""

    def certify_structure(self, lo: Tensor, hi: Tensor) -> GroupList:
        return fixed_groups(self, lo, hi)  # type: ignore[arg-type]


def fixed_groups(net: nn.Module, lo: Tensor, hi: Tensor) -> GroupList:
    """certify's structure protocol for a policy net (actor: input obs (B, flat); critic:
    [obs, actions] (B, flat + L*3)): rows grouped by structure, one fixed module each."""
    layout: ObsLayout = net.layout
    is_critic = "Critic" in type(net).__name__  # [obs, actions]; actors and values: obs
    width = layout.flat_dim + (layout.action_dim if is_critic else 0)
    if lo.dim() != 2 or lo.shape[1] != width:
        what = "[obs, actions]" if is_critic else "observations"
        raise ValueError(
            f"{type(net).__name__} bounds {what} of shape (B, {width}), got {tuple(lo.shape)}"
        )
    return [(rows, _form(net, s)) for rows, s in structures(lo, hi, layout)]


_FORMS = "_certify_forms"
_MAX_FORMS = 64


def _form(net: nn.Module, s: Structure) -> nn.Module:
    """The fixed-structure module of ``net`` for ``s``, kept on the net (a plain dict, not a
    submodule: state dicts are unchanged) so that the bound engine's traced graph is reused;
    the engine retraces when a weight changes. Keyed by dtype and device too (``net.to``)."""
    cache: dict = net.__dict__.setdefault(_FORMS, {})
    p = next(net.parameters())
    key = (s.key, p.dtype, p.device)
    if key not in cache:
        if len(cache) >= _MAX_FORMS:
            cache.pop(next(iter(cache)))
        cache[key] = _fixed_class(net)(net, s)
    return cache[key]
