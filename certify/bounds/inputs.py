"""The perturbation set: an l_p ball around each row of a batch, clipped to data bounds."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from certify.bounds import gemm


@dataclass
class InputSet:
    """Flattened perturbation set for a batch of B inputs with D features.

    ``lo``/``hi`` (B, D) always hold a box containing the set (the set itself for l_inf).
    For
    l_1 / l_2 balls ``x0`` (B, D) and ``eps`` (B, 1) give the exact ball, used by linear
    concretisation through the dual norm (Hölder).
    """

    lo: Tensor
    hi: Tensor
    p: float = math.inf
    x0: Tensor | None = None
    eps: Tensor | None = None

    @property
    def is_box(self) -> bool:
        return self.p == math.inf


def concretize_lower(A: Tensor, const: Tensor, inp: InputSet, gather) -> Tensor:
    """min over the set of ``A x + const``; A is (..., D), ``gather`` aligns (B, D) rows to A.

    A 2-D ``A`` (n, D) is shared by every example: the result is (B, n), by matrix products.
    """
    if A.dim() == 2:
        return _concretize_shared(A, const, inp)
    if inp.is_box:
        c, r = (inp.hi + inp.lo) / 2, (inp.hi - inp.lo) / 2
        if A.dim() == 3 and gather(c).dim() == 3:
            return (
                const + (A @ c.unsqueeze(-1)).squeeze(-1) - (A.abs() @ r.unsqueeze(-1)).squeeze(-1)
            )
        return const + (A * gather(c)).sum(-1) - (A.abs() * gather(r)).sum(-1)
    dual = _dual_norm(A, inp.p)
    return const + (A * gather(inp.x0)).sum(-1) - gather(inp.eps).squeeze(-1) * dual


def _concretize_shared(A: Tensor, const: Tensor, inp: InputSet) -> Tensor:
    """min over the set of ``A x + const`` for every example, with one (n, D) matrix ``A``."""
    if inp.is_box:
        c, r = (inp.hi + inp.lo) / 2, (inp.hi - inp.lo) / 2
        return const + gemm.linear(c, A) - gemm.linear(r, A.abs())
    dual = _dual_norm(A, inp.p)
    return const + inp.x0 @ A.T - inp.eps * dual


def _dual_norm(A: Tensor, p: float) -> Tensor:
    """Row norms of ``A`` in the dual of l_p (Hölder): l_q with 1/p + 1/q = 1."""
    q = 1.0 / (1.0 - 1.0 / p) if p > 1 else math.inf
    return A.abs().amax(-1) if q == math.inf else torch.linalg.vector_norm(A, ord=q, dim=-1)
