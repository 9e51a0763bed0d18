"""Products of two bounded tensors: element-wise ``x * y``, ``x / y`` (y >= c > 0), and matrix
products / einsum (attention scores ``q k^T``, attention-weighted values, Gram matrices).

IBP is exact per product term: the extremes of x y over a box lie at its corners. CROWN bounds
every term with McCormick's planes (McCormick, Math. Programming 1976), the choice auto_LiRPA
makes (Xu et al., NeurIPS 2020; Shi et al., "Robustness Verification for Transformers", ICLR
2020): for x in [lx, ux], y in [ly, uy]

    x y >= ly x + lx y - lx ly,        x y <= uy x + lx y - lx uy,

a positive coefficient takes the lower plane, a negative one the upper plane. Summed over the
terms of a matrix product these are again matrix products of the coefficients with the bounds,
so the backward step costs a few einsums. One operand may be a constant (then the product is
linear and exact).
"""

from __future__ import annotations

import operator
import string

import torch
from torch import Tensor

from certify.bounds.activations import Reciprocal, _positive, elementwise_backward
from certify.bounds.protocol import (
    BackwardStep,
    Call,
    Interval,
    Op,
    Relaxation,
    as_const,
    is_var,
    register,
    same_rank,
    unbroadcast,
)


def _corners(a: Interval, b: Interval, prod) -> Interval:
    """Exact interval of ``prod(x, y)`` (bilinear, element-wise terms) over the box."""
    cands = [prod(p, q) for p in a for q in b]
    lo = torch.minimum(torch.minimum(cands[0], cands[1]), torch.minimum(cands[2], cands[3]))
    hi = torch.maximum(torch.maximum(cands[0], cands[1]), torch.maximum(cands[2], cands[3]))
    return lo, hi


def _mccormick(A: Tensor, lx: Tensor, ly: Tensor, uy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Element-wise McCormick step for ``y = a * b`` (bounds broadcast to A (B, R, *s)):
    coefficients on a and on b, and the bias (B, R)."""
    pos, neg = A.clamp(min=0), A.clamp(max=0)
    lx, ly, uy = lx.unsqueeze(1), ly.unsqueeze(1), uy.unsqueeze(1)
    coef_a = pos * ly + neg * uy
    coef_b = A * lx
    bias = -(pos * (lx * ly) + neg * (lx * uy)).flatten(2).sum(-1)
    return coef_a, coef_b, bias


class Mul(Op):
    """Element-wise product of two traced tensors (with broadcasting): McCormick planes."""

    def bind(self, in_shapes, out_shape) -> None:
        super().bind(in_shapes, out_shape)
        same_rank(self)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a * b

    def ibp(self, a: Interval, b: Interval) -> Interval:
        return _corners(a, b, torch.mul)

    def relaxation(self, a: Interval, b: Interval) -> Relaxation:
        return a[0], b[0], b[1]

    def backward(self, A: Tensor, rel: Relaxation) -> BackwardStep:
        la, lb, ub = rel
        ca, cb, bias = _mccormick(A, la, lb, ub)
        return [unbroadcast(ca, self.in_shapes[0]), unbroadcast(cb, self.in_shapes[1])], bias


class Div(Op):
    """``x / y`` for traced x and y with y >= c > 0 (with broadcasting): ``x * r`` with
    ``r = 1 / y``, McCormick planes on x r, then the reciprocal's relaxation (tangent below,
    chord above) carries r's coefficient to y. Bounds of r come from y's by interval
    arithmetic. A lower bound of y that is not > 0 raises ``ValueError``."""

    def __init__(self) -> None:
        self.recip = Reciprocal()

    def bind(self, in_shapes, out_shape) -> None:
        super().bind(in_shapes, out_shape)
        same_rank(self)
        self.recip.name, self.recip.what = self.name, self.what

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return x / y

    def ibp(self, x: Interval, y: Interval) -> Interval:
        _positive(self, y[0])
        return _corners(x, (1 / y[1], 1 / y[0]), torch.mul)

    def relaxation(self, x: Interval, y: Interval) -> Relaxation:
        _positive(self, y[0])
        return (x[0], 1 / y[1], 1 / y[0], *self.recip.relax(*y))

    def backward(self, A: Tensor, rel: Relaxation) -> BackwardStep:
        lx, lr, ur, *lines = rel
        cx, cr, bias = _mccormick(A, lx, lr, ur)
        (cy,), bias_r = elementwise_backward(unbroadcast(cr, self.in_shapes[1]), tuple(lines))
        return [unbroadcast(cx, self.in_shapes[0]), cy], bias + bias_r


# ------------------------------------------------------------------ einsum and matmul


def _parse(eq: str, n_operands: int, label: str) -> tuple[list[str], str]:
    eq = eq.replace(" ", "")
    if "->" not in eq or "." in eq:
        raise NotImplementedError(
            f"certify: {label} needs an explicit output ('->') and no ellipsis, got {eq!r}"
        )
    ins, out = eq.split("->")
    specs = ins.split(",")
    if len(specs) != n_operands:
        raise NotImplementedError(f"certify: {label}: {eq!r} does not match the operands")
    for s in [*specs, out]:
        if len(set(s)) != len(s):
            raise NotImplementedError(f"certify: {label}: repeated index in {s!r} (diagonals)")
    return specs, out


def _free_letter(*specs: str) -> str:
    used = set("".join(specs))
    return next(c for c in string.ascii_letters if c not in used)


class Einsum(Op):
    """``torch.einsum`` of two operands (two traced tensors, or one traced and one constant)
    and matrix products (``@``, ``matmul``, ``bmm``), which are turned into an einsum once the
    ranks are known. The batch index comes first in every traced operand and in the output."""

    def __init__(self, operands: list, equation: str | None, matmul: bool = False) -> None:
        self.operands = operands  # Var or constant tensor, in order
        self.equation = equation
        self.matmul = matmul

    @classmethod
    def from_call(cls, call: Call) -> Einsum:
        if call.target is torch.einsum:
            eq = call.args[0]
            ops = (
                list(call.args[1])
                if len(call.args) == 2 and isinstance(call.args[1], (list, tuple))
                else list(call.args[1:])
            )
            if len(ops) != 2:
                raise call.fail("einsum of exactly two operands is supported")
            return cls(ops, eq)
        ops = [call.arg(0, "input"), call.arg(1, "other" if call.target != "bmm" else "mat2")]
        return cls(ops, None, matmul=True)

    @property
    def n_vars(self) -> int:
        return sum(is_var(o) for o in self.operands)

    def bind(self, in_shapes, out_shape) -> None:
        super().bind(in_shapes, out_shape)
        ranks, shapes = [], iter(in_shapes)
        for o in self.operands:
            ranks.append(len(next(shapes)) + 1 if is_var(o) else o.dim())
        eq = self._matmul_equation(ranks) if self.matmul else self.equation
        self.specs, self.out = _parse(eq, 2, self.label)
        batch = self.out[0]
        for o, s in zip(self.operands, self.specs, strict=True):
            if is_var(o) and s[0] != batch:
                raise NotImplementedError(
                    f"certify: {self.label}: the batch index {batch!r} must come first in "
                    f"every traced operand ({eq!r})"
                )
            if not is_var(o) and batch in s:
                raise NotImplementedError(
                    f"certify: {self.label}: a constant operand cannot carry the batch index"
                )
        self.r = _free_letter(*self.specs, self.out)
        self.a_spec = self.out[0] + self.r + self.out[1:]
        if self.n_vars == 2:
            for k in range(2):
                missing = set(self.specs[k]) - set(self.out) - set(self.specs[1 - k])
                if missing:
                    raise NotImplementedError(
                        f"certify: {self.label}: index {sorted(missing)} is summed within one "
                        "operand; sum it first"
                    )

    def _matmul_equation(self, ranks: list[int]) -> str:
        """``@`` as an einsum: (..., n, k) @ (..., k, m), 1-D constants as vectors."""
        r1, r2 = ranks
        var1, var2 = is_var(self.operands[0]), is_var(self.operands[1])
        letters = iter(string.ascii_lowercase)
        n, k, m = "n", "k", "m"
        lead_len = max(r1, r2) - 2
        lead = "".join(next(c for c in letters if c not in "nkm") for _ in range(lead_len))
        if r1 >= 2 and r2 >= 2:
            if var1 and var2 and r1 != r2:
                raise NotImplementedError(
                    f"certify: {self.label}: operands of ranks {r1} and {r2}; give both the "
                    "same number of dimensions"
                )
            s1 = lead[lead_len - (r1 - 2) :] + n + k
            s2 = lead[lead_len - (r2 - 2) :] + k + m
            out = lead + n + m
        elif r2 == 1:  # (..., n, k) @ (k,)
            s1, s2, out = lead + n + k, k, lead + n
        elif r1 == 1:  # (k,) @ (..., k, m)
            lead = lead[: r2 - 2]
            s1, s2, out = k, lead + k + m, lead + m
        else:
            raise NotImplementedError(f"certify: {self.label}: unsupported operand ranks")
        return f"{s1},{s2}->{out}"

    def _vals(self, xs) -> list:
        it = iter(xs)
        return [next(it) if is_var(o) else o for o in self.operands]

    def _eq(self) -> str:
        return f"{self.specs[0]},{self.specs[1]}->{self.out}"

    def forward(self, *xs: Tensor) -> Tensor:
        a, b = self._vals(xs)
        if not hasattr(self, "specs"):  # shape inference
            return a @ b if self.matmul else torch.einsum(self.equation, a, b)
        return torch.einsum(self._eq(), as_const(a, xs[0]), as_const(b, xs[0]))

    def ibp(self, *bounds: Interval) -> Interval:
        if self.n_vars == 1:
            return self._ibp_linear(bounds[0])
        (la, ua), (lb, ub) = bounds
        # every product term's exact interval: einsum to all indices, then sum the contracted
        full = self.out + "".join(sorted(set(self.specs[0] + self.specs[1]) - set(self.out)))
        n_sum = len(full) - len(self.out)
        eq = f"{self.specs[0]},{self.specs[1]}->{full}"
        lo, hi = _corners((la, ua), (lb, ub), lambda p, q: torch.einsum(eq, p, q))
        if n_sum:
            dims = tuple(range(-n_sum, 0))
            lo, hi = lo.sum(dims), hi.sum(dims)
        return lo, hi

    def _ibp_linear(self, b: Interval) -> Interval:
        lo, hi = b
        k = next(i for i, o in enumerate(self.operands) if is_var(o))
        W = as_const(self.operands[1 - k], lo)
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        args_m = [mid, W] if k == 0 else [W, mid]
        args_r = [rad, W.abs()] if k == 0 else [W.abs(), rad]
        c, r = torch.einsum(self._eq(), *args_m), torch.einsum(self._eq(), *args_r)
        return c - r, c + r

    @property
    def linear(self) -> bool:  # type: ignore[override]
        return self.n_vars == 1

    def relaxation(self, *bounds: Interval) -> Relaxation:
        (la, _), (lb, ub) = bounds
        return la, lb, ub

    def _coef(self, A: Tensor, other: Tensor, k: int) -> Tensor:
        """Coefficient on operand k from A (B, R, *out) and the other operand's tensor."""
        target = self.specs[k][0] + self.r + self.specs[k][1:]
        spec_o = self.specs[1 - k]
        return torch.einsum(f"{self.a_spec},{spec_o}->{target}", A, other)

    def backward(self, A: Tensor, rel: Relaxation | None) -> BackwardStep:
        if self.n_vars == 1:
            k = next(i for i, o in enumerate(self.operands) if is_var(o))
            W = as_const(self.operands[1 - k], A)
            target = self.specs[k][0] + self.r + self.specs[k][1:]
            missing = set(self.specs[k]) - set(self.a_spec) - set(self.specs[1 - k])
            if missing:  # an index summed within the traced operand only: broadcast back
                keep = "".join(c for c in target if c not in missing)
                coef = torch.einsum(f"{self.a_spec},{self.specs[1 - k]}->{keep}", A, W)
                for pos, c in enumerate(target):
                    if c in missing:
                        coef = coef.unsqueeze(pos)
                return [coef.expand(*A.shape[:2], *self.in_shapes[0])], None
            return [torch.einsum(f"{self.a_spec},{self.specs[1 - k]}->{target}", A, W)], None
        la, lb, ub = rel
        pos, neg = A.clamp(min=0), A.clamp(max=0)
        coef_a = self._coef(pos, lb, 0) + self._coef(neg, ub, 0)
        coef_b = self._coef(A, la, 1)
        br = self.out[0] + self.r
        s0, s1 = self.specs
        bias = torch.einsum(f"{self.a_spec},{s0},{s1}->{br}", pos, la, lb) + torch.einsum(
            f"{self.a_spec},{s0},{s1}->{br}", neg, la, ub
        )
        return [coef_a, coef_b], -bias


@register(
    torch.einsum,
    operator.matmul,
    torch.matmul,
    "matmul",
    torch.bmm,
    "bmm",
)
def _einsum(call: Call) -> Op:
    return Einsum.from_call(call)
