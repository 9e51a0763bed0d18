"""Operator protocol and the linear operator family (affine maps, reshapes, sums).

Every operator implements the same small protocol (cf. auto_LiRPA's ``Bound`` classes):

* ``forward(*xs)``: the plain computation;
* ``ibp(*bounds)``: interval propagation (Gowal et al., 2018), each bound a ``(lower, upper)`` pair;
* ``kind``: how CROWN (Zhang et al., NeurIPS 2018) treats it: ``"affine"`` (exposes ``weight`` and
  ``bias``), ``"activation"`` (element-wise, exposes a linear relaxation), ``"reshape"`` (no-op on
  flattened features) or ``None`` (IBP only).
"""

from __future__ import annotations

import torch
from torch import Tensor

Interval = tuple[Tensor, Tensor]


class Op:
    """Base operator. Subclasses override ``forward`` and ``ibp``."""

    name: str = "op"
    kind: str | None = None

    def forward(self, *xs: Tensor) -> Tensor:
        raise NotImplementedError

    def ibp(self, *bounds: Interval) -> Interval:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class Affine(Op):
    """``y = x W^T + b`` on the last dimension (``nn.Linear`` / ``F.linear``)."""

    kind = "affine"

    def __init__(self, weight: Tensor, bias: Tensor | None, name: str = "linear") -> None:
        self.weight = weight
        self.bias = bias
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)

    def ibp(self, b: Interval) -> Interval:
        """Centre/radius form: mu' = W mu + b, r' = |W| r (exact per output for a box).

        The halving is folded into the (small) weight matrices: mu' = (W/2)(l + u) + b,
        r' = (|W|/2)(u - l).
        """
        lo, hi = b
        half, half_abs = self._halves()
        c = torch.nn.functional.linear(lo + hi, half, self.bias)
        r = torch.nn.functional.linear(hi - lo, half_abs)
        return c - r, c + r

    def _halves(self) -> tuple[Tensor, Tensor]:
        """(W/2, |W|/2), cached while the weight is unchanged (same version) and grad is off."""
        w = self.weight
        if torch.is_grad_enabled() and w.requires_grad:
            half = 0.5 * w
            return half, half.abs()
        key = (w._version, w.data_ptr(), w.dtype, w.device)
        cache = getattr(self, "_half_cache", None)
        if cache is None or cache[0] != key:
            with torch.no_grad():
                half = 0.5 * w
                cache = (key, half, half.abs())
            self._half_cache = cache
        return cache[1], cache[2]

    def stacked(self) -> tuple[Tensor, Tensor | None]:
        """``[[W+^T, W-^T], [W-^T, W+^T]]`` (2 in, 2 out) and ``[b, b]``: one product maps
        ``[l, u]`` to the exact box of ``W x + b``. Cached like :meth:`_halves` (no grad)."""
        w, b = self.weight, self.bias
        key = (w._version, w.data_ptr(), w.dtype, w.device)
        key += (None,) if b is None else (b._version, b.data_ptr())
        cache = getattr(self, "_stack_cache", None)
        if cache is None or cache[0] != key:
            with torch.no_grad():
                pos, neg = w.clamp(min=0).T, w.clamp(max=0).T
                M = torch.cat([torch.cat([pos, neg], 1), torch.cat([neg, pos], 1)], 0)
                bb = None if b is None else torch.cat([b, b]).detach()
            cache = (key, M.contiguous(), bb)
            self._stack_cache = cache
        return cache[1], cache[2]

    @property
    def bias_or_zero(self) -> Tensor:
        if self.bias is None:
            return self.weight.new_zeros(self.weight.shape[0])
        return self.bias


class Reshape(Op):
    """Identity, ``Flatten``, ``view``/``reshape`` and dtype casts: shape-only operators."""

    kind = "reshape"

    def __init__(self, fn, name: str = "reshape") -> None:
        self.fn = fn
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def ibp(self, b: Interval) -> Interval:
        return self.fn(b[0]), self.fn(b[1])


class Add(Op):
    """Sum of two tensors (residual connections) or of a tensor and a constant."""

    def __init__(self, const: Tensor | float | None = None, name: str = "add") -> None:
        self.const = const
        self.name = name

    def forward(self, *xs: Tensor) -> Tensor:
        out = xs[0] if len(xs) == 1 else xs[0] + xs[1]
        return out if self.const is None else out + self.const

    def ibp(self, *bounds: Interval) -> Interval:
        lo = bounds[0][0] if len(bounds) == 1 else bounds[0][0] + bounds[1][0]
        hi = bounds[0][1] if len(bounds) == 1 else bounds[0][1] + bounds[1][1]
        if self.const is not None:
            lo, hi = lo + self.const, hi + self.const
        return lo, hi


class Sub(Op):
    """Difference of two tensors: [l1 - u2, u1 - l2]."""

    name = "sub"

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a - b

    def ibp(self, a: Interval, b: Interval) -> Interval:
        return a[0] - b[1], a[1] - b[0]


class Scale(Op):
    """Multiplication by a constant (scalar or broadcastable tensor)."""

    def __init__(self, const: Tensor | float, name: str = "mul") -> None:
        self.const = const
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        return x * self.const

    def ibp(self, b: Interval) -> Interval:
        p, q = b[0] * self.const, b[1] * self.const
        return torch.minimum(p, q), torch.maximum(p, q)


class Neg(Op):
    """Negation."""

    name = "neg"

    def forward(self, x: Tensor) -> Tensor:
        return -x

    def ibp(self, b: Interval) -> Interval:
        return -b[1], -b[0]
