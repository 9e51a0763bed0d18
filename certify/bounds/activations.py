"""Element-wise operators: interval propagation and CROWN linear relaxations.

A relaxation returns ``(ls, lb, us, ub)`` such that ``ls*z + lb <= f(z) <= us*z + ub`` for every
``z`` in ``[l, u]`` (Zhang et al., "Efficient Neural Network Robustness Certification with General
Activation Functions", NeurIPS 2018); the backward step is shared by all of them: positive
coefficients take the lower line, negative ones the upper line. Monotone activations reuse the
endpoint IBP; a new one only declares ``fn`` and its relaxation. Families:

* piecewise linear (ReLU, LeakyReLU): exact on stable neurons, which the fast CROWN path exploits;
* S-shaped (tanh, sigmoid): chords where valid, tangents otherwise;
* convex or concave on their domain (exp, square, reciprocal, sqrt, rsqrt, softplus, ELU with
  alpha <= 1): the chord on one side, on the other the tangent parallel to the chord;
* smooth with bounded curvature (SiLU, Mish, GELU): lines with the chord's slope whose intercepts
  are the extremes of ``f(z) - k z`` over a grid of [l, u] widened by ``sup|f''| h^2 / 8`` (the
  most a C^2 function with that curvature can exceed its values at grid points spaced h apart).

Every curved relaxation is widened by a few ulps of the values involved, so float rounding
cannot make it unsound.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from certify.bounds import symbolic as sym
from certify.bounds.protocol import BackwardStep, Call, Interval, Op, register

# Margin added to the S-shaped relaxations so that float32 rounding cannot make them unsound.
_CURVE_MARGIN = 1e-6

Lines = tuple[Tensor, Tensor | None, Tensor, Tensor]


def elementwise_backward(A: Tensor, rel: Lines) -> BackwardStep:
    """CROWN step through ``ls z + lb <= f(z) <= us z + ub`` (relaxation tensors (B, *s), A
    (B, R, *s)): ``A' = A ls + min(A, 0) (us - ls)``, bias ``max(A, 0) lb + min(A, 0) ub``.

    Relaxations with one slope for both lines (``us is ls``: the chord-slope lines of SiLU,
    Mish, GELU) give ``A' = A ls`` whatever the signs. Products and sums, not batched
    matrix-vector products (slow kernels on CPU); in-place updates where a buffer is ours."""
    ls, lb, us, ub = rel
    shape = A.shape
    B = shape[0]
    A3 = A.reshape(B, shape[1], -1)
    neg = A3.clamp(max=0)
    bias = neg * ub.reshape(B, 1, -1)
    if lb is not None:
        bias.addcmul_(A3.clamp(min=0), lb.reshape(B, 1, -1))
    const = bias.sum(-1)
    del bias
    out = A3 * ls.reshape(B, 1, -1)
    if us is not ls:
        out.addcmul_(neg, (us - ls).reshape(B, 1, -1))  # in place: one (B, R, n) buffer fewer
    return [out.reshape(shape)], const


class Activation(Op):
    """Monotone non-decreasing element-wise function: IBP maps the endpoints."""

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        cls.crown = cls.relax is not Activation.relax

    def fn(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def ibp(self, b: Interval) -> Interval:
        return self.fn(b[0]), self.fn(b[1])

    def relax(self, lo: Tensor, hi: Tensor) -> Lines:
        """Slopes and intercepts ``(ls, lb, us, ub)``; ``lb`` may be ``None`` (zero)."""
        raise self.no_crown()

    def relaxation(self, b: Interval) -> Lines:
        return self.relax(*b)

    def backward(self, A: Tensor, rel: Lines) -> BackwardStep:
        return elementwise_backward(A, rel)

    def unstable(self, lo: Tensor, hi: Tensor) -> Tensor | None:
        """Mask of neurons whose relaxation is inexact; ``None``: every neuron counts."""
        return None

    def tighten_mask(self, lo: Tensor, hi: Tensor) -> Tensor | None:
        return self.unstable(lo, hi)

    def symbolic(self, state, rel, bound):
        return sym.activation(state, self, rel, bound) if len(self.in_shapes[0]) == 1 else None

    def jacobian(self, z: Tensor) -> tuple[str, Tensor | None]:
        zz = z.detach().requires_grad_(True)
        with torch.enable_grad():
            (slope,) = torch.autograd.grad(self.fn(zz).sum(), zz)
        return "D", slope


# ------------------------------------------------------------------ piecewise linear


@register(nn.ReLU, torch.relu, torch.nn.functional.relu, "relu")
class ReLU(Activation):
    """max(z, 0); upper chord u/(u-l), adaptive lower slope 1 if u > -l else 0 (CROWN)."""

    piecewise_linear = True

    def __init__(self, name: str = "relu") -> None:
        self.name = name

    def fn(self, z: Tensor) -> Tensor:
        return torch.relu(z)

    def unstable(self, lo: Tensor, hi: Tensor) -> Tensor:
        return (lo < 0) & (hi > 0)

    def relax(self, lo: Tensor, hi: Tensor) -> Lines:
        return _relu_relax(lo, hi)

    def ibp_inplace(self, lo: Tensor, hi: Tensor) -> Interval:
        return lo.clamp_(min=0), hi.clamp_(min=0)

    def ibp_stacked(self, z: Tensor) -> Tensor | None:
        return z.clamp_(min=0)  # monotone: both halves clamp alike


@register(nn.LeakyReLU, torch.nn.functional.leaky_relu)
class LeakyReLU(Activation):
    """max(z, a z) for 0 <= a <= 1: convex, so the chord is the upper bound."""

    piecewise_linear = True

    def __init__(self, slope: float, name: str = "leaky_relu") -> None:
        if not 0.0 <= slope <= 1.0:
            raise ValueError(f"LeakyReLU negative_slope must lie in [0, 1] for CROWN, got {slope}")
        self.slope = float(slope)
        self.name = name

    @classmethod
    def from_module(cls, m: nn.Module) -> LeakyReLU:
        return cls(m.negative_slope)

    @classmethod
    def from_call(cls, call: Call) -> LeakyReLU:
        return cls(call.arg(1, "negative_slope", 0.01))

    def fn(self, z: Tensor) -> Tensor:
        return torch.nn.functional.leaky_relu(z, self.slope)

    def unstable(self, lo: Tensor, hi: Tensor) -> Tensor:
        return (lo < 0) & (hi > 0)

    def relax(self, lo: Tensor, hi: Tensor) -> Lines:
        return _leaky_relax(lo, hi, self.slope)


def _relu_relax(lo: Tensor, hi: Tensor) -> Lines:
    """``_leaky_relax(lo, hi, 0)``, the same values, without its ``where`` steps (slow kernels
    on CPU) for finite bounds without autograd: with u+ = max(u, 0) and l- = min(l, 0) the
    upper slope is u+ / (u+ - l-) (1 when active, 0 when dead, the chord when unstable; 0/0
    only where l = u = 0, dead), its intercept -l- times it, and the lower slope 1 if
    u + l > 0 (u > -l: an exact sum of floats rounds to 0 only when it is 0) or l >= 0."""
    if (
        lo.device.type != "cpu"
        or (torch.is_grad_enabled() and (lo.requires_grad or hi.requires_grad))
        or not math.isfinite(float((hi - lo).sum()))  # a sum: isfinite().all() is slow
    ):
        return _leaky_relax(lo, hi, 0.0)
    hp, ln = hi.clamp(min=0), lo.clamp(max=0)
    den = hp - ln
    us = torch.div(hp, den, out=den).nan_to_num_(nan=0.0)
    ub = ln.mul_(us).neg_()
    ls = (hi + lo > 0).logical_or_(lo >= 0).to(lo.dtype)
    return ls, None, us, ub


def _leaky_relax(lo: Tensor, hi: Tensor, a: float) -> Lines:
    """Relaxation of max(z, a z): exact when stable, chord above and a slope in {a, 1} below."""
    active, dead = lo >= 0, hi <= 0
    unstable = ~(active | dead)
    width = torch.where(unstable, hi - lo, torch.ones_like(lo))
    chord = torch.where(unstable, (hi - a * lo) / width, torch.ones_like(lo))
    us = torch.where(dead, torch.full_like(lo, a), chord)
    # (a - 1) l u / (u - l) as (a - 1) l (u / (u - l)): l u alone overflows for huge intervals
    ub = torch.where(unstable, (a - 1.0) * lo * (hi / width), torch.zeros_like(lo))
    adaptive = torch.where(hi > -lo, torch.ones_like(lo), torch.full_like(lo, a))
    ls = torch.where(
        active, torch.ones_like(lo), torch.where(dead, torch.full_like(lo, a), adaptive)
    )
    return ls, None, us, ub


# ------------------------------------------------------------------ S-shaped


class SShaped(Activation):
    """Sigmoid-like f: increasing, convex on z <= 0, concave on z >= 0 (tanh, sigmoid)."""

    def df(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def relax(self, lo: Tensor, hi: Tensor) -> Lines:
        """Chords where valid, tangents otherwise (tangent points found by sound bisection)."""
        flat = (hi - lo) < 1e-6
        us, ub = self._upper(lo, torch.where(flat, lo + 1.0, hi))
        nls, nlb = self._upper(-torch.where(flat, lo + 1.0, hi), -lo, neg=True)
        ls, lb = nls, -nlb
        fl, fu = self.fn(lo), self.fn(hi)
        zero = torch.zeros_like(lo)
        ls, us = torch.where(flat, zero, ls), torch.where(flat, zero, us)
        lb, ub = torch.where(flat, fl, lb), torch.where(flat, fu, ub)
        return ls, lb - _CURVE_MARGIN, us, ub + _CURVE_MARGIN

    def _g(self, z: Tensor, neg: bool) -> Tensor:
        return -self.fn(-z) if neg else self.fn(z)

    def _upper(self, lo: Tensor, hi: Tensor, neg: bool = False) -> tuple[Tensor, Tensor]:
        """Upper line of g on [lo, hi] (g = f, or g(z) = -f(-z) which is S-shaped too)."""
        g_lo, g_hi = self._g(lo, neg), self._g(hi, neg)
        k = (g_hi - g_lo) / (hi - lo)
        mid = (lo + hi) / 2
        # Concave part (lo >= 0): tangent at the midpoint; convex part (hi <= 0): chord.
        t_slope = self.df(mid)
        t_icpt = self._g(mid, neg) - t_slope * mid
        # Crossing zero: the chord is valid iff k <= g'(hi); else a tangent through (lo, g(lo)).
        d = self._tangent_point(lo, hi, neg)
        d_slope = self.df(d)
        d_icpt = self._g(d, neg) - d_slope * d
        chord_ok = k <= self.df(hi)
        cross_s = torch.where(chord_ok, k, d_slope)
        cross_b = torch.where(chord_ok, g_lo - k * lo, d_icpt)
        slope = torch.where(lo >= 0, t_slope, torch.where(hi <= 0, k, cross_s))
        icpt = torch.where(lo >= 0, t_icpt, torch.where(hi <= 0, g_lo - k * lo, cross_b))
        return slope, icpt

    def _tangent_point(self, lo: Tensor, hi: Tensor, neg: bool, iters: int = 30) -> Tensor:
        """Smallest-ish d in [0, hi] whose tangent passes above (lo, g(lo)); keeps h(d) >= 0."""
        g_lo = self._g(lo, neg)
        a, b = torch.zeros_like(hi), hi.clamp(min=0)
        for _ in range(iters):
            m = (a + b) / 2
            ok = self._g(m, neg) + self.df(m) * (lo - m) >= g_lo
            b = torch.where(ok, m, b)
            a = torch.where(ok, a, m)
        return b


@register(nn.Tanh, torch.tanh, torch.nn.functional.tanh, "tanh")
class Tanh(SShaped):
    def __init__(self, name: str = "tanh") -> None:
        self.name = name

    def fn(self, z: Tensor) -> Tensor:
        return torch.tanh(z)

    def df(self, z: Tensor) -> Tensor:
        return 1 - torch.tanh(z) ** 2


@register(nn.Sigmoid, torch.sigmoid, torch.nn.functional.sigmoid, "sigmoid")
class Sigmoid(SShaped):
    def __init__(self, name: str = "sigmoid") -> None:
        self.name = name

    def fn(self, z: Tensor) -> Tensor:
        return torch.sigmoid(z)

    def df(self, z: Tensor) -> Tensor:
        s = torch.sigmoid(z)
        return s * (1 - s)


# ------------------------------------------------------------------ convex and concave


def _ulps(dtype: torch.dtype, *terms: Tensor) -> Tensor:
    """A few ulps of the magnitudes involved in a line's evaluation (rounding margin)."""
    total = 1.0
    for t in terms:
        total = total + t.abs()
    return 64 * torch.finfo(dtype).eps * total


class Convex(Activation):
    """Convex f on its domain: the chord is above; below, the tangent at the point where f'
    equals the chord's slope (parallel to the chord: the smallest largest gap). Any tangent of a
    convex function lies below it, so the lower line is sound whatever the accuracy of that
    point. ``sign = -1`` (:class:`Concave`) mirrors everything for concave functions."""

    sign = 1.0
    extra_margin = 0.0

    def df(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def tangent_point(self, k: Tensor) -> Tensor:
        """A point t with f'(t) = k (clamped to [l, u] by the caller)."""
        raise NotImplementedError

    def check_domain(self, lo: Tensor, hi: Tensor) -> None:
        """Raise ``ValueError`` where [lo, hi] leaves the domain."""

    def ibp(self, b: Interval) -> Interval:
        self.check_domain(*b)
        return super().ibp(b)

    def relax(self, lo: Tensor, hi: Tensor) -> Lines:
        self.check_domain(lo, hi)
        w = hi - lo
        flat = w <= 0
        f_lo, f_hi = self.fn(lo), self.fn(hi)
        k = torch.where(flat, torch.zeros_like(lo), (f_hi - f_lo) / torch.where(flat, 1.0, w))
        t = torch.minimum(torch.maximum(self.tangent_point(k), lo), hi)
        t = torch.where(torch.isfinite(t), t, lo)
        kt = self.df(t)
        f_t = self.fn(t)
        chord_b = f_lo - k * lo
        tan_b = f_t - kt * t
        m = _ulps(lo.dtype, f_lo, f_hi, k * lo, k * hi, f_t, kt * t) + self.extra_margin
        # convex: tangent below, chord above; concave: chord below, tangent above
        if self.sign > 0:
            ls, lb, us, ub = kt, tan_b - m, k, chord_b + m
        else:
            ls, lb, us, ub = k, chord_b - m, kt, tan_b + m
        ibp_lo, ibp_hi = self.ibp((lo, hi))
        zero = torch.zeros_like(lo)
        bad_l = flat | ~torch.isfinite(ls) | ~torch.isfinite(lb)
        bad_u = flat | ~torch.isfinite(us) | ~torch.isfinite(ub)
        big = torch.finfo(lo.dtype).max
        box_lo, box_hi = ibp_lo.clamp(min=-big), ibp_hi.clamp(max=big)
        m_box = _ulps(lo.dtype, box_lo, box_hi).clamp(max=big) + self.extra_margin
        ls = torch.where(bad_l, zero, ls)
        lb = torch.where(bad_l, box_lo - m_box, lb)
        us = torch.where(bad_u, zero, us)
        ub = torch.where(bad_u, box_hi + m_box, ub)
        return ls, lb, us, ub


class Concave(Convex):
    sign = -1.0


def _positive(op: Op, lo: Tensor, strict: bool = True) -> None:
    bad = (lo <= 0) if strict else (lo < 0)
    if bool(bad.any()):
        rel = ">" if strict else ">="
        raise ValueError(
            f"certify: {op.label} needs an input {rel} 0 over the whole input set; its lower "
            f"bound reaches {float(lo.detach().min()):.4g}"
        )


@register(torch.exp, "exp")
class Exp(Convex):
    def fn(self, z: Tensor) -> Tensor:
        return torch.exp(z)

    def df(self, z: Tensor) -> Tensor:
        return torch.exp(z)

    def tangent_point(self, k: Tensor) -> Tensor:
        return torch.log(k)


@register(torch.square, "square")
class Square(Convex):
    def fn(self, z: Tensor) -> Tensor:
        return z * z

    def df(self, z: Tensor) -> Tensor:
        return 2 * z

    def tangent_point(self, k: Tensor) -> Tensor:
        return k / 2

    def ibp(self, b: Interval) -> Interval:
        lo, hi = b
        sq_lo, sq_hi = lo * lo, hi * hi
        low = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(sq_lo, sq_hi))
        return low, torch.maximum(sq_lo, sq_hi)


@register(torch.reciprocal, "reciprocal")
class Reciprocal(Convex):
    """1 / z for z > 0 (an input whose lower bound is not > 0 raises ``ValueError``)."""

    def fn(self, z: Tensor) -> Tensor:
        return torch.reciprocal(z)

    def df(self, z: Tensor) -> Tensor:
        return -torch.reciprocal(z * z)

    def tangent_point(self, k: Tensor) -> Tensor:
        return torch.rsqrt(-k)

    def check_domain(self, lo: Tensor, hi: Tensor) -> None:
        _positive(self, lo)

    def ibp(self, b: Interval) -> Interval:
        self.check_domain(*b)
        return self.fn(b[1]), self.fn(b[0])


@register(torch.rsqrt, "rsqrt")
class Rsqrt(Convex):
    """1 / sqrt(z) for z > 0."""

    def fn(self, z: Tensor) -> Tensor:
        return torch.rsqrt(z)

    def df(self, z: Tensor) -> Tensor:
        return -0.5 * torch.rsqrt(z) / z

    def tangent_point(self, k: Tensor) -> Tensor:
        return (-2 * k) ** (-2.0 / 3.0)

    def check_domain(self, lo: Tensor, hi: Tensor) -> None:
        _positive(self, lo)

    def ibp(self, b: Interval) -> Interval:
        self.check_domain(*b)
        return self.fn(b[1]), self.fn(b[0])


@register(torch.sqrt, "sqrt")
class Sqrt(Concave):
    """sqrt(z) for z >= 0."""

    def fn(self, z: Tensor) -> Tensor:
        return torch.sqrt(z)

    def df(self, z: Tensor) -> Tensor:
        return 0.5 * torch.rsqrt(z)

    def tangent_point(self, k: Tensor) -> Tensor:
        return 0.25 / (k * k)

    def check_domain(self, lo: Tensor, hi: Tensor) -> None:
        _positive(self, lo, strict=False)


@register(nn.Softplus, torch.nn.functional.softplus)
class Softplus(Convex):
    """log(1 + exp(beta z)) / beta, linear above ``threshold / beta`` (that switch is off the
    convex function by at most exp(-threshold) / beta, added to the margins)."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        self.beta, self.threshold = float(beta), float(threshold)
        if self.beta <= 0:
            raise ValueError(f"Softplus needs beta > 0, got {beta}")
        self.extra_margin = math.exp(-self.threshold) / self.beta

    @classmethod
    def from_module(cls, m: nn.Module) -> Softplus:
        return cls(m.beta, m.threshold)

    @classmethod
    def from_call(cls, call: Call) -> Softplus:
        return cls(call.arg(1, "beta", 1.0), call.arg(2, "threshold", 20.0))

    def fn(self, z: Tensor) -> Tensor:
        return torch.nn.functional.softplus(z, self.beta, self.threshold)

    def df(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.beta * z)

    def tangent_point(self, k: Tensor) -> Tensor:
        return torch.logit(k) / self.beta


@register(nn.ELU, torch.nn.functional.elu)
class ELU(Convex):
    """z for z > 0, alpha (exp(z) - 1) otherwise: monotone for alpha >= 0, convex (CROWN) for
    alpha <= 1."""

    def __init__(self, alpha: float = 1.0) -> None:
        if alpha < 0:
            raise ValueError(f"ELU is monotone only for alpha >= 0, got {alpha}")
        self.alpha = float(alpha)
        self.crown = self.alpha <= 1.0

    @classmethod
    def from_module(cls, m: nn.Module) -> ELU:
        return cls(m.alpha)

    @classmethod
    def from_call(cls, call: Call) -> ELU:
        return cls(call.arg(1, "alpha", 1.0))

    def fn(self, z: Tensor) -> Tensor:
        return torch.nn.functional.elu(z, self.alpha)

    def df(self, z: Tensor) -> Tensor:
        return torch.where(z > 0, torch.ones_like(z), self.alpha * torch.exp(z.clamp(max=0)))

    def tangent_point(self, k: Tensor) -> Tensor:
        if self.alpha == 0:
            return torch.zeros_like(k)
        return torch.where(k < self.alpha, torch.log(k / self.alpha), torch.zeros_like(k))

    def relax(self, lo: Tensor, hi: Tensor) -> Lines:
        if not self.crown:
            raise self.no_crown()
        return super().relax(lo, hi)


# ------------------------------------------------------------------ smooth, bounded curvature


class Monotone(Activation):
    """Any non-decreasing element-wise function given as a callable (IBP only)."""

    def __init__(self, fn, name: str) -> None:
        self._fn = fn
        self.name = name

    def fn(self, z: Tensor) -> Tensor:
        return self._fn(z)


class Unimodal(Activation):
    """Decreasing on (-inf, z*], increasing on [z*, inf) (SiLU, Mish, GELU): IBP from the
    endpoints and the minimum."""

    def __init__(self, fn, argmin: float, name: str) -> None:
        self._fn = fn
        self.argmin = argmin
        self.name = name

    def fn(self, z: Tensor) -> Tensor:
        return self._fn(z)

    def ibp(self, b: Interval) -> Interval:
        lo, hi = b
        f_lo, f_hi = self.fn(lo), self.fn(hi)
        f_min = float(self._fn(torch.tensor(self.argmin, dtype=torch.float64)))
        inside = (lo <= self.argmin) & (hi >= self.argmin)
        lower = torch.where(inside, torch.full_like(lo, f_min), torch.minimum(f_lo, f_hi))
        return lower - _CURVE_MARGIN * inside, torch.maximum(f_lo, f_hi)


class Smooth(Unimodal):
    """Unimodal and C^2 with ``|f''| <= curvature`` everywhere: lines of the chord's slope k,
    intercepts from the extremes of f(z) - k z at ``points`` grid points of [l, u] widened by
    ``curvature h^2 / 8`` (h the grid spacing): between two grid points a function with that
    curvature exceeds the larger of its two values by at most that much."""

    points = 33

    def __init__(self, fn, name: str) -> None:
        super().__init__(fn, _argmin(fn), name)
        self.curvature = _curvature(fn)

    def relax(self, lo: Tensor, hi: Tensor) -> Lines:
        w = hi - lo
        f_lo, f_hi = self.fn(lo), self.fn(hi)
        k = torch.where(w > 0, (f_hi - f_lo) / torch.where(w > 0, w, 1.0), torch.zeros_like(w))
        t = torch.linspace(0, 1, self.points, dtype=lo.dtype, device=lo.device)
        z = lo.unsqueeze(-1) + w.unsqueeze(-1) * t
        g = self.fn(z) - k.unsqueeze(-1) * z
        h = w / (self.points - 1)
        slack = self.curvature * h * h / 8
        m = slack + _ulps(lo.dtype, f_lo, f_hi, k * lo, k * hi)
        return k, g.amin(-1) - m, k, g.amax(-1) + m


def _argmin(fn, lo: float = -3.0, hi: float = 0.0) -> float:
    """Ternary search for the minimiser of a unimodal function (computed once, float64)."""
    for _ in range(200):
        m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if float(fn(torch.tensor(m1, dtype=torch.float64))) < float(
            fn(torch.tensor(m2, dtype=torch.float64))
        ):
            hi = m2
        else:
            lo = m1
    return (lo + hi) / 2


_CURVATURE: dict = {}


def _curvature(fn) -> float:
    """An upper bound on sup |f''| (float64 autograd on a fine grid of [-40, 40], where these
    activations bend; f'' decays exponentially outside), widened by 10% and 1e-3."""
    key = getattr(fn, "key", fn)
    if key not in _CURVATURE:
        with torch.enable_grad():
            z = torch.linspace(-40, 40, 400_001, dtype=torch.float64, requires_grad=True)
            (d1,) = torch.autograd.grad(fn(z).sum(), z, create_graph=True)
            (d2,) = torch.autograd.grad(d1.sum(), z)
        _CURVATURE[key] = 1.1 * float(d2.abs().max()) + 1e-3
    return _CURVATURE[key]


@register(nn.SiLU, torch.nn.functional.silu)
class SiLU(Smooth):
    def __init__(self) -> None:
        super().__init__(torch.nn.functional.silu, "silu")


@register(nn.Mish, torch.nn.functional.mish)
class Mish(Smooth):
    def __init__(self) -> None:
        super().__init__(torch.nn.functional.mish, "mish")


class _Gelu:
    def __init__(self, approximate: str) -> None:
        self.approximate = approximate
        self.key = ("gelu", approximate)

    def __call__(self, z: Tensor) -> Tensor:
        return torch.nn.functional.gelu(z, approximate=self.approximate)


@register(nn.GELU, torch.nn.functional.gelu)
class GELU(Smooth):
    def __init__(self, approximate: str = "none") -> None:
        super().__init__(_Gelu(approximate), "gelu")

    @classmethod
    def from_module(cls, m: nn.Module) -> GELU:
        return cls(m.approximate)

    @classmethod
    def from_call(cls, call: Call) -> GELU:
        return cls(call.kwargs.get("approximate", "none"))


def silu() -> SiLU:
    return SiLU()


def mish() -> Mish:
    return Mish()


def gelu(approximate: str = "none") -> GELU:
    return GELU(approximate)


def softplus(beta: float = 1.0, threshold: float = 20.0) -> Softplus:
    return Softplus(beta, threshold)


def elu(alpha: float = 1.0) -> ELU:
    return ELU(alpha)
