"""More element-wise and reduction operators: |x|, clamp, min/max of two tensors, log, sin/cos,
and the Euclidean norm.

Relaxations (each sound for every input in ``[l, u]``, widened by a few ulps like the other
curved ones of :mod:`certify.bounds.activations`):

* ``abs``: convex, chord above and the tangent parallel to it below (on a crossing interval
  the lower line has slope 0 or ±1 like CROWN's adaptive ReLU, Zhang et al., NeurIPS 2018);
  it is ``relu(x) + relu(-x)``, piecewise linear and exact on stable elements;
* ``clamp(x, a, b)``: a monotone piecewise-linear function; upper line through
  (l, f(l)) with the slope making it touch f from above, lower symmetric (the triangle
  relaxation of ReLU, Ehlers 2017 / CROWN, applied to each kink); exact where stable;
* ``max(x, y)`` / ``min(x, y)`` of two bounded tensors: ``max(x, y) = y + relu(x - y)``
  with ReLU's relaxation on the difference (the form auto_LiRPA's ``max`` takes, Xu et al.,
  NeurIPS 2020); ``min(x, y) = x - relu(x - y)``; with a constant operand they are clamps;
* ``log``: concave for x > 0 (chord below, parallel tangent above);
* ``sin``/``cos``: bounded curvature |f''| <= 1: lines of the chord's slope offset by the
  extremes of f(z) - k z on a grid plus h^2 / 8 (the smooth-activation rule); IBP exact from
  the endpoints and the interior extrema at pi/2 + k pi;
* ``vector_norm`` / ``norm`` (ord 2): sqrt(sum x^2) as a chain square -> sum -> sqrt.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from certify.bounds.activations import (
    Activation,
    Concave,
    Lines,
    ReLU,
    Sqrt,
    Square,
    _positive,
    _ulps,
    elementwise_backward,
)
from certify.bounds.ops import Reduce
from certify.bounds.protocol import (
    BackwardStep,
    Call,
    Interval,
    Op,
    is_var,
    register,
    same_rank,
    unbroadcast,
)


# ------------------------------------------------------------------ |x|
@register(torch.abs, "abs", torch.absolute)
class Abs(Activation):
    """|x|: chord above, below the line of slope -1, 0 or 1 (whichever of the two kinks the
    chord favours), exact on stable elements. Not monotone: IBP from the kink."""

    def fn(self, z: Tensor) -> Tensor:
        return torch.abs(z)

    def ibp(self, b: Interval) -> Interval:
        lo, hi = b
        a_lo, a_hi = lo.abs(), hi.abs()
        low = torch.where(self.unstable(lo, hi), torch.zeros_like(lo), torch.minimum(a_lo, a_hi))
        return low, torch.maximum(a_lo, a_hi)

    def unstable(self, lo: Tensor, hi: Tensor) -> Tensor:
        return (lo < 0) & (hi > 0)

    def relax(self, lo: Tensor, hi: Tensor) -> Lines:
        cross = self.unstable(lo, hi)
        sign = torch.where(hi <= 0, -torch.ones_like(lo), torch.ones_like(lo))
        w = torch.where(cross, hi - lo, torch.ones_like(lo))
        us = torch.where(cross, (hi + lo) / w, sign)
        ub = torch.where(cross, -2 * hi * lo / w, torch.zeros_like(lo))
        # lower: slope 1 if the interval lies mostly above 0, -1 if mostly below, else 0
        ls = torch.where(cross, torch.sign(hi + lo), sign)
        return ls, None, us, ub + _ulps(lo.dtype, lo, hi) * cross


# ------------------------------------------------------------------ clamp
def _kink_relax(lo: Tensor, hi: Tensor, f, kinks: list[float]) -> Lines:
    """Lines for a monotone piecewise-linear f with slopes in {0, 1} (kinks ``kinks``): the
    upper line joins (l, f(l)) and (u, f(u)) unless f is concave over the interval, etc.;
    here: both lines of the chord's slope, shifted to touch f at the kinks or endpoints
    (f(z) - k z is piecewise linear, so its extremes lie at l, u or a kink inside)."""
    w = hi - lo
    f_lo, f_hi = f(lo), f(hi)
    k = torch.where(w > 0, (f_hi - f_lo) / torch.where(w > 0, w, 1.0), torch.zeros_like(w))
    g = [f_lo - k * lo, f_hi - k * hi]
    for c in kinks:
        kc = torch.full_like(lo, c)
        inside = (lo < kc) & (kc < hi)
        gc = f(kc) - k * kc
        g.append(torch.where(inside, gc, g[0]))
    stack = torch.stack(g)
    m = _ulps(lo.dtype, f_lo, f_hi, k * lo, k * hi)
    return k, stack.amin(0) - m, k, stack.amax(0) + m


@register(torch.clamp, "clamp", torch.clip, "clip", "clamp_min", "clamp_max")
def _clamp(call: Call) -> Op | tuple:
    x = call.arg(0, "input")
    if call.target == "clamp_min":
        a, b = call.arg(1, "min"), None
    elif call.target == "clamp_max":
        a, b = None, call.arg(1, "max")
    else:
        a, b = call.arg(1, "min", None), call.arg(2, "max", None)
    if not is_var(x) or is_var(a) or is_var(b):
        raise call.fail("clamp of a traced tensor between constants is supported")
    for v in (a, b):
        if isinstance(v, Tensor) and v.numel() != 1:
            raise call.fail("clamp with tensor limits is supported for one-element limits only")
    lo = None if a is None else float(a)
    hi = None if b is None else float(b)
    if lo is not None and hi is not None and lo > hi:
        raise call.fail(f"clamp with min {lo} > max {hi}")
    return Clamp(lo, hi)


class Clamp(Activation):
    """clamp(x, a, b) with constant limits: monotone, piecewise linear (slopes 0 and 1);
    lines of the chord's slope through the extremes of f(z) - k z (at l, u, a, b)."""

    def __init__(self, lo: float | None, hi: float | None) -> None:
        self.lo, self.hi = lo, hi

    def fn(self, z: Tensor) -> Tensor:
        return torch.clamp(z, self.lo, self.hi)

    def unstable(self, lo: Tensor, hi: Tensor) -> Tensor:
        out = torch.zeros_like(lo, dtype=torch.bool)
        for c in (self.lo, self.hi):
            if c is not None:
                out = out | ((lo < c) & (c < hi))
        return out

    def relax(self, lo: Tensor, hi: Tensor) -> Lines:
        kinks = [c for c in (self.lo, self.hi) if c is not None]
        return _kink_relax(lo, hi, self.fn, kinks)


# ------------------------------------------------------------------ max / min of two tensors
@register(torch.maximum, "maximum", torch.max, "max", torch.minimum, "minimum", torch.min, "min")
def _max_min(call: Call) -> Op | list[Op] | tuple:
    a, b = call.arg(0, "input"), call.arg(1, "other", None)
    smaller = call.target in (torch.minimum, "minimum", torch.min, "min")
    if b is None or not (is_var(b) or isinstance(b, Tensor)) or not is_var(a) and not is_var(b):
        raise call.fail("only min/max of two tensors is supported (a reduction: use amax)")
    if is_var(a) and is_var(b):
        return MaxMin(smaller)
    x, c = (a, b) if is_var(a) else (b, a)
    if not isinstance(c, Tensor) or c.numel() != 1:
        return ConstMaxMin(c, smaller), [x]
    return (Clamp(None, float(c)) if smaller else Clamp(float(c), None)), [x]


class ConstMaxMin(Activation):
    """max(x, c) / min(x, c) with a constant tensor c (element-wise kinks): monotone, slopes
    0 and 1; lines of the chord's slope through the extremes of f(z) - k z at l, u and c."""

    def __init__(self, c: Tensor, smaller: bool) -> None:
        self.c, self.smaller = c, smaller

    def fn(self, z: Tensor) -> Tensor:
        c = self.c.to(dtype=z.dtype, device=z.device)
        return torch.minimum(z, c) if self.smaller else torch.maximum(z, c)

    def unstable(self, lo: Tensor, hi: Tensor) -> Tensor:
        c = self.c.to(dtype=lo.dtype, device=lo.device)
        return (lo < c) & (c < hi)

    def relax(self, lo: Tensor, hi: Tensor) -> Lines:
        c = torch.broadcast_to(self.c.to(dtype=lo.dtype, device=lo.device), lo.shape)
        w = hi - lo
        f_lo, f_hi = self.fn(lo), self.fn(hi)
        k = torch.where(w > 0, (f_hi - f_lo) / torch.where(w > 0, w, 1.0), torch.zeros_like(w))
        g0, g1 = f_lo - k * lo, f_hi - k * hi
        inside = (lo < c) & (c < hi)
        gc = torch.where(inside, self.fn(c) - k * c, g0)
        low = torch.minimum(torch.minimum(g0, g1), gc)
        up = torch.maximum(torch.maximum(g0, g1), gc)
        m = _ulps(lo.dtype, f_lo, f_hi, k * lo, k * hi, c)
        return k, low - m, k, up + m


class MaxMin(Op):
    """max(x, y) = y + relu(x - y), min(x, y) = x - relu(x - y) for two traced tensors (with
    broadcasting); ReLU's relaxation on d = x - y, whose bounds come from x's and y's."""

    def __init__(self, smaller: bool) -> None:
        self.smaller = smaller
        self.relu = ReLU()

    def bind(self, in_shapes, out_shape) -> None:
        super().bind(in_shapes, out_shape)
        same_rank(self)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return torch.minimum(x, y) if self.smaller else torch.maximum(x, y)

    def ibp(self, x: Interval, y: Interval) -> Interval:
        return self.forward(x[0], y[0]), self.forward(x[1], y[1])

    def tighten_mask(self, lo: Tensor, hi: Tensor) -> Tensor | None:
        return None

    def relaxation(self, x: Interval, y: Interval) -> Lines:
        lo, hi = x[0] - y[1], x[1] - y[0]
        shape = torch.broadcast_shapes(lo.shape, hi.shape)
        lo, hi = torch.broadcast_to(lo, shape), torch.broadcast_to(hi, shape)
        return self.relu.relax(lo, hi)

    def backward(self, A: Tensor, rel: Lines) -> BackwardStep:
        sx, sy = self.in_shapes
        if self.smaller:  # min = x - relu(d): A x plus the lower bound of -A relu(d)
            (Ad,), bias = elementwise_backward(-A, rel)
            return [unbroadcast(A + Ad, sx), unbroadcast(-Ad, sy)], bias
        (Ad,), bias = elementwise_backward(A, rel)  # max = y + relu(d)
        return [unbroadcast(Ad, sx), unbroadcast(A - Ad, sy)], bias


# ------------------------------------------------------------------ log
@register(torch.log, "log")
class Log(Concave):
    """log(z) for z > 0 (an input whose lower bound is not > 0 raises ``ValueError``)."""

    def fn(self, z: Tensor) -> Tensor:
        return torch.log(z)

    def df(self, z: Tensor) -> Tensor:
        return torch.reciprocal(z)

    def tangent_point(self, k: Tensor) -> Tensor:
        return torch.reciprocal(k)

    def check_domain(self, lo: Tensor, hi: Tensor) -> None:
        _positive(self, lo)


# ------------------------------------------------------------------ sin / cos
class _Periodic(Op):
    """sin / cos: IBP from the endpoints and the interior extrema; CROWN lines of the chord's
    slope offset by the extremes of f(z) - k z on a grid widened by h^2 / 8 (|f''| <= 1)."""

    points = 33
    phase = 0.0  # cos(z) = sin(z + pi/2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def fn(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def ibp(self, b: Interval) -> Interval:
        lo, hi = b
        f_lo, f_hi = self.fn(lo), self.fn(hi)
        low, up = torch.minimum(f_lo, f_hi), torch.maximum(f_lo, f_hi)
        s_lo, s_hi = lo + self.phase, hi + self.phase  # sin(s) with s = z + phase
        # sin = 1 at pi/2 + 2 pi k, -1 at 3 pi/2 + 2 pi k: is such a point inside [s_lo, s_hi]?
        top = torch.floor((s_hi - math.pi / 2) / (2 * math.pi)) * 2 * math.pi + math.pi / 2
        bottom = torch.floor((s_hi - 3 * math.pi / 2) / (2 * math.pi)) * 2 * math.pi
        bottom = bottom + 3 * math.pi / 2
        up = torch.where(top >= s_lo, torch.ones_like(up), up)
        low = torch.where(bottom >= s_lo, -torch.ones_like(low), low)
        m = _ulps(lo.dtype, lo, hi)
        return (low - m).clamp(min=-1.0), (up + m).clamp(max=1.0)

    def relaxation(self, b: Interval) -> Lines:
        lo, hi = b
        w = hi - lo
        f_lo, f_hi = self.fn(lo), self.fn(hi)
        k = torch.where(w > 0, (f_hi - f_lo) / torch.where(w > 0, w, 1.0), torch.zeros_like(w))
        t = torch.linspace(0, 1, self.points, dtype=lo.dtype, device=lo.device)
        z = lo.unsqueeze(-1) + w.unsqueeze(-1) * t
        g = self.fn(z) - k.unsqueeze(-1) * z
        h = w / (self.points - 1)
        m = h * h / 8 + _ulps(lo.dtype, f_lo, f_hi, k * lo, k * hi)
        return k, g.amin(-1) - m, k, g.amax(-1) + m

    def backward(self, A: Tensor, rel: Lines) -> BackwardStep:
        return elementwise_backward(A, rel)


@register(torch.sin, "sin")
class Sin(_Periodic):
    def fn(self, z: Tensor) -> Tensor:
        return torch.sin(z)


@register(torch.cos, "cos")
class Cos(_Periodic):
    phase = math.pi / 2

    def fn(self, z: Tensor) -> Tensor:
        return torch.cos(z)


# ------------------------------------------------------------------ the Euclidean norm
@register(torch.linalg.vector_norm, torch.norm, "norm")
def _norm(call: Call) -> list[Op]:
    x = call.arg(0, "input")
    p = call.arg(1, "ord" if call.target is torch.linalg.vector_norm else "p", 2)
    dim, keepdim = call.arg(2, "dim", None), call.arg(3, "keepdim", False)
    if not is_var(x) or p not in (2, 2.0, "fro"):
        raise call.fail("only the Euclidean norm (ord 2) of a traced tensor is supported")
    if dim is None:
        raise call.fail("a norm over every dimension mixes the batch; pass dim=")
    return [Square(), Reduce(dim, bool(keepdim), mean=False), Sqrt()]
