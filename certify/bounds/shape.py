"""Shape operators: reshapes, permutations, element selection by constant indices, concatenation.

Each output element is one input element (or a copy of one), so every operator here is linear
and exact under CROWN: the backward step moves the coefficients back to the elements they came
from (summing over copies). The batch dimension is never touched; operators that would mix
examples are refused when the graph is built.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor, nn

from certify.bounds.protocol import BackwardStep, Call, Interval, Op, full_dim, is_var, register

_IDENTITY_METHODS = ("contiguous", "detach", "clone", "float")


@register(
    nn.Identity,
    nn.Dropout,
    nn.Flatten,
    nn.Unflatten,
    torch.flatten,
    "flatten",
    "view",
    "reshape",
    torch.reshape,
    torch.unsqueeze,
    "unsqueeze",
    torch.squeeze,
    "squeeze",
    *_IDENTITY_METHODS,
)
class Reshape(Op):
    """Operators that keep the flattened order of the elements: identity, ``Flatten``,
    ``Unflatten``, ``view``/``reshape``, ``(un)squeeze``, ``contiguous``/``detach``/``clone``,
    dropout (identity: bounds describe the network in eval mode) and ``float`` (identity: the
    graph computes in the input's dtype)."""

    linear = True
    flat_identity = True

    def __init__(self, fn=None, name: str = "reshape") -> None:
        self.fn = fn
        self.name = name

    @classmethod
    def from_module(cls, m: nn.Module) -> Reshape:
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            return cls(m)
        return cls()

    @classmethod
    def from_call(cls, call: Call) -> Reshape:
        if call.target in _IDENTITY_METHODS:
            return cls()
        return cls(call.apply)

    def forward(self, x: Tensor) -> Tensor:
        return x if self.fn is None else self.fn(x)

    def ibp(self, b: Interval) -> Interval:
        return self.forward(b[0]), self.forward(b[1])

    def ibp_stacked(self, z: Tensor) -> Tensor | None:
        return z if len(self.in_shapes[0]) == 1 and len(self.out_shape) == 1 else None

    def backward(self, A: Tensor, rel=None) -> BackwardStep:
        return [A.reshape(*A.shape[:2], *self.in_shapes[0])], None

    def symbolic(self, state, rel, bound):
        return state if len(self.in_shapes[0]) == 1 and len(self.out_shape) == 1 else None

    def jacobian(self, z: Tensor) -> tuple[str, Tensor | None]:
        return "I", None


@register(torch.permute, "permute", torch.transpose, "transpose", torch.swapaxes, "swapaxes")
class Permute(Op):
    """``permute`` and ``transpose`` of non-batch dimensions."""

    linear = True

    def __init__(self, call: Call) -> None:
        self.call = call

    @classmethod
    def from_call(cls, call: Call) -> Permute:
        return cls(call)

    def bind(self, in_shapes, out_shape) -> None:
        super().bind(in_shapes, out_shape)
        nd = len(in_shapes[0]) + 1
        # the permutation: apply the call to a tensor whose size along dim k is k + 2
        sizes = [k + 2 for k in range(nd)]
        out = self.call.apply(torch.empty(sizes))
        self.perm = [sizes.index(s) for s in out.shape]
        if self.perm[0] != 0:
            raise NotImplementedError(f"certify: {self.label} moves the batch dimension")
        inv = [self.perm.index(k) for k in range(nd)]
        self.inv = [0, 1] + [inv[k] + 1 for k in range(1, nd)]

    def forward(self, x: Tensor) -> Tensor:
        return self.call.apply(x)

    def ibp(self, b: Interval) -> Interval:
        return self.forward(b[0]), self.forward(b[1])

    def backward(self, A: Tensor, rel=None) -> BackwardStep:
        return [A.permute(*self.inv)], None


@register(
    operator.getitem,
    torch.index_select,
    "index_select",
    torch.narrow,
    "narrow",
    torch.select,
    "select",
    torch.gather,
    "gather",
    torch.take_along_dim,
    "take_along_dim",
    "expand",
    "repeat",
    torch.tile,
    "tile",
    torch.flip,
    "flip",
    torch.roll,
    "roll",
    torch.movedim,
    "movedim",
    torch.diagonal,
    "diagonal",
    torch.repeat_interleave,
    "repeat_interleave",
)
class Select(Op):
    """Every output element is a copy of one input element chosen by constant indices:
    indexing (ints, slices, ``None``, index tensors, boolean masks), ``gather``,
    ``index_select``, ``narrow``, ``expand``, ``repeat``, ``flip``, ``roll``, ... The index map
    is found once by applying the call to the element numbers; the backward step sums the
    coefficients of every copy back onto its source (``index_add``)."""

    linear = True

    def __init__(self, call: Call) -> None:
        self.call = call

    @classmethod
    def from_call(cls, call: Call) -> Select:
        for a in [*call.args[1:], *call.kwargs.values()]:
            if is_var(a) or (isinstance(a, (list, tuple)) and any(is_var(v) for v in a)):
                raise call.fail("indices computed from the input are not supported")
        return cls(call)

    def bind(self, in_shapes, out_shape) -> None:
        super().bind(in_shapes, out_shape)
        n = 1
        for s in in_shapes[0]:
            n *= s
        src = torch.arange(2 * n, device=self.call.device).reshape(2, *in_shapes[0])
        out = self.call.apply(src)
        if tuple(out.shape) != (2, *out_shape) or not torch.equal(out[1], out[0] + n):
            raise NotImplementedError(f"certify: {self.label} mixes the examples of the batch")
        self.index = out[0].reshape(-1)
        self.n_in = n

    def forward(self, x: Tensor) -> Tensor:
        return self.call.apply(x)

    def ibp(self, b: Interval) -> Interval:
        return self.forward(b[0]), self.forward(b[1])

    def backward(self, A: Tensor, rel=None) -> BackwardStep:
        B, R = A.shape[:2]
        idx = self.index.to(A.device)
        out = A.new_zeros(B, R, self.n_in).index_add(2, idx, A.reshape(B, R, -1))
        return [out.reshape(B, R, *self.in_shapes[0])], None


@register(torch.cat, torch.concat, torch.concatenate, torch.stack)
class Cat(Op):
    """``torch.cat`` / ``torch.stack`` of traced tensors along a non-batch dimension."""

    linear = True

    def __init__(self, dim: int, stack: bool) -> None:
        self.dim_arg = dim
        self.stack = stack

    @classmethod
    def from_call(cls, call: Call) -> Cat:
        parts = call.arg(0, "tensors")
        if not all(is_var(p) for p in parts):
            raise call.fail("concatenating constant tensors is not supported (batch sizes differ)")
        return cls(int(call.arg(1, "dim", 0)), call.target is torch.stack)

    def bind(self, in_shapes, out_shape) -> None:
        super().bind(in_shapes, out_shape)
        self.dim = full_dim(self.dim_arg, len(out_shape) + 1, self.label)
        self.sizes = [1 if self.stack else s[self.dim - 1] for s in in_shapes]

    def forward(self, *xs: Tensor) -> Tensor:
        dim = getattr(self, "dim", self.dim_arg)
        return torch.stack(xs, dim) if self.stack else torch.cat(xs, dim)

    def ibp(self, *bounds: Interval) -> Interval:
        return self.forward(*[b[0] for b in bounds]), self.forward(*[b[1] for b in bounds])

    def backward(self, A: Tensor, rel=None) -> BackwardStep:
        parts = A.split(self.sizes, dim=self.dim + 1)
        if self.stack:
            parts = tuple(p.squeeze(self.dim + 1) for p in parts)
        return list(parts), None
