"""The engine's weight product (``certify.bounds.gemm.linear``): any strides of the weight give
``F.linear``'s result, and a column-sliced weight (what folding a constant input into a layer
leaves, ``W[:, :k]``) costs about what the dense one does (oneDNN reads such a weight element
by element, ~300x slower, unless it is made dense first)."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from certify.bounds import gemm


def _weights(g: torch.Generator, dtype=torch.float32) -> dict[str, torch.Tensor]:
    full = torch.randn(128, 142, generator=g, dtype=dtype)
    return {
        "contiguous": full[:, 3:14].contiguous().T.contiguous(),  # (11, 128)
        "transposed": full[:, 3:14].contiguous().T,  # .T of a dense matrix
        "column slice": full[:, 3:14].T,  # strides (1, 142): neither it nor .T is dense
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_strided_weights_give_the_dense_result(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 128, generator=g, dtype=dtype)
    b = torch.randn(11, generator=g, dtype=dtype)
    ws = _weights(g, dtype)
    assert not (ws["column slice"].is_contiguous() or ws["column slice"].T.is_contiguous())
    want = F.linear(x, ws["contiguous"], b)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    with torch.no_grad():
        for name, w in ws.items():
            torch.testing.assert_close(gemm.linear(x, w, b), want, rtol=tol, atol=tol, msg=name)
            torch.testing.assert_close(gemm.linear(x, w), want - b, rtol=tol, atol=tol, msg=name)


def test_column_slice_is_not_a_slow_path():
    """Best of several runs; the slice may cost a few times the dense product (a copy of the
    weight), not the hundreds of times oneDNN's strided read took (measured 1,500x here)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1024, 128, generator=g)
    ws = _weights(g)

    def best(w: torch.Tensor) -> float:
        times = []
        for _ in range(7):
            start = time.perf_counter()
            gemm.linear(x, w)
            times.append(time.perf_counter() - start)
        return min(times)

    with torch.no_grad():
        dense, sliced = best(ws["contiguous"]), best(ws["column slice"])
    assert sliced < 20 * dense + 2e-3, (sliced, dense)
