"""Optional auto_LiRPA backend: cross-check against the native engine where it imports."""

from __future__ import annotations

import pytest
import torch

from certify import auto_lirpa_available, compute_bounds

AVAILABLE, REASON = auto_lirpa_available()


def test_backend_unavailable_raises_clearly() -> None:
    if AVAILABLE:
        pytest.skip("auto_LiRPA is installed; the error path cannot be exercised")
    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(ImportError, match="auto_lirpa"):
        compute_bounds(net, torch.randn(2, 3), 0.1, backend="auto_lirpa")


@pytest.mark.skipif(not AVAILABLE, reason=REASON)
@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_native_matches_auto_lirpa(method: str) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(5, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 3),
    )
    x = torch.randn(16, 5)
    with torch.no_grad():
        # IBP screening of intermediate neurons: auto_LiRPA's own reference bounds
        ours = compute_bounds(net, x, 0.05, method=method, reference="ibp")
        ref = compute_bounds(net, x, 0.05, method=method, backend="auto_lirpa")
        # the default (symbolic) screen may tighten them, never loosen
        lo, hi = compute_bounds(net, x, 0.05, method=method)
    torch.testing.assert_close(ours[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[1], ref[1], atol=1e-5, rtol=1e-5)
    assert (lo >= ref[0] - 1e-6).all() and (hi <= ref[1] + 1e-6).all()
