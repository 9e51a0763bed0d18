"""The linear operator family: affine maps, sums and differences, scaling by constants, batch
normalisation (eval), reductions and masking by constants.

All of them are exact under CROWN (``linear = True``): the backward step maps the coefficients
of the output to those of the inputs and collects the constant part in the bias. Interval
propagation uses the centre/radius form, exact per output for a box input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from certify.bounds import gemm
from certify.bounds import symbolic as sym
from certify.bounds.inputs import concretize_lower
from certify.bounds.protocol import (
    BackwardStep,
    Call,
    Interval,
    Op,
    as_const,
    const_dot,
    full_dim,
    is_var,
    register,
    same_rank,
    unbroadcast,
)


@register(nn.Linear, torch.nn.functional.linear)
class Linear(Op):
    """``y = x W^T + b`` on the last dimension (``nn.Linear`` / ``F.linear``); inputs of any
    rank (B, ..., n_in)."""

    linear = True

    def __init__(self, weight: Tensor, bias: Tensor | None, name: str = "linear") -> None:
        self.weight = weight
        self.bias = bias
        self.name = name

    @classmethod
    def from_module(cls, m: nn.Module) -> Linear:
        return cls(m.weight, m.bias)

    @classmethod
    def from_call(cls, call: Call) -> Linear:
        w, b = call.arg(1, "weight"), call.arg(2, "bias", None)
        if is_var(w) or is_var(b):
            raise call.fail("a weight computed from the input is not supported; use torch.matmul")
        return cls(w, b)

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)

    @property
    def flat(self) -> bool:
        """Input and output are (B, n) vectors."""
        return len(self.in_shapes[0]) == 1

    def ibp(self, b: Interval) -> Interval:
        """Centre/radius form: mu' = W mu + b, r' = |W| r (exact per output for a box).

        The halving is folded into the (small) weight matrices: mu' = (W/2)(l + u) + b,
        r' = (|W|/2)(u - l).
        """
        lo, hi = b
        half, half_abs = self._halves()
        c = gemm.linear(lo + hi, half, self.bias)
        r = gemm.linear(hi - lo, half_abs)
        return c - r, c + r

    def ibp_inplace(self, lo: Tensor, hi: Tensor) -> Interval:
        half, half_abs = self._halves()
        s = torch.add(lo, hi)
        d = torch.sub(hi, lo, out=hi)
        c = gemm.linear(s, half, self.bias)
        r = gemm.linear(d, half_abs)
        return torch.sub(c, r, out=s) if s.shape == c.shape else c - r, c.add_(r)

    def ibp_stacked(self, z: Tensor) -> Tensor | None:
        if not self.flat:
            return None
        M, bias = self.stacked()
        return torch.addmm(bias, z, M) if bias is not None else z @ M

    def ibp_spec(self, C: Tensor, b: Interval) -> Interval:
        """IBP of ``C (W y + bias)`` as one affine map (C: (m, n) or (B, m, n))."""
        if not self.flat:
            return super().ibp_spec(C, b)
        mu, r = (b[1] + b[0]) / 2, (b[1] - b[0]) / 2
        W = C @ self.weight  # (m, k) or (B, m, k)
        bias = C @ self.bias_or_zero
        if W.dim() == 2:
            c = mu @ W.T + bias
            rad = r @ W.abs().T
        else:
            c = (W @ mu.unsqueeze(-1)).squeeze(-1) + bias
            rad = (W.abs() @ r.unsqueeze(-1)).squeeze(-1)
        return c - rad, c + rad

    def backward(self, A: Tensor, rel=None) -> BackwardStep:
        const = None
        if self.bias is not None:
            const = A @ self.bias
            if const.dim() > 2:
                const = const.flatten(2).sum(-1)
        return [gemm.linear(A, self.weight.T)], const

    def input_bounds(self, inp) -> Interval | None:
        """Exact per-neuron bounds of ``W x + b`` over the input set (dual norm for l_p)."""
        if not self.flat:
            return None
        W = self.weight
        lower = concretize_lower(W, self.bias_or_zero, inp, lambda t: t.unsqueeze(1))
        upper = -concretize_lower(-W, -self.bias_or_zero, inp, lambda t: t.unsqueeze(1))
        return lower, upper

    def rows(self, idx: Tensor, n: int) -> tuple[Tensor, Tensor] | None:
        if not self.flat:
            return None
        W, b = self.weight, self.bias_or_zero
        return torch.cat([W, -W])[idx], torch.cat([b, -b])[idx]

    def symbolic(self, state, rel, bound):
        return sym.affine(state, self) if self.flat else None

    def jacobian(self, z: Tensor) -> tuple[str, Tensor | None]:
        return "W", self.weight

    def mismatch(self, ins: list[Tensor], x_shape: tuple, direct: bool) -> str | None:
        takes, got = self.weight.shape[1], ins[0].shape[-1]
        if direct:
            return (
                f"x has {got} features (feature shape {x_shape}) where the model's first linear "
                f"layer {self.name!r} takes {takes}; pass x of shape (B, {takes})"
            )
        return (
            f"layer {self.name!r} takes {takes} input features but receives {got} for x of "
            f"feature shape {x_shape}: the model's layers do not fit together"
        )

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


Affine = Linear  # the name used before the operator protocol


class ScaleShift(Op):
    """``y = x * scale + shift`` with constants broadcastable to x (multiplication, division,
    addition and subtraction by constants, negation, masking by a constant 0/1 tensor). A
    non-finite shift (a ``-inf`` padding mask) only enters the bias where its coefficient is
    non-zero."""

    linear = True

    def __init__(self, scale: Tensor | float = 1.0, shift: Tensor | float = 0.0) -> None:
        self.scale = scale
        self.shift = shift

    def bind(self, in_shapes, out_shape) -> None:
        super().bind(in_shapes, out_shape)
        same_rank(self)

    def forward(self, x: Tensor) -> Tensor:
        s, t = as_const(self.scale, x), as_const(self.shift, x)
        y = x if isinstance(s, float) and s == 1.0 else x * s
        return y if isinstance(t, float) and t == 0.0 else y + t

    def ibp(self, b: Interval) -> Interval:
        lo, hi = b
        s, t = as_const(self.scale, lo), as_const(self.shift, lo)
        if isinstance(s, float):
            p, q = (lo * s, hi * s) if s >= 0 else (hi * s, lo * s)
        else:
            p, q = lo * s, hi * s
            p, q = torch.minimum(p, q), torch.maximum(p, q)
        return p + t, q + t

    def backward(self, A: Tensor, rel=None) -> BackwardStep:
        s, t = as_const(self.scale, A), as_const(self.shift, A)
        A_in = A if isinstance(s, float) and s == 1.0 else A * s
        const = None if isinstance(t, float) and t == 0.0 else const_dot(A, t)
        return [unbroadcast(A_in, self.in_shapes[0])], const

    def jacobian(self, z: Tensor) -> tuple[str, Tensor | None]:
        s = as_const(self.scale, z)
        return "D", torch.broadcast_to(torch.as_tensor(s, dtype=z.dtype), z.shape)


class Add(Op):
    """Sum of two traced tensors (residual connections), with broadcasting."""

    linear = True

    def bind(self, in_shapes, out_shape) -> None:
        super().bind(in_shapes, out_shape)
        same_rank(self)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b

    def ibp(self, a: Interval, b: Interval) -> Interval:
        return a[0] + b[0], a[1] + b[1]

    def backward(self, A: Tensor, rel=None) -> BackwardStep:
        return [unbroadcast(A, s) for s in self.in_shapes], None


class Sub(Add):
    """Difference of two traced tensors: [l1 - u2, u1 - l2]."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a - b

    def ibp(self, a: Interval, b: Interval) -> Interval:
        return a[0] - b[1], a[1] - b[0]

    def backward(self, A: Tensor, rel=None) -> BackwardStep:
        return [unbroadcast(A, self.in_shapes[0]), unbroadcast(-A, self.in_shapes[1])], None


@register(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
class BatchNorm(ScaleShift):
    """Batch normalisation in eval mode: a per-channel (dimension 1) scale and shift from the
    running statistics, read at every call (training mode normalises by batch statistics,
    which couples the examples: refused)."""

    def __init__(self, m: nn.Module) -> None:
        self.m = m

    @classmethod
    def from_module(cls, m: nn.Module) -> BatchNorm:
        if m.running_mean is None:
            raise NotImplementedError(
                f"certify: {type(m).__name__} without running statistics cannot be bounded"
            )
        return cls(m)

    def forward(self, x: Tensor) -> Tensor:
        self._check()
        return self.m(x)

    def _check(self) -> None:
        if self.m.training:
            raise NotImplementedError(
                f"certify: {self.label} is in training mode (batch statistics couple the "
                "examples); call model.eval() before bounding"
            )

    def _scale_shift(self) -> tuple[Tensor, Tensor]:
        self._check()
        m = self.m
        s = torch.rsqrt(m.running_var + m.eps)
        s = s * m.weight if m.weight is not None else s
        t = -m.running_mean * s
        t = t + m.bias if m.bias is not None else t
        shape = (-1, *[1] * (len(self.in_shapes[0]) - 1))
        return s.reshape(shape), t.reshape(shape)

    @property
    def scale(self) -> Tensor:  # type: ignore[override]
        return self._scale_shift()[0]

    @property
    def shift(self) -> Tensor:  # type: ignore[override]
        return self._scale_shift()[1]


@register(torch.sum, "sum", torch.mean, "mean")
class Reduce(Op):
    """Sum or mean over constant dimensions (never the batch)."""

    linear = True

    def __init__(self, dims, keepdim: bool, mean: bool) -> None:
        self.dims_arg = dims
        self.keepdim = keepdim
        self.mean = mean

    @classmethod
    def from_call(cls, call: Call) -> Reduce:
        dims = call.arg(1, "dim", None)
        if dims is None:
            raise call.fail("a reduction over every dimension mixes the batch; pass dim=")
        if call.arg(3, "dtype", None) is not None:
            raise call.fail("dtype= is not supported")
        mean = call.target in (torch.mean, "mean")
        return cls(dims, bool(call.arg(2, "keepdim", False)), mean)

    def bind(self, in_shapes, out_shape) -> None:
        super().bind(in_shapes, out_shape)
        nd = len(in_shapes[0]) + 1
        dims = self.dims_arg if isinstance(self.dims_arg, (list, tuple)) else [self.dims_arg]
        self.dims = sorted(full_dim(int(d), nd, self.label) for d in dims)
        count = 1
        for d in self.dims:
            count *= in_shapes[0][d - 1]
        self.factor = 1.0 / count if self.mean else 1.0

    def forward(self, x: Tensor) -> Tensor:
        dims = getattr(self, "dims", self.dims_arg)
        if self.mean:
            return x.mean(dim=dims, keepdim=self.keepdim)
        return x.sum(dim=dims, keepdim=self.keepdim)

    def ibp(self, b: Interval) -> Interval:
        return self.forward(b[0]), self.forward(b[1])

    def backward(self, A: Tensor, rel=None) -> BackwardStep:
        if not self.keepdim:
            for d in self.dims:  # ascending: each insertion keeps the later positions right
                A = A.unsqueeze(d + 1)
        A = A.expand(*A.shape[:2], *self.in_shapes[0])
        return [A * self.factor if self.mean else A], None


@register(torch.where, "masked_fill", torch.masked_fill)
class Where(Op):
    """``torch.where(cond, a, b)`` and ``masked_fill`` with a constant condition; each branch is
    traced or constant (``-inf`` allowed: a padding mask before a softmax)."""

    linear = True

    def __init__(self, cond: Tensor, a, b) -> None:
        self.cond = cond
        self.branches = (a, b)  # Var or constant

    @classmethod
    def from_call(cls, call: Call) -> Where:
        if call.target is torch.where:
            if len(call.args) < 3:
                raise call.fail("only the three-argument form where(cond, a, b) is supported")
            cond, a, b = call.args[:3]
        else:  # x.masked_fill(mask, value) = where(mask, value, x)
            a, cond, b = call.arg(2, "value"), call.arg(1, "mask"), call.arg(0, "input")
        if is_var(cond):
            raise call.fail("the condition must be a constant (it depends on the input here)")
        return cls(cond, a, b)

    def bind(self, in_shapes, out_shape) -> None:
        super().bind(in_shapes, out_shape)
        same_rank(self)
        shapes = iter(in_shapes)
        self.shapes = [next(shapes) if is_var(v) else None for v in self.branches]

    def _values(self, xs) -> list:
        it = iter(xs)
        return [next(it) if is_var(v) else v for v in self.branches]

    def forward(self, *xs: Tensor) -> Tensor:
        a, b = self._values(xs)
        like = xs[0]
        a = a if isinstance(a, Tensor) else torch.as_tensor(a, dtype=like.dtype)
        b = b if isinstance(b, Tensor) else torch.as_tensor(b, dtype=like.dtype)
        return torch.where(self.cond.to(like.device), a.to(like.device), b.to(like.device))

    def ibp(self, *bounds: Interval) -> Interval:
        it = iter(bounds)
        pairs = [next(it) if is_var(v) else (v, v) for v in self.branches]
        lo = self.forward(*[p[0] for p, v in zip(pairs, self.branches, strict=True) if is_var(v)])
        hi = self.forward(*[p[1] for p, v in zip(pairs, self.branches, strict=True) if is_var(v)])
        return lo, hi

    def backward(self, A: Tensor, rel=None) -> BackwardStep:
        cond = self.cond.to(A.device)
        zero = torch.zeros((), dtype=A.dtype, device=A.device)
        parts = [torch.where(cond, A, zero), torch.where(cond, zero, A)]
        coefs: list[Tensor | None] = []
        const = None
        for part, v, shape in zip(parts, self.branches, self.shapes, strict=True):
            if is_var(v):
                coefs.append(unbroadcast(part, shape))
            else:
                c = const_dot(part, as_const(v, A))
                const = c if const is None else const + c
        return coefs, const
