"""CROWN (Zhang et al., NeurIPS 2018) and CROWN-IBP (Zhang et al., ICLR 2020) on chain graphs.

Backward linear bound propagation: a bounded quantity ``A y + c`` is pushed backwards through
affine layers (``c += A b``, ``A <- A W``) and through activations via their linear relaxations
(positive coefficients take the lower line, negative ones the upper line, for a lower bound); at
the input it is concretised over the perturbation set. Upper bounds are lower bounds of ``-A``.

Intermediate bounds. Every activation needs bounds on its input. For node ``i`` the *reference*
bound is IBP from the (already tightened) bounds of node ``i-1``. For CROWN the reference is
intersected with a backward bound, but only for neurons whose reference is *unstable* (l < 0 < u
for ReLU-like activations; every neuron for curved ones). A neuron whose reference is stable is
relaxed exactly, so its bound values never enter any later relaxation, and computing backward
bounds for it would not change the result.

Two equivalent paths compute those backward bounds:

* ``fast=True``: the rows of the unstable neurons of all examples are gathered into one ragged
  (P, n) matrix, so every step is a single shared-weight matrix product on P rows;
* ``fast=False`` (dense reference): full (B, n_i, n_j) A matrices for every neuron; the same
  selection rule is applied afterwards, so both paths agree up to rounding.

The first affine layer on the input is bounded exactly and needs no backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from certify.bounds.graph import Graph
from certify.bounds.ibp import exact_affine, input_rows
from certify.bounds.inputs import InputSet, concretize_lower
from certify.bounds.ops import Interval

Relax = tuple[Tensor, Tensor | None, Tensor, Tensor]


@dataclass
class CrownStats:
    """Rows propagated backwards (for the benchmark): intermediate and total."""

    intermediate_rows: int = 0
    dense_rows: int = 0


def check_chain(graph: Graph, method: str) -> None:
    """CROWN needs a chain of affine / activation / reshape nodes; raise naming the culprit."""
    if not graph.is_chain():
        raise NotImplementedError(
            f"method {method!r} supports chain (sequential) graphs only; this model has branches "
            "(e.g. residual additions): use method='ibp'"
        )
    for node in graph.nodes[1:]:
        op = node.op
        if op.kind not in ("affine", "activation", "reshape"):
            raise NotImplementedError(
                f"operator {op.name!r} ({type(op).__name__}) is not supported by method {method!r}"
            )
        if op.kind == "activation" and type(op).relax is _base_relax():
            raise NotImplementedError(
                f"activation {op.name!r} ({type(op).__name__}) has no linear relaxation; "
                f"method {method!r} is unavailable, use method='ibp'"
            )


def _base_relax():
    from certify.bounds.activations import Activation

    return Activation.relax


def _backward(A: Tensor, const: Tensor, start: int, graph: Graph, relax: dict, gather) -> tuple:
    """Push ``A y_start + const`` back to the input; returns the input-space ``(A, const)``."""
    for j in range(start, 0, -1):
        op = graph.nodes[j].op
        if op.kind == "affine":
            const = const + A @ op.bias_or_zero
            A = A @ op.weight
        elif op.kind == "activation":
            ls, lb, us, ub = relax[j]
            Ap, An = A.clamp(min=0), A.clamp(max=0)
            const = const + (An * gather(ub)).sum(-1)
            if lb is not None:
                const = const + (Ap * gather(lb)).sum(-1)
            A = Ap * gather(ls) + An * gather(us)
    return A, const


def _start_rows(graph: Graph, i: int, idx: Tensor) -> tuple[Tensor, Tensor, int]:
    """Rows selecting neurons ``idx`` of node ``i`` (through its affine layer when it has one)."""
    op = graph.nodes[i].op
    if op.kind == "affine":
        return op.weight[idx], op.bias_or_zero[idx], i - 1
    n = graph_width(graph, i)
    eye = torch.zeros(len(idx), n, dtype=op_dtype(graph), device=idx.device)
    eye[torch.arange(len(idx), device=idx.device), idx] = 1
    return eye, eye.new_zeros(len(idx)), i


def graph_width(graph: Graph, i: int) -> int:
    return graph.widths[i]


def op_dtype(graph: Graph) -> torch.dtype:
    return graph.dtype


def _fast_rows(graph, i, mask, inp, relax, max_rows) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backward bounds of the masked neurons of node ``i`` as ragged rows; (P,) each."""
    bidx, nidx = mask.nonzero(as_tuple=True)
    lows, ups = [], []
    for s in range(0, len(bidx), max_rows):
        b, n = bidx[s : s + max_rows], nidx[s : s + max_rows]
        A, c, start = _start_rows(graph, i, n)
        A, c = torch.cat([A, -A]), torch.cat([c, -c])
        bb = torch.cat([b, b])

        def gather(t: Tensor, bb: Tensor = bb) -> Tensor:
            return t[bb]

        A, c = _backward(A, c, start, graph, relax, gather)
        low = concretize_lower(A, c, inp, gather)
        lows.append(low[: len(b)])
        ups.append(-low[len(b) :])
    empty = mask.new_zeros(0, dtype=graph.dtype)
    return bidx, nidx, torch.cat(lows) if lows else empty, torch.cat(ups) if ups else empty


def _dense_rows(graph: Graph, i: int, inp: InputSet, relax: dict) -> Interval:
    """Backward bounds of every neuron of node ``i`` with full (B, 2n, D) A matrices."""
    B = inp.lo.shape[0]
    n = graph.widths[i]
    idx = torch.arange(n, device=inp.lo.device)
    A, c, start = _start_rows(graph, i, idx)
    A = torch.cat([A, -A]).unsqueeze(0).expand(B, -1, -1)
    c = torch.cat([c, -c]).unsqueeze(0).expand(B, -1)

    def gather(t: Tensor) -> Tensor:
        return t.unsqueeze(1)

    A, c = _backward(A, c, start, graph, relax, gather)
    low = concretize_lower(A, c, inp, gather)
    return low[:, :n], -low[:, n:]


def _tighten(graph, i, ref, inp, relax, fast, max_rows, stats) -> Interval:
    """Reference bounds intersected with backward bounds on the neurons that need them."""
    nxt = graph.nodes[i + 1].op
    mask = nxt.unstable(*ref)
    if mask is None:
        mask = torch.ones_like(ref[0], dtype=torch.bool)
    lo, hi = ref
    if fast:
        bidx, nidx, cl, cu = _fast_rows(graph, i, mask, inp, relax, max_rows)
        stats.intermediate_rows += 2 * len(bidx)
        lo, hi = lo.clone(), hi.clone()
        lo[bidx, nidx] = torch.maximum(lo[bidx, nidx], cl)
        hi[bidx, nidx] = torch.minimum(hi[bidx, nidx], cu)
        return lo, hi
    cl, cu = _dense_rows(graph, i, inp, relax)
    stats.intermediate_rows += 2 * cl.numel()
    return torch.where(mask, torch.maximum(lo, cl), lo), torch.where(
        mask, torch.minimum(hi, cu), hi
    )


def crown_chain(
    graph: Graph,
    inp: InputSet,
    C: Tensor | None,
    method: str = "crown",
    fast: bool = True,
    max_rows: int = 16384,
    stats: CrownStats | None = None,
) -> Interval:
    """Bounds (B, m) on ``C @ f(x)`` (or ``f(x)``) by CROWN or CROWN-IBP on a chain graph."""
    stats = stats if stats is not None else CrownStats()
    nodes = graph.nodes
    last = len(nodes) - 1
    is_input = input_rows(graph)
    bounds: dict[int, Interval] = {0: (inp.lo, inp.hi)}
    relax: dict[int, Relax] = {}
    for i in range(1, last + 1):
        op = nodes[i].op
        prev = bounds[i - 1]
        if op.kind == "activation":
            relax[i] = op.relax(*prev)
        if op.kind == "reshape":
            bounds[i] = prev
            continue
        if op.kind == "affine" and is_input[i - 1]:
            bounds[i] = exact_affine(op, inp)
            continue
        ref = op.ibp(prev)
        feeds_act = i < last and nodes[i + 1].op.kind == "activation"
        if method == "crown" and feeds_act:
            ref = _tighten(graph, i, ref, inp, relax, fast, max_rows, stats)
        bounds[i] = ref
    return _final(graph, last, inp, relax, C, stats)


def _final(graph, last, inp, relax, C, stats) -> Interval:
    """Backward bound of the specification rows ``C`` (dense form, shared by both paths)."""
    B = inp.lo.shape[0]
    n = graph.widths[last]
    if C is None:
        C = torch.eye(n, dtype=graph.dtype, device=inp.lo.device)
    Cb = C if C.dim() == 3 else C.unsqueeze(0).expand(B, -1, -1)
    m = Cb.shape[1]
    A = torch.cat([Cb, -Cb], dim=1)
    c = A.new_zeros(B, 2 * m)
    stats.dense_rows += 2 * m * B

    def gather(t: Tensor) -> Tensor:
        return t.unsqueeze(1)

    A, c = _backward(A, c, last, graph, relax, gather)
    low = concretize_lower(A, c, inp, gather)
    return low[:, :m], -low[:, m:]
