"""``compute_bounds``: the public entry point of the bound engine (validation and dispatch)."""

from __future__ import annotations

import math
import weakref
from numbers import Real

import torch
from torch import Tensor, nn

from certify.bounds.crown import CrownStats, check_chain, crown_chain
from certify.bounds.graph import Graph, trace
from certify.bounds.ibp import ibp_graph
from certify.bounds.inputs import InputSet

METHODS = ("ibp", "crown", "crown-ibp")
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_graph(model: nn.Module, x: Tensor) -> Graph:
    """Trace ``model`` once (cached per module and structure) and infer shapes for ``x``."""
    key = tuple(id(m) for m in model.modules())
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == key and hit[2] == (tuple(x.shape[1:]), x.dtype):
        return hit[1]
    graph = trace(model)
    with torch.no_grad():
        graph.infer_shapes(x[:1])
    _CACHE[model] = (key, graph, (tuple(x.shape[1:]), x.dtype))
    return graph


def _all_finite(x: Tensor, e: Tensor | float) -> tuple[bool, bool]:
    """Whether ``x`` is finite and ``e`` finite and non-negative, read back together."""
    if not isinstance(e, Tensor):
        return bool(torch.isfinite(x).all()), math.isfinite(e) and e >= 0
    flags = torch.stack([torch.isfinite(x).all(), (torch.isfinite(e) & (e >= 0)).all()])
    x_ok, e_ok = flags.tolist()
    return x_ok, e_ok


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


def make_input_set(x: Tensor, eps, norm: float, x_min, x_max) -> InputSet:
    """Validate ``eps``/bounds and build the (flattened) perturbation set."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor of shape (B, features...)")
    if x.dim() < 2:
        raise ValueError(f"x must be batched with shape (B, features...), got {tuple(x.shape)}")
    scalar = isinstance(eps, Real) and not isinstance(eps, bool)
    e = eps if scalar else _as_tensor(eps, x, "eps")
    x_ok, e_ok = _all_finite(x, e)  # one host-device synchronisation on CUDA
    if not x_ok:
        raise ValueError("x contains NaN or infinite values")
    if not e_ok:
        raise ValueError("eps must be finite and non-negative (got NaN, inf or a negative value)")
    B = x.shape[0]
    if norm == math.inf and scalar and x_min is None and x_max is None:
        lo, hi = x - e, x + e  # no broadcast tensor needed for a float radius
        return InputSet(lo.reshape(B, -1), hi.reshape(B, -1))
    e = _broadcast(_as_tensor(e, x, "eps") if scalar else e, x, "eps")
    if norm == math.inf:
        lo, hi = x - e, x + e
        if x_min is not None or x_max is not None:
            lo, hi = _clip(x, lo, hi, x_min, x_max)
        return InputSet(lo.reshape(B, -1), hi.reshape(B, -1))
    if norm not in (1, 2):
        raise ValueError(f"norm must be math.inf, 1 or 2, got {norm}")
    if x_min is not None or x_max is not None:
        raise ValueError("clipping to x_min/x_max is supported for norm=inf only")
    ef = e.reshape(B, -1)
    if not (ef == ef[:, :1]).all():
        raise ValueError("per-feature eps is supported for norm=inf only")
    x0 = x.reshape(B, -1)
    return InputSet(x0 - ef, x0 + ef, float(norm), x0, ef[:, :1].clone())


def _clip(x: Tensor, lo: Tensor, hi: Tensor, x_min, x_max) -> tuple[Tensor, Tensor]:
    mn = _broadcast(_as_tensor(x_min, x, "x_min"), x, "x_min") if x_min is not None else None
    mx = _broadcast(_as_tensor(x_max, x, "x_max"), x, "x_max") if x_max is not None else None
    if mn is not None and mx is not None and (mn > mx).any():
        raise ValueError("x_min must be <= x_max everywhere")
    if mn is not None:
        lo, hi = torch.maximum(lo, mn), torch.maximum(hi, mn)
    if mx is not None:
        lo, hi = torch.minimum(lo, mx), torch.minimum(hi, mx)
    return lo, hi


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


def compute_bounds(
    model: nn.Module,
    x: Tensor,
    eps: float | Tensor,
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
    """Sound bounds on ``C @ model(x')`` (or ``model(x')``) for every x' in the ball around ``x``.

    Args:
        model: ``nn.Sequential`` or an fx-traceable module mapping (B, ...) to (B, n_out).
        x: (B, features...) batch of centres.
        eps: radius, a float or a tensor broadcastable to ``x`` (per feature / per example).
        method: ``"ibp"``, ``"crown"`` or ``"crown-ibp"``.
        norm: ``math.inf`` (box, per-feature eps and clipping allowed), 1 or 2.
        C: specification, (m, n_out) or (B, m, n_out).
        x_min, x_max: data bounds; the ball is intersected with ``[x_min, x_max]``.
        fast: CROWN computes intermediate bounds for unstable neurons only (``False``: the dense
            reference path with full A matrices).
        backend: ``"native"`` or ``"auto_lirpa"`` (when installed).
        reference: CROWN's screen for unstable neurons: ``"ibp"``, ``"symbolic"`` (symbolic
            intervals, tighter) or ``"auto"`` (symbolic for ReLU-like networks).

    Returns:
        ``(lower, upper)``, each (B, m): for every x' in the set, lower <= C f(x') <= upper
        (up to floating-point rounding).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if backend not in ("native", "auto_lirpa"):
        raise ValueError(f"backend must be 'native' or 'auto_lirpa', got {backend!r}")
    inp = make_input_set(x, eps, norm, x_min, x_max)
    _check_device(model, x)
    if backend == "auto_lirpa":
        from certify.backends import auto_lirpa_bounds

        return auto_lirpa_bounds(model, x, inp, method, C)
    graph = get_graph(model, x)
    C = _check_C(C, x.shape[0], graph.widths[-1], x)
    if len(graph.shapes[-1]) != 1:
        raise ValueError(f"the model output must be (B, n_out), got (B, {graph.shapes[-1]})")
    if method == "ibp":
        return ibp_graph(graph, inp, x.shape, C)
    check_chain(graph, method)
    _check_flat(graph, method)
    return crown_chain(graph, inp, C, method, fast=fast, stats=stats, reference=reference)


def _check_device(model: nn.Module, x: Tensor) -> None:
    p = next(model.parameters(), None)
    if p is not None and p.device != x.device:
        raise ValueError(f"model is on {p.device} but x is on {x.device}; move one of them")


def _check_flat(graph: Graph, method: str) -> None:
    for i, node in enumerate(graph.nodes[1:], start=1):
        if node.op.kind == "affine" and len(graph.shapes[node.inputs[0]]) != 1:
            raise NotImplementedError(
                f"method {method!r} needs flat (B, n) inputs to linear layers; node "
                f"{node.op.name!r} sees shape {graph.shapes[node.inputs[0]]}"
            )
        del i
