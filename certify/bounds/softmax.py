"""Softmax over one dimension, with padding masks.

Entries whose upper bound is ``-inf`` (a ``masked_fill(mask, -inf)`` or ``+ (-inf)`` by a
constant mask) are padding: their output is exactly 0 and they drop out of every sum.

Write ``y_i = 1 / s_i`` with ``s_i = 1 + sum_{j != i} exp(z_ij)``, ``z_ij = x_j - x_i`` (the
form Wei et al., "Convex Bounds on the Softmax Function", AISTATS 2023, find tighter than
exp / sum, and free of a bilinear step). IBP is exact: y_i is increasing in x_i and decreasing in
every other x_j, so ``1 / (1 + sum_j exp(u_j - l_i))`` and ``1 / (1 + sum_j exp(l_j - u_i))``.

CROWN: with z_ij in [l_j - u_i, u_j - l_i] the convex exp lies below its chord and above its
tangent parallel to the chord, so s_i is bounded by linear functions of x; 1/s is convex and
decreasing, so y_i >= tangent(s_i) at sqrt(s_min s_max) evaluated on the *upper* line of s_i and
y_i <= chord(s_i) on its *lower* line (both slopes are negative). The result is one (n x n)
matrix per softmax row for each side. Lines are built in float64 and widened by a few ulps of the
input dtype; where the exponentials overflow the row falls back to its interval bounds.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from certify.bounds.protocol import BackwardStep, Call, Interval, Op, Relaxation, full_dim, register


@register(torch.softmax, torch.nn.functional.softmax, "softmax", nn.Softmax)
class Softmax(Op):
    def __init__(self, dim: int | None) -> None:
        if dim is None:
            raise NotImplementedError("certify: softmax needs an explicit dim")
        self.dim_arg = int(dim)

    @classmethod
    def from_module(cls, m: nn.Module) -> Softmax:
        return cls(m.dim)

    @classmethod
    def from_call(cls, call: Call) -> Softmax:
        return cls(call.arg(1, "dim", None))

    def bind(self, in_shapes, out_shape) -> None:
        super().bind(in_shapes, out_shape)
        self.dim = full_dim(self.dim_arg, len(out_shape) + 1, self.label)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(x, getattr(self, "dim", self.dim_arg))

    def tighten_mask(self, lo: Tensor, hi: Tensor) -> Tensor | None:
        return hi > -torch.inf  # padding entries are exact

    # ------------------------------------------------------------------ helpers
    def _pairs(self, lo: Tensor, hi: Tensor):
        """Softmax dim last; bounds of z_ij = x_j - x_i ((..., n, n): i rows, j columns) and
        the mask of pairs that count (both real, j != i)."""
        lo, hi = lo.movedim(self.dim, -1), hi.movedim(self.dim, -1)
        real = hi > -torch.inf
        lo = torch.where(real, lo, torch.zeros_like(lo))  # finite stand-ins, masked below
        hi = torch.where(real, hi, torch.zeros_like(hi))
        n = lo.shape[-1]
        off = ~torch.eye(n, dtype=torch.bool, device=lo.device)
        pair = real.unsqueeze(-1) & real.unsqueeze(-2) & off
        zl = lo.unsqueeze(-2) - hi.unsqueeze(-1)
        zu = hi.unsqueeze(-2) - lo.unsqueeze(-1)
        return lo, hi, real, pair, zl, zu

    def ibp(self, b: Interval) -> Interval:
        _, _, real, pair, zl, zu = self._pairs(*b)
        zero = torch.zeros_like(zl)
        s_lo = 1 + torch.where(pair, torch.exp(zl), zero).sum(-1)
        s_hi = 1 + torch.where(pair, torch.exp(zu), zero).sum(-1)
        lower = torch.where(real, 1 / s_hi, torch.zeros_like(s_hi))
        upper = torch.where(real, 1 / s_lo, torch.zeros_like(s_lo))
        return lower.movedim(-1, self.dim), upper.movedim(-1, self.dim)

    def relaxation(self, b: Interval) -> Relaxation:
        dtype = b[0].dtype
        lo, hi, real, pair, zl, zu = self._pairs(b[0].double(), b[1].double())
        zero = torch.zeros_like(zl)
        w = zu - zl
        pos_w = w > 0
        ws = torch.where(pos_w, w, torch.ones_like(w))
        ratio = torch.where(pos_w, torch.expm1(ws) / ws, torch.ones_like(w))  # chord / e^zl
        e_lo = torch.exp(zl)
        k = torch.where(pair, e_lo * ratio, zero)  # chord slope
        c = torch.where(pair, e_lo - k * zl, zero)  # chord intercept
        t = zl + torch.log(ratio)  # tangent point, parallel to the chord
        e_t = torch.where(pair, torch.exp(t), zero)
        d_t = torch.where(pair, e_t * (1 - t), zero)
        s_lo = 1 + torch.where(pair, e_lo, zero).sum(-1)
        s_hi = 1 + torch.where(pair, torch.exp(zu), zero).sum(-1)
        tau = torch.sqrt(s_lo * s_hi)
        p, q = -1 / (tau * tau), 2 / tau  # tangent of 1/s: below
        p2, q2 = -1 / (s_lo * s_hi), 1 / s_lo + 1 / s_hi  # chord of 1/s: above
        # lower line of y_i: p_i (1 + sum_j k_ij (x_j - x_i) + c_ij) + q_i
        low_m = p.unsqueeze(-1) * k
        low_b = p * (1 + c.sum(-1)) + q
        up_m = p2.unsqueeze(-1) * e_t
        up_b = p2 * (1 + d_t.sum(-1)) + q2
        low_m = low_m - torch.diag_embed(low_m.sum(-1))
        up_m = up_m - torch.diag_embed(up_m.sum(-1))
        # rounding margin (input dtype) and the fallback to interval bounds
        reach = torch.maximum(lo.abs(), hi.abs()).unsqueeze(-2)
        eps = 64 * torch.finfo(dtype).eps
        low_b = low_b - eps * (1 + (low_m.abs() * reach).sum(-1) + low_b.abs())
        up_b = up_b + eps * (1 + (up_m.abs() * reach).sum(-1) + up_b.abs())
        ok = (
            torch.isfinite(low_m).all(-1)
            & torch.isfinite(up_m).all(-1)
            & torch.isfinite(low_b)
            & torch.isfinite(up_b)
            & real
        )
        okm = ok.unsqueeze(-1)
        low_m, up_m = torch.where(okm, low_m, 0.0), torch.where(okm, up_m, 0.0)
        box_lo = torch.where(real, 1 / s_hi, 0.0)
        box_hi = torch.where(real, 1 / s_lo, 0.0)
        low_b, up_b = torch.where(ok, low_b, box_lo), torch.where(ok, up_b, box_hi)
        return tuple(t.to(dtype) for t in (low_m, low_b, up_m, up_b))

    def backward(self, A: Tensor, rel: Relaxation) -> BackwardStep:
        low_m, low_b, up_m, up_b = rel
        B, R = A.shape[:2]
        Am = A.movedim(self.dim + 1, -1)
        moved = Am.shape
        n = moved[-1]
        Am = Am.reshape(B, R, -1, n)
        pos, neg = Am.clamp(min=0), Am.clamp(max=0)
        lm, um = low_m.reshape(B, -1, n, n), up_m.reshape(B, -1, n, n)
        coef = torch.einsum("brmi,bmij->brmj", pos, lm) + torch.einsum("brmi,bmij->brmj", neg, um)
        bias = (pos * low_b.reshape(B, 1, -1, n)).sum((2, 3)) + (
            neg * up_b.reshape(B, 1, -1, n)
        ).sum((2, 3))
        coef = coef.reshape(moved).movedim(-1, self.dim + 1)
        return [coef], bias
