"""The operator protocol of the bound engine, and the registry that maps torch code onto it.

One class per operator owns everything the engines need to know about it (cf. auto_LiRPA's
``Bound`` classes); the engines (IBP, CROWN, CROWN-IBP) only call these methods:

* ``forward(*xs)``: the plain computation on batch-first tensors (B, ...);
* ``ibp(*bounds)``: interval propagation (Gowal et al., 2018), each bound a ``(lower, upper)``
  pair of (B, ...) tensors;
* ``relaxation(*bounds)``: for nonlinear operators, what the backward step needs from the input
  bounds (slopes and intercepts of linear lower/upper bounds, McCormick planes, ...) as a tuple
  of batch-first tensors (the engine may keep only some examples: ``t[sel]``);
* ``backward(A, rel)``: one CROWN step (Zhang et al., NeurIPS 2018). ``A`` (B, R, *out_shape)
  holds R linear functions of the output y; it returns coefficients ``A_k`` (B, R, *in_shape_k)
  per input (``None`` where an input does not matter) and a bias (B, R) (or ``None``) with

      sum(A * y) >= sum_k sum(A_k * x_k) + bias

  for every input x_k within the bounds the relaxation was built from. It is a *lower* bound;
  upper bounds are lower bounds of ``-A``. Linear operators (``linear = True``) are exact and
  need no relaxation;
* ``tighten_mask(lo, hi)``: which elements of an input the relaxation is sensitive to (a bool
  mask, or ``None`` for all): CROWN computes backward bounds for those elements only (e.g. the
  unstable neurons l < 0 < u of a ReLU).

Optional fast paths (defaults are correct, only slower): ``input_bounds`` (exact bounds when the
operator reads the network input directly), ``rows`` (backward rows of selected outputs without
an identity matrix), ``symbolic`` (a step of the zonotope screen), ``ibp_inplace`` /
``ibp_stacked`` (interval steps that may overwrite their arguments / work on ``[l, u]`` stacked),
``ibp_spec`` (interval bounds of ``C @ y`` folded into the operator) and ``jacobian`` (its factor
in a local linearisation, for :mod:`certify.tightness`).

Adding an operator is adding one class, registered for the torch callables, ``Tensor`` method
names and module types it handles::

    @register(torch.erf, "erf")
    class Erf(SShaped):
        def fn(self, z): return torch.erf(z)
        def df(self, z): return 2 / math.sqrt(math.pi) * torch.exp(-z * z)

``from_call(call)`` (functions and methods) and ``from_module(module)`` (modules) build the
instance; the defaults call the constructor without arguments. An operator that cannot be bounded
by some method raises ``NotImplementedError`` naming itself and the method, before any work.
"""

from __future__ import annotations

import builtins
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

Interval = tuple[Tensor, Tensor]
Relaxation = tuple[Tensor | None, ...]
BackwardStep = tuple[list[Tensor | None], Tensor | None]


class Op:
    """Base operator. Subclasses override ``forward`` and ``ibp``, and ``relaxation`` plus
    ``backward`` for CROWN (or set ``crown = False``)."""

    name: str = "op"
    what: str = ""
    """The torch callable / module the operator came from, for error messages."""
    linear: ClassVar[bool] = False
    """Backward is exact and needs no input bounds (affine maps, shape operations)."""
    flat_identity: ClassVar[bool] = False
    """The flattened output equals the flattened input (reshape, flatten, casts)."""
    piecewise_linear: ClassVar[bool] = False
    """ReLU-like: relaxations are exact on stable neurons (the zonotope screen pays off)."""
    crown: ClassVar[bool] = True
    """Has a backward step (``False``: IBP only; CROWN raises naming the operator)."""
    in_shapes: list[tuple[int, ...]]
    out_shape: tuple[int, ...]

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_call(cls, call: Call) -> Op | list[Op]:
        """The operator for a traced function / method call (a list: a chain of operators, the
        first taking the call's tensors, each next one the previous output)."""
        return cls()

    @classmethod
    def from_module(cls, module: nn.Module) -> Op:
        return cls()

    def bind(self, in_shapes: list[tuple[int, ...]], out_shape: tuple[int, ...]) -> None:
        """Record the input and output shapes (without batch), known after tracing."""
        self.in_shapes = in_shapes
        self.out_shape = out_shape

    # ---------------------------------------------------------------- the protocol
    def forward(self, *xs: Tensor) -> Tensor:
        raise NotImplementedError

    def ibp(self, *bounds: Interval) -> Interval:
        raise NotImplementedError(f"certify: no interval bounds for {self.label}")

    def relaxation(self, *bounds: Interval) -> Relaxation:
        """What :meth:`backward` needs from the input bounds (nonlinear operators)."""
        raise self.no_crown()

    def backward(self, A: Tensor, rel: Relaxation | None) -> BackwardStep:
        raise self.no_crown()

    def tighten_mask(self, lo: Tensor, hi: Tensor) -> Tensor | None:
        """Elements of an input whose bounds the relaxation depends on (``None``: all)."""
        return None

    # ---------------------------------------------------------------- optional fast paths
    def input_bounds(self, inp) -> Interval | None:
        """Exact bounds when the only input is the network input (flattened), or ``None``."""
        return None

    def rows(self, idx: Tensor, n: int) -> tuple[Tensor, Tensor] | None:
        """Backward rows (B, R, *in_shape) and biases (B, R) of output elements ``idx`` (B, R)
        (indices >= n select ``-y[idx - n]``), or ``None`` (the engine uses one-hot rows)."""
        return None

    def symbolic(self, state, rel: Relaxation | None, bound: Interval):
        """The zonotope screen's step (:mod:`certify.bounds.symbolic`), ``None`` if unsupported."""
        return None

    def ibp_inplace(self, lo: Tensor, hi: Tensor) -> Interval:
        """Like ``ibp`` but free to overwrite ``lo``/``hi`` (used without autograd)."""
        return self.ibp((lo, hi))

    def ibp_stacked(self, z: Tensor) -> Tensor | None:
        """Interval step on ``[l, u]`` stacked as one (B, 2n) tensor, or ``None``."""
        return None

    def ibp_spec(self, C: Tensor, *bounds: Interval) -> Interval:
        """Interval bounds (B, m) of ``C @ y`` (C: (m, n) or (B, m, n)); y's shape is (n,)."""
        lo, hi = self.ibp(*bounds)
        return ibp_spec((lo.flatten(1), hi.flatten(1)), C)

    def mismatch(self, ins: list[Tensor], x_shape: tuple, direct: bool) -> str | None:
        """Why the operator cannot take ``ins`` (from an input of feature shape ``x_shape``;
        ``direct``: ``ins`` are the input up to reshapes), or ``None`` for the generic message."""
        return None

    def jacobian(self, z: Tensor) -> tuple[str, Tensor | None]:
        """Factor of the local linearisation at ``z``: ``("W", weight)``, ``("D", slopes)`` or
        ``("I", None)`` (identity)."""
        raise NotImplementedError(f"certify: no local linearisation for {self.label}")

    # ---------------------------------------------------------------- helpers
    @property
    def label(self) -> str:
        return f"{self.what or type(self).__name__} (node {self.name!r})"

    def no_crown(self) -> NotImplementedError:
        return NotImplementedError(
            f"certify: no CROWN relaxation for {self.label}; methods 'crown' and 'crown-ibp' "
            "are unavailable for this model, use method='ibp'"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


def ibp_spec(b: Interval, C: Tensor | None) -> Interval:
    """Interval of ``C y`` from the interval of ``y`` (B, n) (C: (m, n) or (B, m, n))."""
    lo, hi = b
    if C is None:
        return lo, hi
    Cb = C if C.dim() == 3 else C.unsqueeze(0)
    Cp, Cn = Cb.clamp(min=0), Cb.clamp(max=0)
    lower = (Cp @ lo.unsqueeze(-1) + Cn @ hi.unsqueeze(-1)).squeeze(-1)
    upper = (Cp @ hi.unsqueeze(-1) + Cn @ lo.unsqueeze(-1)).squeeze(-1)
    return lower, upper


# -------------------------------------------------------------------------- traced calls


@dataclass(frozen=True)
class Var:
    """A traced tensor among a call's arguments: the ``index``-th one in order of appearance."""

    index: int


class _Batch:
    """The batch size where a call's argument is computed from the input's shape
    (``x.view(x.shape[0], -1)``); replaced by the actual batch size at every call."""

    def __repr__(self) -> str:
        return "BATCH"


BATCH = _Batch()


@dataclass
class Call:
    """A traced function or method call: traced tensors appear as :class:`Var`, everything else
    (parameters, buffers, numbers) as constants."""

    target: Any
    args: tuple
    kwargs: dict = field(default_factory=dict)
    name: str = "call"
    sources: list = field(default_factory=list)
    """The graph node behind each :class:`Var`, by ``Var.index``."""

    def same_source(self, a: Var, b: Var) -> bool:
        return self.sources[a.index] == self.sources[b.index]

    def arg(self, i: int, key: str | None = None, default: Any = ...) -> Any:
        """Positional argument ``i`` or keyword ``key``; ``default`` when absent."""
        if i < len(self.args):
            return self.args[i]
        if key is not None and key in self.kwargs:
            return self.kwargs[key]
        if default is ...:
            raise NotImplementedError(f"certify: {self.what} (node {self.name!r}) lacks {key}")
        return default

    @property
    def what(self) -> str:
        return target_name(self.target)

    def apply(self, *xs: Tensor) -> Tensor:
        """Run the call with the traced tensors ``xs`` (and the batch size of ``xs[0]``)."""
        batch = xs[0].shape[0]

        def sub(a):
            if isinstance(a, Var):
                return xs[a.index]
            if a is BATCH:
                return batch
            if isinstance(a, (list, tuple)):
                return type(a)(sub(v) for v in a)
            if isinstance(a, slice):
                return slice(sub(a.start), sub(a.stop), sub(a.step))
            return a

        args, kwargs = sub(self.args), {k: sub(v) for k, v in self.kwargs.items()}
        if isinstance(self.target, str):
            return getattr(args[0], self.target)(*args[1:], **kwargs)
        return self.target(*args, **kwargs)

    @property
    def device(self) -> torch.device:
        """The device of the call's constant tensors (CPU if it has none)."""
        found = []

        def scan(a):
            if isinstance(a, Tensor):
                found.append(a.device)
            elif isinstance(a, (list, tuple)):
                for v in a:
                    scan(v)

        scan(self.args)
        scan(tuple(self.kwargs.values()))
        return found[0] if found else torch.device("cpu")

    def fail(self, reason: str) -> NotImplementedError:
        return NotImplementedError(f"certify: {self.what} (node {self.name!r}): {reason}")


def target_name(target: Any) -> str:
    """``torch.matmul``, ``Tensor.view``, ``operator.mul``, ``nn.Linear`` ..."""
    if isinstance(target, str):
        return f"Tensor.{target}"
    if isinstance(target, type):
        return f"nn.{target.__name__}" if issubclass(target, nn.Module) else target.__name__
    name = getattr(target, "__name__", repr(target))
    if getattr(builtins, name, None) is target:
        return f"builtins.{name}"
    if getattr(operator, name, None) is target:
        return f"operator.{name}"
    if getattr(torch.nn.functional, name, None) is target:
        return f"F.{name}"
    return f"torch.{name}"


def is_var(a: Any) -> bool:
    return isinstance(a, Var)


# -------------------------------------------------------------------------- the registry

_CALLS: dict[Any, Callable[[Call], Op | list[Op]]] = {}
_MODULES: dict[type, Callable[[nn.Module], Op]] = {}


def register(*targets: Any) -> Callable:
    """Class decorator: ``cls`` handles these torch callables, method names (str) and module
    types. A plain function ``(call) -> Op`` may be registered the same way (a dispatcher)."""

    def deco(obj):
        for t in targets:
            if isinstance(t, type) and issubclass(t, nn.Module):
                _MODULES[t] = obj.from_module
            else:
                _CALLS[t] = obj.from_call if isinstance(obj, type) else obj
        return obj

    return deco


def op_for_module(m: nn.Module, name: str) -> Op:
    factory = _MODULES.get(type(m))
    if factory is None:
        raise NotImplementedError(
            f"certify: unsupported layer {type(m).__name__} ({name!r}): no IBP or CROWN bounds "
            f"for it; supported modules: {', '.join(sorted(t.__name__ for t in _MODULES))}"
        )
    return _named(factory(m), name, f"nn.{type(m).__name__}")


def ops_for_call(call: Call) -> tuple[list[Op], list[Var] | None]:
    """The operators of a call (a chain) and the Vars its first one takes (``None``: all of the
    call's Vars in order). A factory selects Vars by returning ``(op, [var, ...])``."""
    factory = _CALLS.get(call.target)
    if factory is None:
        raise NotImplementedError(
            f"certify: unsupported operation {call.what} (node {call.name!r}): no IBP or CROWN "
            "bounds for it"
        )
    out = factory(call)
    chosen = None
    if isinstance(out, tuple):
        out, chosen = out
    ops = out if isinstance(out, list) else [out]
    for k, op in enumerate(ops):
        _named(op, call.name if k == 0 else f"{call.name}.{k}", op.what or call.what)
    return ops, chosen


def _named(op: Op, name: str, what: str) -> Op:
    op.name = name
    op.what = what
    return op


def registered_targets() -> list[str]:
    """Names of everything the registry handles (for documentation and tests)."""
    return sorted({target_name(t) for t in _CALLS} | {target_name(t) for t in _MODULES})


# -------------------------------------------------------------------------- shared helpers


def full_dim(d: int, ndim: int, label: str) -> int:
    """Dimension ``d`` of a (B, ...) tensor with ``ndim`` dims as a positive index >= 1."""
    d = d + ndim if d < 0 else d
    if not 1 <= d < ndim:
        raise NotImplementedError(
            f"certify: {label} works on dimension {d} of a {ndim}-dim tensor; the batch "
            "dimension 0 must stay untouched"
        )
    return d


def same_rank(op: Op) -> None:
    """Element-wise operators: every traced input has the output's rank (size-1 dimensions may
    broadcast); a rank change would move the batch dimension."""
    for s in op.in_shapes:
        if len(s) != len(op.out_shape):
            raise NotImplementedError(
                f"certify: {op.label} broadcasts an input of shape (B, {s}) to (B, "
                f"{op.out_shape}); give both operands the same number of dimensions"
            )


def unbroadcast(A: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Sum ``A`` (B, R, *s) over the size-1 dimensions of ``shape`` that broadcasting expanded
    (``shape`` has the rank of ``s``)."""
    dims = tuple(2 + k for k, n in enumerate(shape) if n == 1 and A.shape[2 + k] != 1)
    return A.sum(dim=dims, keepdim=True) if dims else A


def as_const(c: Any, like: Tensor) -> Tensor | float:
    """A constant operand as a float or a tensor of ``like``'s dtype and device."""
    if isinstance(c, Tensor):
        return c.to(dtype=like.dtype, device=like.device)
    return float(c)


def const_dot(A: Tensor, c: Tensor | float) -> Tensor:
    """``sum(A * c)`` over all but the first two dims of A (B, R, ...), with 0 * inf = 0: an
    infinite constant (a -inf mask) only counts where its coefficient is non-zero, and then
    makes the sum infinite. No gradient passes through an infinite entry (it would be NaN)."""
    if not isinstance(c, Tensor):
        if math.isfinite(c):
            return (A * c).flatten(2).sum(-1)
        c = torch.tensor(c, dtype=A.dtype, device=A.device)
    finite = torch.isfinite(c)
    if bool(finite.all()):
        return (A * c).flatten(2).sum(-1)
    zero = torch.zeros((), dtype=A.dtype, device=A.device)
    out = (A * torch.where(finite, c, zero)).flatten(2).sum(-1)
    signed = (A.detach() * torch.where(finite, zero, torch.sign(c))).flatten(2)
    out = torch.where((signed > 0).any(-1), torch.inf, out)
    return torch.where((signed < 0).any(-1), -torch.inf, out)
