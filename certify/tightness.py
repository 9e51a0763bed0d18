"""Tightness of IBP (Mao et al., "Understanding Certified Training with Interval Bound
Propagation", ICLR 2024).

For the local linearisation of a network at x (activation pattern fixed: D_k = diag of the
activation slopes at x), the optimal box radius of ``W_L D_{L-1} ... D_1 W_1`` over an l_inf ball
is ``|W_L D ... W_1| eps`` while IBP on the same linear network gives ``|W_L| D ... |W_1| eps``.
Tightness = optimal / IBP, in (0, 1] (1 iff no cancellation). A specification C (e.g. margins)
is merged into the last layer. We report the mean over output rows and examples.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from certify.bounds import get_graph
from certify.bounds.crown import check_chain


def local_linearisation(model: nn.Module, x: Tensor) -> list[tuple[str, Tensor]]:
    """Factors of the linearisation at ``x`` in forward order: ("W", (out, in)) weights and
    ("D", (B, n)) activation slopes."""
    graph = get_graph(model, x)
    check_chain(graph, "tightness")
    factors: list[tuple[str, Tensor]] = []
    z = x.reshape(x.shape[0], -1)
    for node in graph.nodes[1:]:
        op = node.op
        kind, factor = op.jacobian(z)
        if kind != "I":
            factors.append((kind, factor))
        z = op.forward(z)
    return factors


def _chain(factors: list[tuple[str, Tensor]], C: Tensor | None, absolute: bool, n_out: int):
    """Backward product (B or 1, m, D) of C and the factors; |.| on every factor if ``absolute``."""

    def a(t: Tensor) -> Tensor:
        return t.abs() if absolute else t

    ref = factors[0][1]
    M = torch.eye(n_out, dtype=ref.dtype, device=ref.device).unsqueeze(0) if C is None else a(C)
    M = M if M.dim() == 3 else M.unsqueeze(0)
    for kind, f in reversed(factors):
        M = M @ a(f) if kind == "W" else M * a(f).unsqueeze(1)
    return M


def tightness(model: nn.Module, x: Tensor, C: Tensor | None = None) -> Tensor:
    """Per-example tightness (B,) of IBP on the local linearisation at ``x`` (mean over non-zero
    rows of the specification)."""
    with torch.no_grad():
        factors = local_linearisation(model, x)
        n_out = get_graph(model, x).widths[-1]
        opt = _chain(factors, C, False, n_out).abs().sum(-1)
        ibp = _chain(factors, C, True, n_out).sum(-1)
    valid = ibp > 0  # rows that are identically zero (e.g. the margin of y with itself) are skipped
    ratio = torch.where(valid, opt / ibp.clamp(min=1e-30), torch.zeros_like(ibp))
    count = valid.sum(-1)
    mean = torch.where(
        count > 0, ratio.sum(-1) / count.clamp(min=1), torch.ones_like(count, dtype=ratio.dtype)
    )
    return mean.expand(x.shape[0])
