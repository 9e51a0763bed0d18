"""Element-wise activations: interval propagation and CROWN linear relaxations.

A relaxation returns ``(ls, lb, us, ub)`` such that ``ls*z + lb <= f(z) <= us*z + ub`` for every
``z`` in ``[l, u]`` (Zhang et al., "Efficient Neural Network Robustness Certification with General
Activation Functions", NeurIPS 2018). Monotone activations reuse the endpoint IBP; a new one only
declares its relaxation. Piecewise-linear activations also report which neurons are *stable*
(their relaxation is exact), which the fast CROWN path exploits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from certify.bounds.ops import Interval, Op

# Margin added to curved relaxations so that float32 rounding cannot make them unsound.
_CURVE_MARGIN = 1e-6


class Activation(Op):
    """Monotone non-decreasing element-wise function: IBP maps the endpoints."""

    kind = "activation"

    def fn(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def ibp(self, b: Interval) -> Interval:
        return self.fn(b[0]), self.fn(b[1])

    def relax(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """Slopes and intercepts ``(ls, lb, us, ub)``; ``lb`` may be ``None`` (zero)."""
        raise NotImplementedError(f"CROWN has no linear relaxation for activation {self.name!r}")

    def unstable(self, lo: Tensor, hi: Tensor) -> Tensor | None:
        """Mask of neurons whose relaxation is inexact; ``None``: every neuron counts."""
        return None


class ReLU(Activation):
    """max(z, 0); upper chord u/(u-l), adaptive lower slope 1 if u > -l else 0 (CROWN)."""

    def __init__(self, name: str = "relu") -> None:
        self.name = name

    def fn(self, z: Tensor) -> Tensor:
        return torch.relu(z)

    def unstable(self, lo: Tensor, hi: Tensor) -> Tensor:
        return (lo < 0) & (hi > 0)

    def relax(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return _leaky_relax(lo, hi, 0.0)


class LeakyReLU(Activation):
    """max(z, a z) for 0 <= a <= 1: convex, so the chord is the upper bound."""

    def __init__(self, slope: float, name: str = "leaky_relu") -> None:
        if not 0.0 <= slope <= 1.0:
            raise ValueError(f"LeakyReLU negative_slope must lie in [0, 1] for CROWN, got {slope}")
        self.slope = float(slope)
        self.name = name

    def fn(self, z: Tensor) -> Tensor:
        return torch.nn.functional.leaky_relu(z, self.slope)

    def unstable(self, lo: Tensor, hi: Tensor) -> Tensor:
        return (lo < 0) & (hi > 0)

    def relax(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return _leaky_relax(lo, hi, self.slope)


def _leaky_relax(lo: Tensor, hi: Tensor, a: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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


class SShaped(Activation):
    """Sigmoid-like f: increasing, convex on z <= 0, concave on z >= 0 (tanh, sigmoid)."""

    def df(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def relax(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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


class Tanh(SShaped):
    def __init__(self, name: str = "tanh") -> None:
        self.name = name

    def fn(self, z: Tensor) -> Tensor:
        return torch.tanh(z)

    def df(self, z: Tensor) -> Tensor:
        return 1 - torch.tanh(z) ** 2


class Sigmoid(SShaped):
    def __init__(self, name: str = "sigmoid") -> None:
        self.name = name

    def fn(self, z: Tensor) -> Tensor:
        return torch.sigmoid(z)

    def df(self, z: Tensor) -> Tensor:
        s = torch.sigmoid(z)
        return s * (1 - s)


class Monotone(Activation):
    """Any non-decreasing element-wise function given as a callable (softplus, ELU, ...)."""

    def __init__(self, fn, name: str) -> None:
        self._fn = fn
        self.name = name

    def fn(self, z: Tensor) -> Tensor:
        return self._fn(z)


class Unimodal(Activation):
    """Decreasing on (-inf, z*], increasing on [z*, inf) (SiLU, Mish, GELU): IBP only."""

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


def silu() -> Unimodal:
    return Unimodal(torch.nn.functional.silu, _argmin(torch.nn.functional.silu), "silu")


def mish() -> Unimodal:
    return Unimodal(torch.nn.functional.mish, _argmin(torch.nn.functional.mish), "mish")


def gelu(approximate: str = "none") -> Unimodal:
    def f(z: Tensor) -> Tensor:
        return torch.nn.functional.gelu(z, approximate=approximate)

    return Unimodal(f, _argmin(f), "gelu")


def softplus(beta: float = 1.0, threshold: float = 20.0) -> Monotone:
    def f(z: Tensor) -> Tensor:
        return torch.nn.functional.softplus(z, beta, threshold)

    return Monotone(f, "softplus")


def elu(alpha: float = 1.0) -> Monotone:
    if alpha < 0:
        raise ValueError(f"ELU is monotone only for alpha >= 0, got {alpha}")

    def f(z: Tensor) -> Tensor:
        return torch.nn.functional.elu(z, alpha)

    return Monotone(f, "elu")
