"""Interval bound propagation (Gowal et al., "On the Effectiveness of Interval Bound Propagation
for Training Verifiably Robust Models", 2018) over an operator graph.

Each node maps input intervals to an output interval (``Op.ibp``); an operator that reads the
input directly may bound itself exactly (``Op.input_bounds``: a linear layer under an l_1 / l_2
ball, by the dual norm). A specification matrix ``C`` is folded into the last operator where it
can (``Op.ibp_spec``: a final linear layer), which is tighter than bounding ``C y`` from the
interval of ``y``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from certify.bounds.graph import Graph
from certify.bounds.inputs import InputSet
from certify.bounds.protocol import Interval, Op, ibp_spec

__all__ = ["ibp_graph", "ibp_spec", "input_rows", "no_nan"]


def input_rows(graph: Graph) -> list[bool]:
    """``True`` for nodes equal to the input up to reshapes."""
    flags = [True]
    for node in graph.nodes[1:]:
        flags.append(node.op.flat_identity and len(node.inputs) == 1 and flags[node.inputs[0]])
    return flags


def ibp_graph(graph: Graph, inp: InputSet, x_shape: torch.Size, C: Tensor | None) -> Interval:
    """Bounds on the output (or on ``C @ output``) for every input in ``inp``; (B, m) each."""
    nodes = graph.nodes
    if inp.is_box and graph.is_chain() and not torch.is_grad_enabled():
        if inp.lo.device.type == "cuda" and _stackable(graph):
            return _chain_stacked(graph, inp, C)
        return _chain_inplace(graph, inp, x_shape, C)
    is_input = input_rows(graph)
    vals: list[Interval] = [(inp.lo.reshape(x_shape), inp.hi.reshape(x_shape))]
    last = len(nodes) - 1
    for i, node in enumerate(nodes[1:], start=1):
        op = node.op
        ins = [vals[j] for j in node.inputs]
        if i == last and C is not None:
            return op.ibp_spec(C, *ins)
        exact = None
        if not inp.is_box and len(node.inputs) == 1 and is_input[node.inputs[0]]:
            exact = op.input_bounds(inp)
        vals.append(exact if exact is not None else no_nan(op.ibp(*ins)))
    lo, hi = vals[-1]
    return ibp_spec((lo.flatten(1), hi.flatten(1)), C)


def no_nan(b: Interval) -> Interval:
    """NaN (an overflow: inf - inf, 0 * inf in a wide interval) as -inf below and inf above,
    so that no later operator reads it as a number (sound: the whole real line)."""
    inf = torch.inf
    return torch.nan_to_num(b[0], nan=-inf, posinf=inf, neginf=-inf), torch.nan_to_num(
        b[1], nan=inf, posinf=inf, neginf=-inf
    )


def _storage(t: Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _chain_inplace(graph: Graph, inp: InputSet, x_shape, C: Tensor | None) -> Interval:
    """Same bounds as the generic path for chains without autograd, with fewer temporaries:
    each interval is consumed once, so operators may update buffers in place
    (``Op.ibp_inplace``) once the interval no longer shares memory with the input set."""
    nodes = graph.nodes
    last = len(nodes) - 1
    lo, hi = inp.lo.reshape(x_shape), inp.hi.reshape(x_shape)
    theirs = {_storage(inp.lo), _storage(inp.hi)}  # the caller's: never written
    owned = False
    for i, node in enumerate(nodes[1:], start=1):
        op = node.op
        if i == last and C is not None:
            return op.ibp_spec(C, (lo, hi))
        if owned:
            lo, hi = op.ibp_inplace(lo, hi)
        else:
            lo, hi = op.ibp((lo, hi))
            owned = _storage(lo) not in theirs and _storage(hi) not in theirs
    return ibp_spec((lo.flatten(1), hi.flatten(1)), C)


def _stackable(graph: Graph) -> bool:
    """A chain of operators with a stacked interval step on flat (B, n) tensors."""
    if any(len(shape) != 1 for shape in graph.shapes):
        return False
    return all(type(node.op).ibp_stacked is not Op.ibp_stacked for node in graph.nodes[1:])


def _chain_stacked(graph: Graph, inp: InputSet, C: Tensor | None) -> Interval:
    """Same bounds as :func:`_chain_inplace` with one kernel per layer, for GPUs (where small
    batches are launch-bound): ``[l, u]`` is kept as one (B, 2n) tensor and a linear layer is
    one matrix product with ``[[W+, W-], [W-, W+]]`` — lower = W+ l + W- u + b, upper =
    W- l + W+ u + b — at twice the FLOPs of the centre/radius form."""
    nodes = graph.nodes
    last = len(nodes) - 1
    z = torch.cat([inp.lo, inp.hi], dim=1)
    for i, node in enumerate(nodes[1:], start=1):
        op = node.op
        if i == last and C is not None:
            n = z.shape[1] // 2
            return op.ibp_spec(C, (z[:, :n], z[:, n:]))
        z = op.ibp_stacked(z)
    n = z.shape[1] // 2
    return ibp_spec((z[:, :n], z[:, n:]), C)
