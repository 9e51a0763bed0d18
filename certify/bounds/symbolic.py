"""Symbolic (zonotope) reference bounds for CROWN's intermediate layers.

Forward propagation of ``z = J [x; xi] + c + e``: a linear map J (B, n, D + K) of the input x and
of K noise symbols xi in [-1, 1], plus an interval error ``e = [e_lo, e_hi]`` (cf. DeepZ, Singh et
al., NeurIPS 2018; symbolic intervals, Wang et al., USENIX Security 2018). Through an activation
with input bounds [l, u] we write ``f(z) = lam z + g(z)`` with lam the upper relaxation slope: for
ReLU-like activations g in [0, ub] becomes a fresh noise symbol per unstable neuron (so errors keep
their correlations through later layers); for curved ones g is bounded on [l, u] from the
relaxation lines and kept as an interval. Stable neurons are exact. The result is a cheap,
sound, much tighter-than-IBP screen for unstable neurons; CROWN then only needs backward rows
for those.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from certify.bounds import gemm
from certify.bounds.inputs import InputSet, concretize_lower

Interval = tuple[Tensor, Tensor]


@dataclass
class SymState:
    """``z = [x; xi]^T Jt + c + [e_lo, e_hi]``; ``Jt`` (B, D + K, n) is stored transposed so
    that an affine layer is one shared-weight matrix product; None means the identity (z = x).

    ``fresh``: the noise symbols the last activation introduced, one per neuron, whose rows
    of ``Jt`` are one-hot and therefore not stored: ``(idx, val)`` (B, U), row u equal to
    ``val[u]`` (>= 0; 0 in padding) at neuron ``idx[u]``. The next affine layer maps them by
    gathering rows of its weight instead of a matrix product."""

    Jt: Tensor | None
    c: Tensor
    e_lo: Tensor
    e_hi: Tensor
    d: int
    fresh: tuple[Tensor, Tensor] | None = None


def start(inp: InputSet) -> SymState:
    zero = torch.zeros_like(inp.lo)
    return SymState(None, zero, zero, zero, inp.lo.shape[1])


def affine(s: SymState, op) -> SymState:
    """Through ``op`` (weight (m, n), bias_or_zero (m,)): a linear layer on flat vectors."""
    W = op.weight
    Jt = W.T if s.Jt is None else gemm.linear(s.Jt, W)
    if s.fresh is not None:  # one-hot rows: rows of W^T, scaled
        idx, val = s.fresh
        Jt = torch.cat([Jt, W.T[idx] * val.unsqueeze(-1)], 1)
    mid, rad = (s.e_hi + s.e_lo) / 2, (s.e_hi - s.e_lo) / 2
    mid, rad = gemm.linear(mid, W), gemm.linear(rad, W.abs())
    return SymState(Jt, gemm.linear(s.c, W, op.bias_or_zero), mid - rad, mid + rad, s.d)


def activation(s: SymState, op, relax: tuple, bounds: Interval) -> SymState:
    """f(z) = lam z + g(z), lam = upper slope >= 0, g in [g_lo, g_hi] on [l, u]."""
    ls, lb, us, ub = relax
    lam = us
    s = _materialised(s)
    J_in = s.Jt if s.Jt is not None else _eye(s.c)
    Jt = lam.unsqueeze(1) * J_in
    if op.piecewise_linear:
        # lam in [a, 1], so lam z is a valid lower line through the origin: g in [0, ub]
        fresh = _fresh_noise(ub / 2)
        return SymState(Jt, lam * s.c + ub / 2, lam * s.e_lo, lam * s.e_hi, s.d, fresh)
    lo, hi = bounds
    lb = torch.zeros_like(lam) if lb is None else lb
    g_lo = torch.minimum((ls - lam) * lo, (ls - lam) * hi) + lb
    return SymState(Jt, lam * s.c, lam * s.e_lo + g_lo, lam * s.e_hi + ub, s.d)


def _fresh_noise(half: Tensor) -> tuple[Tensor, Tensor]:
    """One noise symbol per neuron with ``half > 0``: its index and half-width (B, U), the
    rows padded to the batch maximum U (padding: value 0)."""
    mask = half > 0
    counts = mask.sum(1)
    U = int(counts.max()) if counts.numel() else 0
    idx = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :U]
    valid = torch.arange(U, device=half.device) < counts.unsqueeze(1)
    return idx, half.gather(1, idx) * valid


def _materialised(s: SymState) -> SymState:
    """``s`` with its fresh noise rows stored in ``Jt``."""
    if s.fresh is None:
        return s
    idx, val = s.fresh
    B, n = s.c.shape
    G = val.new_zeros(B, idx.shape[1], n).scatter(2, idx.unsqueeze(2), val.unsqueeze(2))
    J = s.Jt if s.Jt is not None else _eye(s.c).expand(B, n, n)
    return SymState(torch.cat([J, G], 1), s.c, s.e_lo, s.e_hi, s.d)


def _eye(c: Tensor) -> Tensor:
    return torch.eye(c.shape[1], dtype=c.dtype, device=c.device)


def bounds(s: SymState, inp: InputSet) -> Interval:
    """Concrete (B, n) bounds of the symbolic state over the input set and xi in [-1, 1]^K."""
    Jt = s.Jt if s.Jt is not None else _eye(s.c)
    if Jt.dim() == 2:
        Jt = Jt.unsqueeze(0)
    Jx, Jg = Jt[:, : s.d], Jt[:, s.d :]
    noise = Jg.abs().sum(1)
    if s.fresh is not None:  # one-hot rows: |val| at their neuron
        idx, val = s.fresh
        noise = noise + torch.zeros_like(s.c).scatter_add(1, idx, val)
    if inp.is_box:
        xc, xr = (inp.hi + inp.lo) / 2, (inp.hi - inp.lo) / 2
        mid = (xc.unsqueeze(1) @ Jx).squeeze(1) + s.c
        rad = (xr.unsqueeze(1) @ Jx.abs()).squeeze(1) + noise
        return mid - rad + s.e_lo, mid + rad + s.e_hi
    J = Jx.transpose(1, 2)
    lower = concretize_lower(J, s.c + s.e_lo, inp, lambda t: t.unsqueeze(1)) - noise
    upper = -concretize_lower(-J, -(s.c + s.e_hi), inp, lambda t: t.unsqueeze(1)) + noise
    return lower, upper
