"""Networks whose computation graph depends on structural entries of their input.

Some networks read part of their input as *structure* rather than as numbers: a padding mask,
the parent of each node of a graph, a morphology. They decode it with thresholds and lay the
computation out accordingly (data-dependent Python control flow, which ``torch.fx`` cannot
trace). Over a small enough input set the decoded structure is constant, and the network is an
ordinary traceable function of its input for that structure.

Such a network implements the *structure protocol* by defining a method::

    def certify_structure(self, lo: Tensor, hi: Tensor) -> list[tuple[Tensor, nn.Module]] | None

``lo``, ``hi`` (B, features...) are the bounds of the input set (the box of the ε-ball). It
returns groups ``(rows, module)``: ``rows`` a 1-D long tensor of example indices, the groups
together covering every example exactly once, and ``module`` an fx-traceable module that
equals the network on every input in the box of those rows. It raises ``ValueError`` where the
structure is not constant over the box (e.g. a perturbation that crosses a decoding threshold),
or returns ``None`` (no structure: trace the network itself). The bound engine bounds each
group's module on its rows' input set; the bounds are sound for the network because the two
functions agree on that set.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from certify.bounds.inputs import InputSet

HOOK = "certify_structure"

Group = tuple[Tensor, nn.Module]


def structure_groups(model: nn.Module, lo: Tensor, hi: Tensor) -> list[Group] | None:
    """The validated groups of ``model``'s structure protocol, or ``None`` without one."""
    hook = getattr(model, HOOK, None)
    if hook is None:
        return None
    groups = hook(lo, hi)
    if groups is None:
        return None
    _check_groups(model, groups, lo.shape[0], lo.device)
    return groups


def _check_groups(model: nn.Module, groups, batch: int, device: torch.device) -> None:
    """Every example in exactly one group, each group with a module."""
    name = type(model).__name__
    seen = torch.zeros(batch, dtype=torch.long, device=device)
    for rows, module in groups:
        if not isinstance(module, nn.Module):
            raise TypeError(f"{name}.{HOOK} returned {type(module).__name__}, not an nn.Module")
        if not isinstance(rows, Tensor) or rows.dim() != 1 or rows.is_floating_point():
            raise TypeError(f"{name}.{HOOK} must return 1-D integer row indices per group")
        seen.index_add_(0, rows.to(device), torch.ones_like(rows, device=device))
    if not bool((seen == 1).all()):
        raise ValueError(f"{name}.{HOOK} must put every example in exactly one group")


def select_rows(inp: InputSet, rows: Tensor) -> InputSet:
    """The input set of examples ``rows``."""
    pick = lambda t: None if t is None else t[rows]  # noqa: E731
    return InputSet(inp.lo[rows], inp.hi[rows], inp.p, pick(inp.x0), pick(inp.eps))


def bound_groups(
    groups: list[Group],
    x: Tensor,
    select: Callable[[Tensor], object],
    C: Tensor | None,
    bound: Callable[[nn.Module, Tensor, object, Tensor | None], tuple[Tensor, Tensor]],
) -> tuple[Tensor, Tensor]:
    """Bounds of every group's module on its rows, scattered back into batch order.

    ``select(rows)`` restricts the input set to ``rows``; ``bound(module, x_rows, set_rows,
    C_rows)`` bounds one module (the engine's own dispatch)."""
    lower: Tensor | None = None
    upper: Tensor | None = None
    for rows, module in groups:
        rows = rows.to(x.device)
        Cs = C if C is None or C.dim() == 2 else C[rows]
        lo, hi = bound(module, x[rows], select(rows), Cs)
        if lower is None:
            lower = lo.new_empty(x.shape[0], *lo.shape[1:])
            upper = hi.new_empty(x.shape[0], *hi.shape[1:])
        lower[rows], upper[rows] = lo, hi
    assert lower is not None and upper is not None
    return lower, upper
