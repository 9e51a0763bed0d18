"""CROWN (Zhang et al., NeurIPS 2018) and CROWN-IBP (Zhang et al., ICLR 2020) on operator graphs.

Backward linear bound propagation: a bounded quantity ``A y + c`` is pushed backwards through
the graph, one operator at a time (``Op.backward``: exact for linear operators, through the
operator's linear relaxation otherwise: positive coefficients take the lower bound, negative ones
the upper bound, for a lower bound); where a node feeds several operators the coefficients of
its consumers add up. At the input it is concretised over the perturbation set. Upper bounds are
lower bounds of ``-A``. The engine never looks at what an operator is, only at its protocol
(:mod:`certify.bounds.protocol`).

Intermediate bounds. A nonlinear operator's relaxation needs bounds on its inputs. For node ``i``
the *reference* bound is IBP from the (already tightened) bounds of its inputs. For CROWN the
reference is intersected with a backward bound, but only for the elements its consumers' relaxations
are sensitive to (``Op.tighten_mask``: l < 0 < u for ReLU-like activations; every element for
curved ones). A neuron whose reference is stable is relaxed exactly, so its bound values never
enter any later relaxation, and computing backward bounds for it would not change the result.
Shape-only operators pass such needs on to their input.

Two equivalent paths compute those backward bounds:

* ``fast=True``: only the rows of the selected elements are propagated. Examples are sorted by
  their number of selected elements and processed in chunks padded to the chunk's largest count,
  so every step is a batched matrix product with the shared weights and no per-row gathers;
* ``fast=False`` (dense reference): full (B, n_i, n_j) A matrices for every element; the same
  selection rule is applied afterwards, so both paths agree up to rounding.

An operator that reads the input directly may bound itself exactly (``Op.input_bounds``: the
first linear layer) and needs no backward pass. On chains of linear layers and element-wise
activations a symbolic (zonotope) screen tightens the references first (:mod:`symbolic`).

CROWN's bounds are intersected with the interval bounds at every node, the output included
(both are sound), so CROWN is never looser than IBP from the same intermediate bounds.
CROWN-IBP (intermediate bounds from IBP, a backward pass for the output only) is left as
published.

Overflow: for huge input sets (eps ~ 1e30) backward products can overflow to inf − inf = NaN.
Intersections ignore such values (``fmax``/``fmin``) and the final bounds fall back to IBP's on
the output where CROWN's are not finite, so CROWN is finite wherever IBP is, and never NaN.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from certify.bounds import symbolic as sym
from certify.bounds.graph import Graph
from certify.bounds.ibp import input_rows, no_nan
from certify.bounds.inputs import InputSet, concretize_lower
from certify.bounds.protocol import Interval, Op, ibp_spec


@dataclass
class CrownStats:
    """For the benchmark: rows propagated backwards (intermediate; final specification rows)
    and wall-clock seconds per stage — ``screen`` (reference bounds), ``rows`` (backward bounds
    of intermediate neurons), ``final`` (the specification). Stage times are host-side: exact
    on CPU, indicative only on CUDA (kernels run asynchronously)."""

    intermediate_rows: int = 0
    dense_rows: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))


STAGES = ("screen", "rows", "final")


@contextmanager
def _timed(stats: CrownStats, stage: str):
    start = time.perf_counter()
    yield
    stats.seconds[stage] += time.perf_counter() - start


def check_crown(graph: Graph, method: str) -> None:
    """Every operator has a backward step; raise naming the first one that has none."""
    del method
    for node in graph.nodes[1:]:
        if not node.op.crown:
            raise node.op.no_crown()


def check_chain(graph: Graph, method: str) -> None:
    """A chain whose operators all have a local linearisation (for ``certify.tightness``)."""
    if not graph.is_chain():
        raise NotImplementedError(
            f"method {method!r} supports chain (sequential) graphs only; this model has branches "
            "(e.g. residual additions)"
        )
    for node in graph.nodes[1:]:
        op = node.op
        if type(op).jacobian is Op.jacobian:
            raise NotImplementedError(
                f"operator {op.name!r} ({type(op).__name__}) is not supported by method {method!r}"
            )


def _backward(graph: Graph, pending: dict, const: Tensor, top: int, relax: dict) -> tuple:
    """Push the lower bound of ``sum_k <A_k, y_k> + const`` (``pending``: node -> A (B, R,
    *shape)) back to the input, in reverse topological order from node ``top``. Returns the
    input's coefficients (B, R, D) and the constant (B, R)."""
    for j in range(top, 0, -1):
        if j not in pending:
            continue
        node = graph.nodes[j]
        # no local keeps a consumed A alive: on CPU every freed (B, R, n) buffer is memory the
        # next product can reuse
        coefs, c = node.op.backward(pending.pop(j), relax.get(j))
        if c is not None:
            const = const + c
        for k, Ak in zip(node.inputs, coefs, strict=True):
            if Ak is not None:
                pending[k] = Ak if k not in pending else pending[k] + Ak
        del coefs
    A0 = pending.get(0)
    B, R = const.shape
    if A0 is None:  # the bounded quantity does not depend on the input
        return const.new_zeros(B, R, graph.widths[0]), const
    return A0.reshape(B, R, -1), const


def _start_rows(graph: Graph, i: int, idx: Tensor) -> tuple[dict, Tensor, int]:
    """Rows selecting elements ``idx`` (B, R) of node ``i`` with both signs (lower bounds of
    ``+z`` then of ``-z``), through node ``i``'s operator when it offers rows (``Op.rows``)."""
    node = graph.nodes[i]
    n = graph.widths[i]
    idx2 = torch.cat([idx, idx + n], 1)
    fast = node.op.rows(idx2, n) if len(node.inputs) == 1 else None
    if fast is not None:
        A, c = fast
        return {node.inputs[0]: A}, c, node.inputs[0]
    eye = torch.eye(n, dtype=graph.dtype, device=idx.device)
    A = torch.cat([eye, -eye])[idx2]
    A = A.reshape(*idx2.shape, *graph.shapes[i])
    return {i: A}, idx2.new_zeros(idx2.shape, dtype=graph.dtype), i


def _chunks(B: int, rows: int, width: int, max_elems: int) -> int:
    """Examples per chunk so that a (chunk, rows, width) A matrix stays below ``max_elems``."""
    return max(1, min(B, max_elems // max(rows * width, 1)))


def _rows_bounds(graph, i, idx, inp, relax) -> Interval:
    """Backward bounds (B, R) of elements ``idx`` (B, R) of node ``i``, both signs at once."""
    pending, c, top = _start_rows(graph, i, idx)
    A, c = _backward(graph, pending, c, top, relax)
    low = concretize_lower(A, c, inp, lambda t: t.unsqueeze(1))
    R = idx.shape[1]
    return low[:, :R], -low[:, R:]


def _sub(inp: InputSet, relax: dict, sel) -> tuple[InputSet, dict]:
    """The input set and relaxations restricted to examples ``sel``."""
    sub = _select(inp, sel)
    rel = {k: tuple(None if t is None else t[sel] for t in v) for k, v in relax.items()}
    return sub, rel


def _fast_tighten(graph, i, ref, mask, inp, relax, max_elems, stats) -> Interval:
    """Backward bounds only for masked elements: examples sorted by count, chunks padded."""
    B, n = mask.shape
    counts = mask.sum(1)
    order = torch.argsort(counts, descending=True)
    lo, hi = ref[0].clone(), ref[1].clone()
    width = max(graph.widths[: i + 1])
    s = 0
    while s < B and counts[order[s]] > 0:
        u_max = int(counts[order[s]])
        size = _chunks(B, 2 * u_max, width, max_elems)
        sel = order[s : s + size]
        s += size
        # selected elements first, in index order; padding rows repeat others (discarded)
        idx = torch.argsort((~mask[sel]).to(torch.int8), dim=1, stable=True)[:, :u_max]
        valid = torch.arange(u_max, device=idx.device) < counts[sel].unsqueeze(1)
        sub, rel = _sub(inp, relax, sel)
        cl, cu = _rows_bounds(graph, i, idx, sub, rel)
        stats.intermediate_rows += 2 * int(valid.sum())
        rl, ru = lo[sel].gather(1, idx), hi[sel].gather(1, idx)
        nl, nu = _intersect((rl, ru), (cl, cu), valid)
        lo[sel], hi[sel] = lo[sel].scatter(1, idx, nl), hi[sel].scatter(1, idx, nu)
    return lo, hi


def _dense_tighten(graph, i, ref, mask, inp, relax, max_elems, stats) -> Interval:
    """Reference path: full A matrices for every element, then the same selection rule
    (``mask`` None: every element). Chunks of consecutive examples: the input set and the
    relaxations are sliced as views."""
    B, n = ref[0].shape
    size = _chunks(B, 2 * n, max(graph.widths[: i + 1]), max_elems)
    parts_l, parts_u = [], []
    for s in range(0, B, size):
        sel = slice(s, min(s + size, B))
        sub, rel = _sub(inp, relax, sel)
        idx = torch.arange(n, device=ref[0].device).expand(sel.stop - s, n)
        cl, cu = _rows_bounds(graph, i, idx, sub, rel)
        parts_l.append(cl)
        parts_u.append(cu)
    cl, cu = torch.cat(parts_l), torch.cat(parts_u)
    stats.intermediate_rows += 2 * cl.numel()
    return _intersect(ref, (cl, cu), mask)


def _intersect(ref: Interval, new: Interval, mask: Tensor | None = None) -> Interval:
    """``ref`` tightened by ``new`` where ``mask`` holds. ``fmax``/``fmin`` ignore NaN: a backward
    or symbolic bound that overflowed (inf − inf, for huge input sets) leaves the sound reference
    in place instead of poisoning every later layer. Where rounding makes the two disjoint (a
    point interval, eps = 0, in float32) the reference stays as well: a crossed interval would
    widen every later bound."""
    (lo, hi), (nl, nu) = ref, new
    lo_t, hi_t = torch.fmax(lo, nl), torch.fmin(hi, nu)
    ok = lo_t <= hi_t
    if mask is not None:
        ok = ok & mask
    return torch.where(ok, lo_t, lo), torch.where(ok, hi_t, hi)


def _need_mask(graph: Graph, i: int, ref: Interval) -> Tensor | None | bool:
    """Elements (B, n_i) of node ``i`` whose bounds a consumer's relaxation uses: a mask,
    ``None`` for all of them, ``False`` for none. Shape-only consumers pass on their needs."""
    B = ref[0].shape[0]
    out: Tensor | bool = False
    for k in graph.consumers[i]:
        op = graph.nodes[k].op
        if op.flat_identity:
            shape = graph.shapes[k]
            m = _need_mask(graph, k, (ref[0].reshape(B, *shape), ref[1].reshape(B, *shape)))
        elif op.linear:
            continue
        else:
            m = op.tighten_mask(*ref)
        if m is False:
            continue
        if m is None:
            return None
        m = m.reshape(B, -1)
        out = m if out is False else out | m
    return out


def _feeds_nonlinear(graph: Graph, i: int) -> bool:
    """Some consumer of node ``i`` (through shape-only ones) has a relaxation."""
    for k in graph.consumers[i]:
        op = graph.nodes[k].op
        if (op.flat_identity and _feeds_nonlinear(graph, k)) or not op.linear:
            return True
    return False


def _tighten(graph, i, ref, mask, inp, relax, fast, max_elems, stats) -> Interval:
    """Reference bounds intersected with backward bounds on the elements that need them."""
    B = ref[0].shape[0]
    flat = (ref[0].reshape(B, -1), ref[1].reshape(B, -1))
    # every element needed (curved consumers): the fast path would select them all
    tighten = _fast_tighten if fast and mask is not None else _dense_tighten
    lo, hi = tighten(graph, i, flat, mask, inp, relax, max_elems, stats)
    return lo.reshape(ref[0].shape), hi.reshape(ref[1].shape)


def crown_graph(
    graph: Graph,
    inp: InputSet,
    C: Tensor | None,
    method: str = "crown",
    fast: bool = True,
    max_elems: int | None = None,
    stats: CrownStats | None = None,
    reference: str = "auto",
) -> Interval:
    """Bounds (B, m) on ``C @ f(x)`` (or ``f(x)``) by CROWN or CROWN-IBP.

    ``reference``: how intermediate neurons are screened before backward rows are computed:
    ``"ibp"`` or ``"symbolic"`` (IBP intersected with symbolic intervals, on chains of linear
    layers and element-wise activations); ``"auto"`` uses the symbolic one for ReLU-like
    networks. Fast and dense paths use the same reference.
    ``max_elems`` caps the elements of one backward A matrix (default: 2**20 on CPU, where
    cache-sized chunks are fastest, 2**26 on CUDA, where fewer and larger kernels are).
    """
    stats = stats if stats is not None else CrownStats()
    use_sym = method == "crown" and _use_symbolic(graph, reference) and graph.is_chain()
    B, D = inp.lo.shape
    on_gpu = inp.lo.device.type == "cuda"
    if max_elems is None:
        max_elems = 2**26 if on_gpu else 2**20
    if not use_sym:
        return _crown_chunk(graph, inp, C, method, fast, max_elems, stats, use_sym)
    # symbolic states are padded to the chunk's largest count of noise symbols: chunks of
    # examples with similar counts of unstable first-layer neurons waste less (on CPU)
    cap = 2**26 if on_gpu else 2**22
    size = max(1, min(B, cap // max(max(graph.widths) * D, 1)))
    size = size if on_gpu else min(size, 256)
    order = _by_first_layer_instability(graph, inp) if B > size else None
    lo, hi = [], []
    for s in range(0, B, size):
        sel = order[s : s + size] if order is not None else slice(s, s + size)
        sub = _select(inp, sel)
        Cs = C if C is None or C.dim() == 2 else C[sel]
        out = _crown_chunk(graph, sub, Cs, method, fast, max_elems, stats, use_sym)
        lo.append(out[0])
        hi.append(out[1])
    lower, upper = torch.cat(lo), torch.cat(hi)
    if order is None:
        return lower, upper
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(B, device=order.device)
    return lower[inverse], upper[inverse]


crown_chain = crown_graph  # the name before operator graphs


def _select(inp: InputSet, sel) -> InputSet:
    return InputSet(
        inp.lo[sel],
        inp.hi[sel],
        inp.p,
        None if inp.x0 is None else inp.x0[sel],
        None if inp.eps is None else inp.eps[sel],
    )


def _by_first_layer_instability(graph: Graph, inp: InputSet) -> Tensor | None:
    """Examples sorted by their number of selected elements after the first operator that
    bounds itself exactly on the input."""
    nodes, is_input = graph.nodes, input_rows(graph)
    for i in range(1, len(nodes) - 1):
        node = nodes[i]
        if node.op.flat_identity or len(node.inputs) != 1 or not is_input[node.inputs[0]]:
            continue
        exact = node.op.input_bounds(inp)
        if exact is None:
            continue
        mask = _need_mask(graph, i, exact)
        return None if mask is None or mask is False else torch.argsort(mask.sum(1))
    return None


def _use_symbolic(graph: Graph, reference: str) -> bool:
    if reference not in ("auto", "ibp", "symbolic"):
        raise ValueError(f"reference must be 'auto', 'ibp' or 'symbolic', got {reference!r}")
    if reference != "auto":
        return reference == "symbolic"
    return any(n.op.piecewise_linear for n in graph.nodes[1:])


def _symbolic_end(graph: Graph) -> int:
    """The last node that feeds a nonlinear operator: the screen is carried up to it."""
    last = len(graph.nodes) - 1
    ends = [
        i for i in range(1, last) if any(not graph.nodes[k].op.linear for k in graph.consumers[i])
    ]
    return max(ends, default=0)


def _crown_chunk(graph, inp, C, method, fast, max_elems, stats, use_sym) -> Interval:
    nodes = graph.nodes
    last = len(nodes) - 1
    is_input = input_rows(graph)
    B = inp.lo.shape[0]
    x_shape = (B, *graph.shapes[0])
    bounds: dict[int, Interval] = {0: (inp.lo.reshape(x_shape), inp.hi.reshape(x_shape))}
    relax: dict[int, tuple] = {}
    state = sym.start(inp) if use_sym else None
    sym_end = _symbolic_end(graph) if use_sym else 0
    for i in range(1, last + 1):
        node, op = nodes[i], nodes[i].op
        ins = [bounds[j] for j in node.inputs]
        mask: Tensor | None | bool = False
        with _timed(stats, "screen"):
            if not op.linear:
                relax[i] = op.relaxation(*ins)
            if state is not None:
                state = op.symbolic(state, relax.get(i), ins[0]) if i <= sym_end else None
            if op.flat_identity:
                shape = (B, *graph.shapes[i])
                bounds[i] = (ins[0][0].reshape(shape), ins[0][1].reshape(shape))
                continue
            if len(node.inputs) == 1 and is_input[node.inputs[0]]:
                exact = op.input_bounds(inp)
                if exact is not None:
                    bounds[i] = exact
                    continue
            ref = no_nan(op.ibp(*ins))
            if method == "crown" and i < last and _feeds_nonlinear(graph, i):
                if state is not None:
                    ref = _intersect(ref, sym.bounds(state, inp))
                mask = _need_mask(graph, i, ref)
        if mask is not False:
            with _timed(stats, "rows"):
                ref = _tighten(graph, i, ref, mask, inp, relax, fast, max_elems, stats)
        bounds[i] = ref
    with _timed(stats, "final"):
        crown = _final(graph, last, inp, relax, C, stats, max_elems)
        return _with_ibp(crown, bounds[last], C, intersect=method == "crown")


def _with_ibp(crown: Interval, box: Interval, C: Tensor | None, intersect: bool) -> Interval:
    """CROWN's bounds where finite, else IBP's from the output box (sound as well; ±inf where
    even that overflowed); for CROWN, intersected with them. For huge input sets the backward
    products overflow (inf − inf) while interval bounds through saturating activations stay
    finite."""
    inf = torch.inf
    B = box[0].shape[0]
    lo, hi = ibp_spec((box[0].reshape(B, -1), box[1].reshape(B, -1)), C)
    lo = torch.nan_to_num(lo, nan=-inf, posinf=inf, neginf=-inf)
    hi = torch.nan_to_num(hi, nan=inf, posinf=inf, neginf=-inf)
    if intersect:
        return _intersect((lo, hi), crown)
    # |v| < inf is isfinite(v) in two kernels (NaN compares false)
    return (
        torch.where(crown[0].abs() < inf, crown[0], lo),
        torch.where(crown[1].abs() < inf, crown[1], hi),
    )


def _final(graph, last, inp, relax, C, stats, max_elems) -> Interval:
    """Backward bound of the specification rows ``C`` (dense form, shared by both paths).

    Rows shared by every example (``C`` of shape (m, n) or None) go through the linear
    operators at the top of the graph once, as (1, 2m, ...) matrices; from the first operator
    with a relaxation on, examples are processed in chunks whose A matrices stay below
    ``max_elems`` elements (on CPU: cache-sized buffers the allocator reuses, instead of fresh
    pages for every (B, 2m, n) product)."""
    B = inp.lo.shape[0]
    n = graph.widths[last]
    if C is None:
        C = torch.eye(n, dtype=graph.dtype, device=inp.lo.device)
    m = C.shape[-2]
    A = torch.cat([C, -C], dim=-2)
    stats.dense_rows += 2 * m * B
    pending = {last: A.reshape(-1, 2 * m, *graph.shapes[last])}
    const = A.new_zeros(pending[last].shape[0], 2 * m)
    top = last
    if C.dim() == 2:
        pending, const, top = _shared_prefix(graph, pending, const, last)
    if top == 0:  # linear up to the input: one shared (2m, D) matrix
        A0 = pending.get(0)
        A0 = const.new_zeros(2 * m, graph.widths[0]) if A0 is None else A0.reshape(2 * m, -1)
        low = concretize_lower(A0, const[0], inp, lambda t: t.unsqueeze(1))
        return low[:, :m], -low[:, m:]
    size = _chunks(B, 2 * m, max(graph.widths[: top + 1]), max_elems // 4)
    parts = []
    for s in range(0, B, size):
        sel = slice(s, min(s + size, B))
        k = sel.stop - s
        sub, rel = _sub(inp, relax, sel)
        pend = {j: _rows_of(a, sel, k) for j, a in pending.items()}
        A, c = _backward(graph, pend, _rows_of(const, sel, k), top, rel)
        parts.append(concretize_lower(A, c, sub, lambda t: t.unsqueeze(1)))
    low = torch.cat(parts) if len(parts) > 1 else parts[0]
    return low[:, :m], -low[:, m:]


def _rows_of(t: Tensor, sel: slice, k: int) -> Tensor:
    """Examples ``sel`` of a per-example tensor, or a shared (1, ...) one expanded to ``k``."""
    return t.expand(k, *t.shape[1:]) if t.shape[0] == 1 else t[sel]


def _shared_prefix(graph: Graph, pending: dict, const: Tensor, last: int) -> tuple:
    """Apply the linear operators from node ``last`` down to the first operator with a
    relaxation to the shared (1, R, ...) rows ``pending``, once for all examples. Returns the
    rows pending there, the constant (1, R) and that node (0 if the graph is linear). Gives up
    (returns its arguments) if an operator makes the rows depend on the example."""
    rows, c = dict(pending), const
    for j in range(last, 0, -1):
        if j not in rows:
            continue
        node = graph.nodes[j]
        if not node.op.linear:
            return rows, c, j
        coefs, cj = node.op.backward(rows.pop(j), None)
        if cj is not None:
            c = c + cj
        for k, Ak in zip(node.inputs, coefs, strict=True):
            if Ak is not None:
                rows[k] = Ak if k not in rows else rows[k] + Ak
        if c.shape[0] != 1 or any(a.shape[0] != 1 for a in rows.values()):
            return pending, const, last
    return rows, c, 0
