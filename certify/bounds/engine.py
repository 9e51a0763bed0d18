"""``compute_bounds``: the public entry point of the bound engine (validation and dispatch)."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from numbers import Real

import torch
from torch import Tensor, nn

from certify.bounds.crown import CrownStats, check_crown, crown_graph
from certify.bounds.graph import Graph, trace
from certify.bounds.ibp import ibp_graph
from certify.bounds.inputs import InputSet
from certify.bounds.structured import bound_groups, select_rows, structure_groups

METHODS = ("ibp", "crown", "crown-ibp")
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_graph(model: nn.Module, x: Tensor) -> Graph:
    """Trace ``model`` once (cached per module, structure and weights) and infer shapes for
    ``x``. Tracing folds what is computed from parameters into constants, so the cache is keyed
    on every parameter's and buffer's storage and version counter too: an in-place update (an
    optimiser step, ``load_state_dict``) retraces."""
    key = (tuple(id(m) for m in model.modules()), _weights_key(model))
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == key and hit[2] == (tuple(x.shape[1:]), x.dtype):
        return hit[1]
    graph = trace(model, x[:1])
    with torch.no_grad():
        graph.infer_shapes(x[:1])
    _CACHE[model] = (key, graph, (tuple(x.shape[1:]), x.dtype))
    return graph


def _weights_key(model: nn.Module) -> tuple | object:
    """Storage and version counter of every parameter and buffer (a fresh object, equal to
    nothing, where a tensor has no version counter: inference-mode tensors)."""
    try:
        return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))
    except RuntimeError:
        return object()


def _as_tensor(v, x: Tensor, what: str) -> Tensor:
    if isinstance(v, Real) and not isinstance(v, bool):
        return torch.tensor(float(v), dtype=x.dtype, device=x.device)
    if isinstance(v, Tensor):
        return v.to(dtype=x.dtype, device=x.device)
    raise TypeError(f"{what} must be a float or a tensor, got {type(v).__name__}")


def _broadcast(v: Tensor, x: Tensor, what: str) -> Tensor:
    try:
        return torch.broadcast_to(v, x.shape)
    except RuntimeError as err:
        raise ValueError(
            f"{what} of shape {tuple(v.shape)} does not broadcast to the input batch shape "
            f"{tuple(x.shape)} (expected a scalar, (features...), (B, 1...) or (B, features...))"
        ) from err


def _check_x(x: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor of shape (B, features...)")
    if x.dim() < 2:
        raise ValueError(f"x must be batched with shape (B, features...), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(
            f"x is an empty batch (shape {tuple(x.shape)}); expected at least one example"
        )


def _check_values(x: Tensor, e: Tensor | float, mn: Tensor | None, mx: Tensor | None) -> None:
    """NaN/inf in ``x``, bad ``eps``, NaN or crossed data bounds, ``x`` outside them: all flags
    are read back together (one host-device synchronisation on CUDA)."""
    if isinstance(e, Tensor):
        e_ok: Tensor | bool = (torch.isfinite(e) & (e >= 0)).all()
    else:
        e_ok = math.isfinite(e) and e >= 0
    checks: list[tuple[Tensor | bool, Callable[[], str]]] = [
        (torch.isfinite(x).all(), lambda: "x contains NaN or infinite values"),
        (e_ok, lambda: "eps must be finite and non-negative (got NaN, inf or a negative value)"),
    ]
    for name, b in (("x_min", mn), ("x_max", mx)):
        if b is not None:
            msg = f"{name} contains NaN; expected numbers (or -inf/inf for no bound)"
            checks.append((~torch.isnan(b).any(), lambda msg=msg: msg))
    if mn is not None and mx is not None:
        checks.append(((mn <= mx).all(), lambda: "x_min must be <= x_max everywhere"))
    if mn is not None:
        checks.append(((x >= mn).all(), lambda: _outside_message(x, mn, 1, "x_min")))
    if mx is not None:
        checks.append(((x <= mx).all(), lambda: _outside_message(x, mx, -1, "x_max")))
    _raise_first(checks)


def _raise_first(checks: list[tuple[Tensor | bool, Callable[[], str]]]) -> None:
    """Raise ``ValueError`` for the first failed check; tensor flags are read in one go."""
    flags = [ok for ok, _ in checks if isinstance(ok, Tensor)]
    read = iter(torch.stack(flags).tolist() if len(flags) > 1 else [bool(f) for f in flags])
    for ok, message in checks:
        if not (next(read) if isinstance(ok, Tensor) else ok):
            raise ValueError(message())


def _outside_message(x: Tensor, bound: Tensor, sign: int, name: str) -> str:
    """Where and by how much ``x`` leaves ``[x_min, x_max]`` (error path only)."""
    gap = (sign * (bound - x)).reshape(x.shape[0], -1)  # > 0 where x is outside
    worst = int(gap.argmax())
    row, feat = divmod(worst, gap.shape[1])
    side = "below" if sign > 0 else "above"
    return (
        f"x lies {side} {name} in {int((gap > 0).sum())} of {gap.numel()} entries, by up to "
        f"{float(gap.max()):.4g} (worst at row {row}, flattened feature {feat}); the "
        f"bounds would not contain f(x): pass x inside [x_min, x_max] or widen the data bounds"
    )


def make_input_set(x: Tensor, eps, norm: float, x_min, x_max) -> InputSet:
    """Validate ``x``, ``eps`` and the data bounds, and build the (flattened) perturbation set."""
    _check_x(x)
    scalar = isinstance(eps, Real) and not isinstance(eps, bool)
    e = eps if scalar else _as_tensor(eps, x, "eps")
    if norm not in (math.inf, 1, 2):
        raise ValueError(f"norm must be math.inf, 1 or 2, got {norm}")
    if norm != math.inf and (x_min is not None or x_max is not None):
        raise ValueError("clipping to x_min/x_max is supported for norm=inf only")
    mn = _broadcast(_as_tensor(x_min, x, "x_min"), x, "x_min") if x_min is not None else None
    mx = _broadcast(_as_tensor(x_max, x, "x_max"), x, "x_max") if x_max is not None else None
    _check_values(x, e, mn, mx)
    B = x.shape[0]
    if norm == math.inf and scalar and mn is None and mx is None:
        lo, hi = x - e, x + e  # no broadcast tensor needed for a float radius
        return InputSet(lo.reshape(B, -1), hi.reshape(B, -1))
    e = _broadcast(_as_tensor(e, x, "eps") if scalar else e, x, "eps")
    if norm == math.inf:
        lo, hi = x - e, x + e
        if mn is not None:
            lo, hi = torch.maximum(lo, mn), torch.maximum(hi, mn)
        if mx is not None:
            lo, hi = torch.minimum(lo, mx), torch.minimum(hi, mx)
        return InputSet(lo.reshape(B, -1), hi.reshape(B, -1))
    ef = e.reshape(B, -1)
    if not (ef == ef[:, :1]).all():
        raise ValueError("per-feature eps is supported for norm=inf only")
    x0 = x.reshape(B, -1)
    return InputSet(x0 - ef, x0 + ef, float(norm), x0, ef[:, :1].clone())


def _check_C(C, B: int, n_out: int, x: Tensor) -> Tensor | None:
    if C is None:
        return None
    if not isinstance(C, Tensor):
        raise TypeError("C must be a tensor of shape (m, n_out) or (B, m, n_out)")
    C = C.to(dtype=x.dtype, device=x.device)
    ok = (C.dim() == 2 and C.shape[1] == n_out) or (
        C.dim() == 3 and C.shape[0] == B and C.shape[2] == n_out
    )
    if not ok:
        raise ValueError(
            f"C must have shape (m, {n_out}) or ({B}, m, {n_out}), got {tuple(C.shape)}"
        )
    if not torch.isfinite(C).all():
        raise ValueError("C contains NaN or infinite values")
    return C


def make_box_set(box) -> tuple[Tensor, InputSet]:
    """Validate an input box ``(lo, hi)`` and build the (flattened) set; also returns its
    centre (the example the model is traced and checked with)."""
    if not (isinstance(box, (tuple, list)) and len(box) == 2):
        raise TypeError("a box must be a pair (lo, hi) of tensors of shape (B, features...)")
    lo, hi = box
    if not (isinstance(lo, Tensor) and isinstance(hi, Tensor)):
        raise TypeError("a box must be a pair (lo, hi) of tensors of shape (B, features...)")
    _check_x(lo)
    if hi.shape != lo.shape or hi.dtype != lo.dtype or hi.device != lo.device:
        raise ValueError(
            f"box lo and hi must have the same shape, dtype and device, got {tuple(lo.shape)} "
            f"{lo.dtype} {lo.device} and {tuple(hi.shape)} {hi.dtype} {hi.device}"
        )
    _raise_first(
        [
            (torch.isfinite(lo).all() & torch.isfinite(hi).all(), _box_nan_message),
            ((lo <= hi).all(), lambda: _crossed_message(lo, hi)),
        ]
    )
    B = lo.shape[0]
    return (lo + hi) / 2, InputSet(lo.reshape(B, -1), hi.reshape(B, -1))


def _box_nan_message() -> str:
    return "box lo and hi must be finite (got NaN or inf)"


def _crossed_message(lo: Tensor, hi: Tensor) -> str:
    gap = (lo - hi).reshape(lo.shape[0], -1)
    worst = int(gap.argmax())
    row, feat = divmod(worst, gap.shape[1])
    return (
        f"box lo must be <= hi everywhere; lo exceeds hi in {int((gap > 0).sum())} entries, by "
        f"up to {float(gap.max()):.4g} (row {row}, flattened feature {feat})"
    )


def compute_bounds(
    model: nn.Module,
    x: Tensor | tuple[Tensor, Tensor],
    eps: float | Tensor | None = None,
    method: str = "ibp",
    norm: float = math.inf,
    C: Tensor | None = None,
    x_min: float | Tensor | None = None,
    x_max: float | Tensor | None = None,
    *,
    fast: bool = True,
    backend: str = "native",
    reference: str = "auto",
    stats: CrownStats | None = None,
) -> tuple[Tensor, Tensor]:
    """Sound bounds on ``C @ model(x')`` (or ``model(x')``) for every x' in the input set: the
    ball of radius ``eps`` around ``x``, or the box ``x = (lo, hi)``.

    Args:
        model: ``nn.Sequential`` or an fx-traceable module mapping (B, ...) to (B, n_out).
        x: (B, features...) batch of centres, or a box ``(lo, hi)`` of two such tensors
            (``lo <= hi``, finite; then leave ``eps``, ``norm``, ``x_min`` and ``x_max`` unset
            and pass ``method`` by keyword).
        eps: radius, a float or a tensor broadcastable to ``x`` (per feature / per example).
        method: ``"ibp"``, ``"crown"`` or ``"crown-ibp"``.
        norm: ``math.inf`` (box, per-feature eps and clipping allowed), 1 or 2.
        C: specification, (m, n_out) or (B, m, n_out).
        x_min, x_max: data bounds (numbers, ±inf for none, or tensors broadcastable to ``x``);
            ``x`` must lie inside them; the ball is intersected with ``[x_min, x_max]``.
        fast: CROWN computes intermediate bounds for unstable neurons only (``False``: the dense
            reference path with full A matrices).
        backend: ``"native"`` or ``"auto_lirpa"`` (when installed).
        reference: CROWN's screen for unstable neurons: ``"ibp"``, ``"symbolic"`` (symbolic
            intervals, tighter) or ``"auto"`` (symbolic for ReLU-like networks).

    Returns:
        ``(lower, upper)``, each (B, m): for every x' in the set, lower <= C f(x') <= upper
        (up to floating-point rounding).

    Raises (before any bound is computed): ``TypeError`` for a non-float ``x`` or one whose dtype
    differs from the model's; ``ValueError`` for an empty batch, NaN/inf in ``x``, a negative or
    non-finite ``eps``, NaN or crossed ``x_min``/``x_max``, ``x`` outside them, a box with
    ``lo > hi`` somewhere, NaN/inf or mismatched shapes, a feature count the model's first layer
    does not take, or a model on another device; ``NotImplementedError`` naming the operator and
    the method where the model has an operator the method cannot bound.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if backend not in ("native", "auto_lirpa"):
        raise ValueError(f"backend must be 'native' or 'auto_lirpa', got {backend!r}")
    if isinstance(x, (tuple, list)):
        if eps is not None:
            raise TypeError(
                "x is a box (lo, hi): eps does not apply (pass method and the other options by "
                f"keyword), got eps={eps!r}"
            )
        if norm != math.inf or x_min is not None or x_max is not None:
            raise ValueError("a box (lo, hi) takes no norm, x_min or x_max: clip the box itself")
        x, inp = make_box_set(x)
    else:
        if eps is None:
            raise TypeError("eps is required with a centre x (or pass a box x=(lo, hi))")
        _check_x(x)
        inp = None
    _check_model(model, x)
    if inp is None:
        inp = make_input_set(x, eps, norm, x_min, x_max)
    groups = structure_groups(model, inp.lo.reshape(x.shape), inp.hi.reshape(x.shape))
    if groups is not None:  # structure decoded from the input (certify.bounds.structured)

        def bound(module, xs, sub, Cs):
            _check_model(module, xs)
            return _bound_set(module, xs, sub, method, Cs, fast, backend, reference, stats)

        return bound_groups(groups, x, lambda rows: select_rows(inp, rows), C, bound)
    return _bound_set(model, x, inp, method, C, fast, backend, reference, stats)


def _bound_set(model, x, inp, method, C, fast, backend, reference, stats) -> tuple[Tensor, Tensor]:
    """Bounds of ``model`` over the (validated) input set ``inp`` around centres ``x``."""
    if backend == "auto_lirpa":
        from certify.backends import auto_lirpa_bounds

        return auto_lirpa_bounds(model, x, inp, method, C)
    graph = get_graph(model, x)
    C = _check_C(C, x.shape[0], graph.widths[-1], x)
    if len(graph.shapes[-1]) != 1:
        raise ValueError(f"the model output must be (B, n_out), got (B, {graph.shapes[-1]})")
    if method == "ibp":
        return ibp_graph(graph, inp, x.shape, C)
    check_crown(graph, method)
    return crown_graph(graph, inp, C, method, fast=fast, stats=stats, reference=reference)


def _check_model(model: nn.Module, x: Tensor) -> None:
    """Same device and floating dtype for the model and ``x`` (never cast behind the caller)."""
    p = next(model.parameters(), None)
    if p is None:
        return
    if p.device != x.device:
        raise ValueError(f"model is on {p.device} but x is on {x.device}; move one of them")
    if p.is_floating_point() and p.dtype != x.dtype:
        raise TypeError(
            f"x has dtype {x.dtype} but the model's parameters are {p.dtype}; cast one of them "
            f"(x.to({p.dtype}) or model.to({x.dtype}))"
        )
