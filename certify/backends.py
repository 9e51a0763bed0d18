"""Optional auto_LiRPA backend (Xu et al., NeurIPS 2020), used when a working version imports.

PyPI's auto-LiRPA 0.3 does not import with torch 2.x; install the source release (0.7.x) from its
repository to enable ``compute_bounds(..., backend="auto_lirpa")``.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor, nn

_METHOD = {"ibp": "IBP", "crown": "CROWN", "crown-ibp": "CROWN-IBP"}


def auto_lirpa_available() -> tuple[bool, str]:
    """(available, reason): whether ``import auto_LiRPA`` works here."""
    if importlib.util.find_spec("auto_LiRPA") is None:
        return False, "auto_LiRPA is not installed (install its source release, 0.7.x)"
    try:
        import auto_LiRPA  # noqa: F401
    except Exception as err:  # broken installs raise many error types
        return False, f"auto_LiRPA is installed but fails to import: {err}"
    return True, "auto_LiRPA imports"


def auto_lirpa_bounds(model: nn.Module, x: Tensor, inp, method: str, C: Tensor | None):
    """Bounds from auto_LiRPA for the same perturbation set (box or l_p ball)."""
    ok, reason = auto_lirpa_available()
    if not ok:
        raise ImportError(f"backend='auto_lirpa' unavailable: {reason}")
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    bm = BoundedModule(model, torch.zeros_like(x), device=x.device)
    if inp.is_box:
        ptb = PerturbationLpNorm(
            norm=float("inf"), x_L=inp.lo.reshape(x.shape), x_U=inp.hi.reshape(x.shape)
        )
    else:
        ptb = PerturbationLpNorm(norm=inp.p, eps=float(inp.eps.max()))
    bx = BoundedTensor(x, ptb)
    Cb = None if C is None else (C if C.dim() == 3 else C.unsqueeze(0).expand(x.shape[0], -1, -1))
    lo, hi = bm.compute_bounds(x=(bx,), method=_METHOD[method], C=Cb)
    return lo, hi
