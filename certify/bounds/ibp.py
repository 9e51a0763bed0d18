"""Interval bound propagation (Gowal et al., "On the Effectiveness of Interval Bound Propagation
for Training Verifiably Robust Models", 2018) over an operator graph.

Each node maps input intervals to an output interval (``Op.ibp``); an affine layer on the input
itself is bounded exactly (dual norm for l_1 / l_2 balls). A specification matrix ``C`` is folded
into a final affine layer, which is tighter than bounding ``C y`` from the interval of ``y``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from certify.bounds.graph import Graph
from certify.bounds.inputs import InputSet, concretize_lower
from certify.bounds.ops import Affine, Interval


def input_rows(graph: Graph) -> list[bool]:
    """``True`` for nodes equal to the input up to reshapes."""
    flags = [True]
    for node in graph.nodes[1:]:
        flags.append(node.op.kind == "reshape" and len(node.inputs) == 1 and flags[node.inputs[0]])
    return flags


def exact_affine(op: Affine, inp: InputSet) -> Interval:
    """Exact per-neuron bounds of ``W x + b`` over the input set (flattened input)."""
    W = op.weight
    lower = concretize_lower(W, op.bias_or_zero, inp, lambda t: t.unsqueeze(1))
    upper = -concretize_lower(-W, -op.bias_or_zero, inp, lambda t: t.unsqueeze(1))
    return lower, upper


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
        if i == last and C is not None and op.kind == "affine":
            return _folded_affine(op, ins[0], C)
        if (
            op.kind == "affine"
            and not inp.is_box
            and is_input[node.inputs[0]]
            and ins[0][0].dim() == 2
        ):
            vals.append(exact_affine(op, inp))
        else:
            vals.append(op.ibp(*ins))
    lo, hi = vals[-1]
    return ibp_spec((lo.flatten(1), hi.flatten(1)), C)


def _chain_inplace(graph: Graph, inp: InputSet, x_shape, C: Tensor | None) -> Interval:
    """Same bounds as the generic path for chains without autograd, with fewer temporaries:
    each interval is consumed once, so affine and ReLU steps update buffers in place."""
    from certify.bounds.activations import ReLU

    nodes = graph.nodes
    last = len(nodes) - 1
    lo, hi = inp.lo.reshape(x_shape), inp.hi.reshape(x_shape)
    owned = False  # inp's tensors may be reused by the caller: copy before writing into them
    for i, node in enumerate(nodes[1:], start=1):
        op = node.op
        if i == last and C is not None and op.kind == "affine":
            return _folded_affine(op, (lo, hi), C)
        if op.kind == "affine":
            half, half_abs = op._halves()
            s = torch.add(lo, hi)
            d = torch.sub(hi, lo, out=hi) if owned else hi - lo
            c = torch.nn.functional.linear(s, half, op.bias)
            r = torch.nn.functional.linear(d, half_abs)
            lo, hi = torch.sub(c, r, out=s) if s.shape == c.shape else c - r, c.add_(r)
            owned = True
        elif isinstance(op, ReLU) and owned:
            lo, hi = lo.clamp_(min=0), hi.clamp_(min=0)
        else:
            lo, hi = op.ibp((lo, hi))
            owned = True
    return ibp_spec((lo.flatten(1), hi.flatten(1)), C)


def _stackable(graph: Graph) -> bool:
    """A chain of linear layers and ReLUs on flat (B, n) tensors (shape-only nodes allowed)."""
    from certify.bounds.activations import ReLU

    if any(len(shape) != 1 for shape in graph.shapes):
        return False
    ops = [node.op for node in graph.nodes[1:]]
    return all(op.kind in ("affine", "reshape") or isinstance(op, ReLU) for op in ops)


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
        if op.kind == "affine":
            if i == last and C is not None:
                n = z.shape[1] // 2
                return _folded_affine(op, (z[:, :n], z[:, n:]), C)
            M, bias = op.stacked()
            z = torch.addmm(bias, z, M) if bias is not None else z @ M
        elif op.kind == "activation":
            z = z.clamp_(min=0)  # ReLU is monotone: both halves clamp alike
    n = z.shape[1] // 2
    return ibp_spec((z[:, :n], z[:, n:]), C)


def ibp_spec(b: Interval, C: Tensor | None) -> Interval:
    """Interval of ``C y`` from the interval of ``y`` (C: (m, n) or (B, m, n))."""
    lo, hi = b
    if C is None:
        return lo, hi
    Cb = C if C.dim() == 3 else C.unsqueeze(0)
    Cp, Cn = Cb.clamp(min=0), Cb.clamp(max=0)
    lower = (Cp @ lo.unsqueeze(-1) + Cn @ hi.unsqueeze(-1)).squeeze(-1)
    upper = (Cp @ hi.unsqueeze(-1) + Cn @ lo.unsqueeze(-1)).squeeze(-1)
    return lower, upper


def _folded_affine(op: Affine, b: Interval, C: Tensor) -> Interval:
    """IBP of ``C (W y + bias)`` as one affine map (C: (m, n) or (B, m, n))."""
    mu, r = (b[1] + b[0]) / 2, (b[1] - b[0]) / 2
    W = C @ op.weight  # (m, k) or (B, m, k)
    bias = C @ op.bias_or_zero
    if W.dim() == 2:
        c = mu @ W.T + bias
        rad = r @ W.abs().T
    else:
        c = (W @ mu.unsqueeze(-1)).squeeze(-1) + bias
        rad = (W.abs() @ r.unsqueeze(-1)).squeeze(-1)
    return c - rad, c + rad
