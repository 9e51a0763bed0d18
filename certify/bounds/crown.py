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

* ``fast=True``: only the rows of unstable neurons are propagated. Examples are sorted by their
  number of unstable neurons and processed in chunks padded to the chunk's largest count, so every
  step is a batched matrix product with the shared weights and no per-row gathers;
* ``fast=False`` (dense reference): full (B, n_i, n_j) A matrices for every neuron; the same
  selection rule is applied afterwards, so both paths agree up to rounding.

The first affine layer on the input is bounded exactly and needs no backward pass.

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
from certify.bounds.ibp import exact_affine, ibp_spec, input_rows
from certify.bounds.inputs import InputSet, concretize_lower
from certify.bounds.ops import Interval

Relax = tuple[Tensor, Tensor | None, Tensor, Tensor]


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


def _backward(A: Tensor, const: Tensor, start: int, graph: Graph, relax: dict) -> tuple:
    """Push the lower bound of ``A y_start + const`` back to the input.

    ``A`` is (B, R, n) with per-example rows; relaxation tensors are (B, n). Positive coefficients
    take the lower line, negative ones the upper line: ``A' = A ls + min(A, 0) (us - ls)``.
    """
    for j in range(start, 0, -1):
        op = graph.nodes[j].op
        if op.kind == "affine":
            const = const + A @ op.bias_or_zero
            A = A @ op.weight
        elif op.kind == "activation":
            ls, lb, us, ub = relax[j]
            neg = A.clamp(max=0)
            const = const + (neg @ ub.unsqueeze(-1)).squeeze(-1)
            if lb is not None:
                const = const + ((A - neg) @ lb.unsqueeze(-1)).squeeze(-1)
            A = torch.addcmul(A * ls.unsqueeze(1), neg, (us - ls).unsqueeze(1))
    return A, const


def _start_rows(graph: Graph, i: int, idx: Tensor) -> tuple[Tensor, Tensor, int]:
    """Rows (B, 2R, n) selecting neurons ``idx`` (B, R) of node ``i`` with both signs (lower
    bounds of ``+z`` then of ``-z``), through node ``i``'s affine layer when it has one."""
    op = graph.nodes[i].op
    n = graph.widths[i]
    idx2 = torch.cat([idx, idx + n], 1)
    if op.kind == "affine":
        W, b = op.weight, op.bias_or_zero
        return torch.cat([W, -W])[idx2], torch.cat([b, -b])[idx2], i - 1
    eye = torch.eye(n, dtype=graph.dtype, device=idx.device)
    return torch.cat([eye, -eye])[idx2], idx2.new_zeros(idx2.shape, dtype=graph.dtype), i


def _chunks(B: int, rows: int, width: int, max_elems: int) -> int:
    """Examples per chunk so that a (chunk, rows, width) A matrix stays below ``max_elems``."""
    return max(1, min(B, max_elems // max(rows * width, 1)))


def _rows_bounds(graph, i, idx, inp, relax) -> Interval:
    """Backward bounds (B, R) of neurons ``idx`` (B, R) of node ``i``, both signs at once."""
    A, c, start = _start_rows(graph, i, idx)
    A, c = _backward(A, c, start, graph, relax)
    low = concretize_lower(A, c, inp, lambda t: t.unsqueeze(1))
    R = idx.shape[1]
    return low[:, :R], -low[:, R:]


def _sub(inp: InputSet, relax: dict, sel) -> tuple[InputSet, dict]:
    """The input set and relaxations restricted to examples ``sel``."""
    sub = _select(inp, sel)
    rel = {k: tuple(None if t is None else t[sel] for t in v) for k, v in relax.items()}
    return sub, rel


def _fast_tighten(graph, i, ref, mask, inp, relax, max_elems, stats) -> Interval:
    """Backward bounds only for masked neurons: examples sorted by count, chunks padded."""
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
        # unstable neurons first, in index order; padding rows repeat stable neurons (discarded)
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
    """Reference path: full A matrices for every neuron, then the same selection rule."""
    B, n = mask.shape
    size = _chunks(B, 2 * n, max(graph.widths[: i + 1]), max_elems)
    parts_l, parts_u = [], []
    for s in range(0, B, size):
        sel = torch.arange(s, min(s + size, B), device=mask.device)
        sub, rel = _sub(inp, relax, sel)
        idx = torch.arange(n, device=mask.device).expand(len(sel), n)
        cl, cu = _rows_bounds(graph, i, idx, sub, rel)
        parts_l.append(cl)
        parts_u.append(cu)
    cl, cu = torch.cat(parts_l), torch.cat(parts_u)
    stats.intermediate_rows += 2 * cl.numel()
    return _intersect(ref, (cl, cu), mask)


def _intersect(ref: Interval, new: Interval, mask: Tensor | None = None) -> Interval:
    """``ref`` tightened by ``new`` where ``mask`` holds. ``fmax``/``fmin`` ignore NaN: a backward
    or symbolic bound that overflowed (inf − inf, for huge input sets) leaves the sound reference
    in place instead of poisoning every later layer."""
    (lo, hi), (nl, nu) = ref, new
    lo_t, hi_t = torch.fmax(lo, nl), torch.fmin(hi, nu)
    if mask is None:
        return lo_t, hi_t
    return torch.where(mask, lo_t, lo), torch.where(mask, hi_t, hi)


def _tighten(graph, i, ref, inp, relax, fast, max_elems, stats) -> Interval:
    """Reference bounds intersected with backward bounds on the neurons that need them."""
    mask = graph.nodes[i + 1].op.unstable(*ref)
    if mask is None:
        mask = torch.ones_like(ref[0], dtype=torch.bool)
    tighten = _fast_tighten if fast else _dense_tighten
    return tighten(graph, i, ref, mask, inp, relax, max_elems, stats)


def crown_chain(
    graph: Graph,
    inp: InputSet,
    C: Tensor | None,
    method: str = "crown",
    fast: bool = True,
    max_elems: int | None = None,
    stats: CrownStats | None = None,
    reference: str = "auto",
) -> Interval:
    """Bounds (B, m) on ``C @ f(x)`` (or ``f(x)``) by CROWN or CROWN-IBP on a chain graph.

    ``reference``: how intermediate neurons are screened before backward rows are computed:
    ``"ibp"`` or ``"symbolic"`` (IBP intersected with symbolic intervals); ``"auto"`` uses the
    symbolic one for ReLU-like networks. Fast and dense paths use the same reference.
    ``max_elems`` caps the elements of one backward A matrix (default: 2**20 on CPU, where
    cache-sized chunks are fastest, 2**26 on CUDA, where fewer and larger kernels are).
    """
    stats = stats if stats is not None else CrownStats()
    use_sym = method == "crown" and _use_symbolic(graph, reference)
    B, D = inp.lo.shape
    on_gpu = inp.lo.device.type == "cuda"
    if max_elems is None:
        max_elems = 2**26 if on_gpu else 2**20
    if not use_sym:
        return _crown_chunk(graph, inp, C, method, fast, max_elems, stats, use_sym)
    # symbolic states are padded to the chunk's largest count of noise symbols: chunks of
    # examples with similar counts of unstable first-layer neurons waste less (on CPU)
    cap = 2**26 if on_gpu else 2**24
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


def _select(inp: InputSet, sel) -> InputSet:
    return InputSet(
        inp.lo[sel],
        inp.hi[sel],
        inp.p,
        None if inp.x0 is None else inp.x0[sel],
        None if inp.eps is None else inp.eps[sel],
    )


def _by_first_layer_instability(graph: Graph, inp: InputSet) -> Tensor | None:
    """Examples sorted by their number of unstable neurons after the first affine layer."""
    nodes, is_input = graph.nodes, input_rows(graph)
    for i in range(1, len(nodes) - 1):
        if nodes[i].op.kind == "affine" and is_input[i - 1]:
            mask = nodes[i + 1].op.unstable(*exact_affine(nodes[i].op, inp))
            return None if mask is None else torch.argsort(mask.sum(1))
    return None


def _use_symbolic(graph: Graph, reference: str) -> bool:
    if reference not in ("auto", "ibp", "symbolic"):
        raise ValueError(f"reference must be 'auto', 'ibp' or 'symbolic', got {reference!r}")
    if reference != "auto":
        return reference == "symbolic"
    from certify.bounds.activations import LeakyReLU, ReLU

    return any(isinstance(n.op, (ReLU, LeakyReLU)) for n in graph.nodes[1:])


def _crown_chunk(graph, inp, C, method, fast, max_elems, stats, use_sym) -> Interval:
    nodes = graph.nodes
    last = len(nodes) - 1
    is_input = input_rows(graph)
    bounds: dict[int, Interval] = {0: (inp.lo, inp.hi)}
    relax: dict[int, Relax] = {}
    state = sym.start(inp) if use_sym else None
    # the symbolic screen is only carried up to the last layer that feeds an activation
    screened = [i for i in range(1, last) if nodes[i + 1].op.kind == "activation"]
    sym_end = max(screened, default=0) if use_sym else 0
    for i in range(1, last + 1):
        op = nodes[i].op
        prev = bounds[i - 1]
        with _timed(stats, "screen"):
            if op.kind == "activation":
                relax[i] = op.relax(*prev)
                state = sym.activation(state, op, relax[i], prev) if i < sym_end else None
            if op.kind == "reshape":
                bounds[i] = prev
                continue
            if op.kind == "affine":
                state = sym.affine(state, op) if i <= sym_end else None
                if is_input[i - 1]:
                    bounds[i] = exact_affine(op, inp)
                    continue
            ref = op.ibp(prev)
            feeds_act = i < last and nodes[i + 1].op.kind == "activation"
            if method == "crown" and feeds_act and state is not None:
                ref = _intersect(ref, sym.bounds(state, inp))
        if method == "crown" and feeds_act:
            with _timed(stats, "rows"):
                ref = _tighten(graph, i, ref, inp, relax, fast, max_elems, stats)
        bounds[i] = ref
    with _timed(stats, "final"):
        return _or_ibp(_final(graph, last, inp, relax, C, stats), bounds[last], C)


def _or_ibp(crown: Interval, box: Interval, C: Tensor | None) -> Interval:
    """CROWN's bounds where finite, else IBP's from the output box (sound as well; ±inf where
    even that overflowed). For huge input sets the backward products overflow (inf − inf)
    while interval bounds through saturating activations stay finite."""
    inf = torch.inf
    lo, hi = ibp_spec(box, C)
    lo = torch.nan_to_num(lo, nan=-inf, posinf=inf, neginf=-inf)
    hi = torch.nan_to_num(hi, nan=inf, posinf=inf, neginf=-inf)
    # |v| < inf is isfinite(v) in two kernels (NaN compares false)
    return (
        torch.where(crown[0].abs() < inf, crown[0], lo),
        torch.where(crown[1].abs() < inf, crown[1], hi),
    )


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

    A, c = _backward(A, c, last, graph, relax)
    low = concretize_lower(A, c, inp, lambda t: t.unsqueeze(1))
    return low[:, :m], -low[:, m:]
