"""Arithmetic operators (``+ - * / ** neg``): which operator class a call becomes depends on which
operands are traced. With a constant operand the result is linear (:class:`ScaleShift`); with two
traced operands it is :class:`Add`, :class:`Sub`, :class:`Mul` or :class:`Div`; ``c / x`` is a
reciprocal then a scaling; ``x ** p`` is a square, a square root, a reciprocal (square root) or
the identity. Also :class:`Amax`, an operator with interval bounds only."""

from __future__ import annotations

import operator

import torch
from torch import Tensor

from certify.bounds.activations import Reciprocal, Rsqrt, Sqrt, Square
from certify.bounds.ops import Add, ScaleShift, Sub
from certify.bounds.products import Div, Mul
from certify.bounds.protocol import Call, Interval, Op, full_dim, is_var, register
from certify.bounds.shape import Reshape


def _operands(call: Call) -> tuple:
    a, b = call.arg(0, "input"), call.arg(1, "other")
    if call.kwargs.get("alpha", 1) != 1:
        raise call.fail("alpha= is not supported")
    return a, b


def _const(c, call: Call):
    if isinstance(c, Tensor) and not c.is_floating_point():
        c = c.to(torch.get_default_dtype())
    if not isinstance(c, (Tensor, int, float)):
        raise call.fail(f"unsupported constant operand {c!r}")
    return c


@register(operator.add, torch.add, "add", operator.iadd)
def _add(call: Call) -> Op:
    a, b = _operands(call)
    if is_var(a) and is_var(b):
        return Add()
    x_first = is_var(a)
    return ScaleShift(1.0, _const(b if x_first else a, call))


@register(operator.sub, torch.sub, "sub", operator.isub)
def _sub(call: Call) -> Op:
    a, b = _operands(call)
    if is_var(a) and is_var(b):
        return Sub()
    if is_var(a):
        return ScaleShift(1.0, -_const(b, call))
    return ScaleShift(-1.0, _const(a, call))


@register(operator.mul, torch.mul, "mul", operator.imul)
def _mul(call: Call) -> Op | tuple:
    a, b = _operands(call)
    if is_var(a) and is_var(b):
        return (Square(), [a]) if call.same_source(a, b) else Mul()
    return ScaleShift(_const(b if is_var(a) else a, call), 0.0)


@register(operator.truediv, torch.div, torch.true_divide, "div", "true_divide")
def _div(call: Call) -> Op | list[Op]:
    a, b = _operands(call)
    if call.kwargs.get("rounding_mode") is not None:
        raise call.fail("rounding_mode= is not supported")
    if is_var(a) and is_var(b):
        return Div()
    if is_var(a):
        return ScaleShift(1.0 / _const(b, call), 0.0)
    return [Reciprocal(), ScaleShift(_const(a, call), 0.0)]


@register(operator.neg, torch.neg, "neg")
def _neg(call: Call) -> Op:
    return ScaleShift(-1.0, 0.0)


_POWERS = {2: Square, 0.5: Sqrt, -0.5: Rsqrt, -1: Reciprocal}


@register(operator.pow, torch.pow, "pow")
def _pow(call: Call) -> Op:
    base, p = call.arg(0, "input"), call.arg(1, "exponent")
    if not is_var(base) or is_var(p) or not isinstance(p, (int, float)):
        raise call.fail("only a traced base with a constant exponent is supported")
    if p == 1:
        return Reshape()
    if p not in _POWERS:
        raise call.fail(f"no bounds for the power {p} (supported: 1, 2, 0.5, -0.5, -1)")
    return _POWERS[p]()


@register(torch.amax, "amax")
class Amax(Op):
    """Maximum over constant dimensions: interval bounds only (monotone in every entry).
    CROWN raises naming it: its linear relaxation is not implemented."""

    crown = False

    def __init__(self, dims, keepdim: bool) -> None:
        self.dims_arg = dims
        self.keepdim = keepdim

    @classmethod
    def from_call(cls, call: Call) -> Amax:
        return cls(call.arg(1, "dim", ()), bool(call.arg(2, "keepdim", False)))

    def bind(self, in_shapes, out_shape) -> None:
        super().bind(in_shapes, out_shape)
        dims = self.dims_arg if isinstance(self.dims_arg, (list, tuple)) else [self.dims_arg]
        if not dims:
            raise NotImplementedError(f"certify: {self.label} over every dimension mixes the batch")
        nd = len(in_shapes[0]) + 1
        self.dims = [full_dim(int(d), nd, self.label) for d in dims]

    def forward(self, x: Tensor) -> Tensor:
        return torch.amax(x, getattr(self, "dims", self.dims_arg), self.keepdim)

    def ibp(self, b: Interval) -> Interval:
        return self.forward(b[0]), self.forward(b[1])
