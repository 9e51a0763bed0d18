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

from certify.bounds.activations import LeakyReLU, ReLU
from certify.bounds.inputs import InputSet, concretize_lower
from certify.bounds.ops import Affine, Interval


@dataclass
class SymState:
    """``z = J [x; xi] + c + [e_lo, e_hi]``; ``J`` is None for the identity (z = x)."""

    J: Tensor | None
    c: Tensor
    e_lo: Tensor
    e_hi: Tensor
    d: int


def start(inp: InputSet) -> SymState:
    zero = torch.zeros_like(inp.lo)
    return SymState(None, zero, zero, zero, inp.lo.shape[1])


def affine(s: SymState, op: Affine) -> SymState:
    W = op.weight
    J = W if s.J is None else W @ s.J
    mid, rad = (s.e_hi + s.e_lo) / 2, (s.e_hi - s.e_lo) / 2
    mid, rad = mid @ W.T, rad @ W.abs().T
    return SymState(J, s.c @ W.T + op.bias_or_zero, mid - rad, mid + rad, s.d)


def activation(s: SymState, op, relax: tuple, bounds: Interval) -> SymState:
    """f(z) = lam z + g(z), lam = upper slope >= 0, g in [g_lo, g_hi] on [l, u]."""
    ls, lb, us, ub = relax
    lam = us
    J = lam.unsqueeze(-1) * (s.J if s.J is not None else _eye(s.c))
    if isinstance(op, (ReLU, LeakyReLU)):
        # lam in [a, 1], so lam z is a valid lower line through the origin: g in [0, ub]
        G = _noise_columns(ub / 2)
        return SymState(torch.cat([J, G], -1), lam * s.c + ub / 2, lam * s.e_lo, lam * s.e_hi, s.d)
    lo, hi = bounds
    lb = torch.zeros_like(lam) if lb is None else lb
    g_lo = torch.minimum((ls - lam) * lo, (ls - lam) * hi) + lb
    return SymState(J, lam * s.c, lam * s.e_lo + g_lo, lam * s.e_hi + ub, s.d)


def _noise_columns(half: Tensor) -> Tensor:
    """(B, n, U) with column u = half-width of the u-th neuron having half > 0 (padded)."""
    mask = half > 0
    counts = mask.sum(1)
    U = int(counts.max()) if counts.numel() else 0
    idx = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :U]
    valid = torch.arange(U, device=half.device) < counts.unsqueeze(1)
    val = torch.where(valid, half.gather(1, idx), torch.zeros_like(idx, dtype=half.dtype))
    G = half.new_zeros(half.shape[0], half.shape[1], U)
    return G.scatter_(1, idx.unsqueeze(1), val.unsqueeze(1))


def _eye(c: Tensor) -> Tensor:
    return torch.eye(c.shape[1], dtype=c.dtype, device=c.device)


def bounds(s: SymState, inp: InputSet) -> Interval:
    """Concrete (B, n) bounds of the symbolic state over the input set and xi in [-1, 1]^K."""
    J = s.J if s.J is not None else _eye(s.c)
    if J.dim() == 2:
        J = J.unsqueeze(0)
    Jx, Jg = J[..., : s.d], J[..., s.d :]
    noise = Jg.abs().sum(-1)
    if inp.is_box:
        xc, xr = (inp.hi + inp.lo) / 2, (inp.hi - inp.lo) / 2
        mid = (Jx @ xc.unsqueeze(-1)).squeeze(-1) + s.c
        rad = (Jx.abs() @ xr.unsqueeze(-1)).squeeze(-1) + noise
        return mid - rad + s.e_lo, mid + rad + s.e_hi
    lower = concretize_lower(Jx, s.c + s.e_lo, inp, lambda t: t.unsqueeze(1)) - noise
    upper = -concretize_lower(-Jx, -(s.c + s.e_hi), inp, lambda t: t.unsqueeze(1)) + noise
    return lower, upper
