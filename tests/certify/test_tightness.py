"""Tightness metric (Mao et al., ICLR 2024) and its experiment's quick mode."""

from __future__ import annotations

import pytest
import torch
from certify_nets import mlp, one_thread

from certify import tightness

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


def test_tightness_in_unit_interval_and_one_for_single_layer() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 5)
    t = tightness(torch.nn.Sequential(torch.nn.Linear(5, 3)), x)
    torch.testing.assert_close(t, torch.ones(16))
    t = tightness(mlp([5, 32, 32, 3], ["relu"]), x)
    assert ((t > 0) & (t <= 1 + 1e-6)).all() and (t < 1).any()


def test_tightness_equals_ratio_of_crown_to_ibp_on_linearisation() -> None:
    """On a linear (identity-activation) net CROWN is exact, so tightness = width ratio."""
    from certify import compute_bounds

    torch.manual_seed(1)
    net = mlp([4, 6, 3], ["identity"])
    x = torch.randn(8, 4)
    lo_c, hi_c = compute_bounds(net, x, 0.1, method="crown")
    lo_i, hi_i = compute_bounds(net, x, 0.1, method="ibp")
    ratio = ((hi_c - lo_c) / (hi_i - lo_i)).mean(-1)
    torch.testing.assert_close(tightness(net, x), ratio.detach(), atol=1e-5, rtol=1e-5)


def test_tightness_falls_with_width_at_init() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 10)
    t = [float(tightness(mlp([10, w, w, 4], ["relu"]), x).mean()) for w in (8, 64, 512)]
    assert t[0] > t[1] > t[2]
