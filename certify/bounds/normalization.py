"""LayerNorm over the last dimension, with its affine part.

``y = c * rho * gamma + beta`` with the centred value ``c = x - mean(x)`` (linear in x), the
variance ``v = mean(c^2) + eps`` and ``rho = 1 / sqrt(v)``.

IBP bounds each factor separately: c exactly per coordinate, v from the squared centred
intervals intersected with the bounds of ``||c||_2`` given by the box's centre and radius
(``_norm_bounds``: a triangle inequality that keeps the variance away from 0 where the box is
narrow beside the spread of its centre), rho from v (decreasing), then the product of
intervals.

CROWN composes the relaxations of the pieces inside one backward step: McCormick planes for
``c * rho`` give coefficients on c and on rho; rho's coefficient passes through the convex,
decreasing ``1/sqrt`` (tangent below, chord above) to v, then through the mean to ``c^2`` and
through the convex square (tangent below, chord above) to c again; the coefficients on c finally
pass through the centring. The bounds of the intermediate quantities (c, c^2, v, rho) come from
the input bounds by interval arithmetic, as in IBP. This is sound but can be loose where the
variance may approach 0 (rho up to 1/sqrt(eps)); the engine intersects every CROWN bound with
the interval one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from certify.bounds.activations import Rsqrt, Square, elementwise_backward
from certify.bounds.protocol import BackwardStep, Call, Interval, Op, Relaxation, register


@register(nn.LayerNorm, torch.nn.functional.layer_norm)
class LayerNormOp(Op):
    def __init__(
        self, n: int, weight: Tensor | None, bias: Tensor | None, eps: float, name="layernorm"
    ) -> None:
        self.n = n
        self.weight = weight
        self.bias = bias
        self.eps = float(eps)
        self.name = name
        self._square, self._rsqrt = Square(), Rsqrt()

    @classmethod
    def from_module(cls, m: nn.Module) -> LayerNormOp:
        if len(m.normalized_shape) != 1:
            raise NotImplementedError("LayerNorm bounds support one normalised (last) dimension")
        return cls(m.normalized_shape[0], m.weight, m.bias, m.eps)

    @classmethod
    def from_call(cls, call: Call) -> LayerNormOp:
        shape = call.arg(1, "normalized_shape")
        if len(shape) != 1:
            raise call.fail("bounds support one normalised (last) dimension")
        weight, bias = call.arg(2, "weight", None), call.arg(3, "bias", None)
        return cls(shape[0], weight, bias, call.arg(4, "eps", 1e-5))

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.layer_norm(x, (self.n,), self.weight, self.bias, self.eps)

    def _centred(self, lo: Tensor, hi: Tensor) -> Interval:
        """Exact bounds of x_i - mean(x) = (1 - 1/n) x_i - (1/n) sum_{j != i} x_j."""
        n = self.n
        s_lo, s_hi = lo.sum(-1, keepdim=True), hi.sum(-1, keepdim=True)
        c_lo = (1 - 1 / n) * lo - (s_hi - hi) / n
        c_hi = (1 - 1 / n) * hi - (s_lo - lo) / n
        return c_lo, c_hi

    def _pieces(self, b: Interval):
        c_lo, c_hi = self._centred(*b)
        sq_lo, sq_hi = self._square.ibp((c_lo, c_hi))
        v_lo = sq_lo.mean(-1, keepdim=True) + self.eps
        v_hi = sq_hi.mean(-1, keepdim=True) + self.eps
        n_lo, n_hi = self._norm_bounds(*b)
        v_lo = torch.maximum(v_lo, n_lo.square() / self.n + self.eps)
        v_hi = torch.minimum(v_hi, n_hi.square() / self.n + self.eps)
        return (c_lo, c_hi), (v_lo, v_hi), (torch.rsqrt(v_hi), torch.rsqrt(v_lo))

    def _norm_bounds(self, lo: Tensor, hi: Tensor) -> Interval:
        """Bounds of ||c||_2 from the box's centre m and radius r: c = P x with P the centring
        projector (||P|| = 1), so | ||P x|| - ||P m|| | <= ||P (x - m)|| <= ||r||_2. Where the
        box is narrow beside the spread of its centre, this keeps the variance away from 0,
        which the per-coordinate squares cannot once an interval c_i holds 0. Widened by a
        relative 1e-5 against float rounding."""
        m, r = (lo + hi) / 2, (hi - lo) / 2
        centre = torch.linalg.vector_norm(m - m.mean(-1, keepdim=True), dim=-1, keepdim=True)
        radius = torch.linalg.vector_norm(r, dim=-1, keepdim=True)
        return (centre - radius).clamp(min=0) * (1 - 1e-5), (centre + radius) * (1 + 1e-5)

    def ibp(self, b: Interval) -> Interval:
        (c_lo, c_hi), _, (inv_lo, inv_hi) = self._pieces(b)
        cands = torch.stack([c_lo * inv_lo, c_lo * inv_hi, c_hi * inv_lo, c_hi * inv_hi])
        y_lo, y_hi = cands.min(0).values, cands.max(0).values
        if self.weight is not None:
            g = self.weight
            y_lo, y_hi = torch.minimum(y_lo * g, y_hi * g), torch.maximum(y_lo * g, y_hi * g)
        if self.bias is not None:
            y_lo, y_hi = y_lo + self.bias, y_hi + self.bias
        return y_lo, y_hi

    def relaxation(self, b: Interval) -> Relaxation:
        (c_lo, c_hi), (v_lo, v_hi), (r_lo, r_hi) = self._pieces(b)
        sq = self._square.relax(c_lo, c_hi)
        rs = self._rsqrt.relax(v_lo, v_hi)
        return (c_lo, r_lo, r_hi, *sq, *rs)

    def backward(self, A: Tensor, rel: Relaxation) -> BackwardStep:
        """The composed step (module docstring) for A (B, R, ..., n). rho's bounds are one pair
        per normalised vector, so McCormick's planes for ``c_i * rho`` and the square's step
        (its coefficient ``coef_v / n`` is the same for every ``i`` of a vector, and so is its
        sign) are products of (B, R, ..., 1) and (B, 1, ..., n) factors: a few passes over the
        (B, R, ..., n) coefficients."""
        c_lo, r_lo, r_hi = (t.unsqueeze(1) for t in rel[:3])
        sq, rs = rel[3:7], rel[7:11]
        bias = None
        if self.bias is not None:
            bias = (A * self.bias).flatten(2).sum(-1)
        An = A * self.weight if self.weight is not None else A
        # n_i = c_i * rho, McCormick (lower bound of sum An n): a positive coefficient takes
        # rho_lo c + c_lo rho - c_lo rho_lo, a negative one rho_hi c + c_lo rho - c_lo rho_hi
        neg, pos = An.clamp(max=0), An.clamp(min=0)
        del An
        coef_c = pos * r_lo
        coef_c.addcmul_(neg, r_hi)
        p_x, n_x = (pos * c_lo).sum(-1, keepdim=True), (neg * c_lo).sum(-1, keepdim=True)
        del pos, neg
        coef_r = p_x + n_x  # (B, R, ..., 1)
        b_mc = -(p_x * r_lo + n_x * r_hi).flatten(2).sum(-1)
        # rho = rsqrt(v)
        (coef_v,), b_rs = elementwise_backward(coef_r, rs)
        # v = mean(c^2) + eps: every c_i^2 of a vector takes coef_v / n, one sign
        b_eps = coef_v.flatten(2).sum(-1) * self.eps
        coef_s = coef_v / self.n
        s_pos, s_neg = coef_s.clamp(min=0), coef_s.clamp(max=0)
        sq_ls, sq_lb, sq_us, sq_ub = (t.unsqueeze(1) for t in sq)
        coef_c.addcmul_(s_pos, sq_ls).addcmul_(s_neg, sq_us)
        b_sq = s_pos * sq_lb.sum(-1, keepdim=True) + s_neg * sq_ub.sum(-1, keepdim=True)
        # c = x - mean(x)
        coef_x = coef_c.sub_(coef_c.mean(-1, keepdim=True))
        total = b_mc + b_rs + b_eps + b_sq.flatten(2).sum(-1)
        return [coef_x], total if bias is None else total + bias
