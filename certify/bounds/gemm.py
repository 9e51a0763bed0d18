"""The bound engine's product with a weight matrix: ``x @ weight.T (+ bias)``, as ``F.linear``.

On CPU, in float32 and without autograd, it runs oneDNN's GEMM
(``torch.ops.mkldnn._linear_pointwise``) where this torch build has it: oneDNN chooses its
kernels by the CPU's instruction sets, so it runs AVX-512 code on recent AMD CPUs, where the MKL
sgemm behind ``torch.matmul`` runs its AVX2 code (measured 2.2x on one Zen 5 core for the
(B R, 512) @ (512, 512) products of CROWN's backward pass). The result is the same product up
to float rounding (another summation order); bounds stay sound "up to rounding" as before. A
probe at first use checks that the call works and agrees with ``F.linear``; elsewhere (CUDA,
float64, autograd, a build without oneDNN) it is ``F.linear``.

oneDNN reads the weight fast only as a dense matrix (``weight`` or ``weight.T`` contiguous): a
column slice such as ``W[:, :k]`` (row stride larger than its width) makes it reorder the weight
element by element, measured ~300x slower than ``F.linear`` on the same operands. Such a weight
is copied into a dense one first (an ``(m, n)`` copy, cheaper than the product with any rows;
then oneDNN's product is ~3-10x faster than ``F.linear`` with the strided weight).

``ONEDNN = False`` switches the fast path off (to time the plain one).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

ONEDNN = True
_works: bool | None = None


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` for ``x`` (..., n) and ``weight`` (m, n) (any strides)."""
    if (
        ONEDNN
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and weight.dtype == torch.float32
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and (bias is None or not (torch.is_grad_enabled() and bias.requires_grad))
        and _onednn()
    ):
        if not (weight.is_contiguous() or weight.T.is_contiguous()):
            weight = weight.contiguous()  # a column slice: oneDNN's strided read is ~300x slower
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def _onednn() -> bool:
    """Whether oneDNN's product runs here and matches ``F.linear`` (probed once)."""
    global _works
    if _works is None:
        try:
            with torch.no_grad():
                g = torch.Generator().manual_seed(0)
                x, w = torch.randn(3, 5, 7, generator=g), torch.randn(7, 4, generator=g).T
                b = torch.randn(4, generator=g)
                out = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
                _works = torch.allclose(out, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
        except (AttributeError, RuntimeError, NotImplementedError):
            _works = False
    return _works
