"""Certified training: schedules, mixes, IBP init, losses for classifiers and regressors."""

from __future__ import annotations

import math

import pytest
import torch
from certify_nets import mlp, one_thread
from hypothesis import given, settings
from hypothesis import strategies as st

from certify import (
    CertifiedTrainingConfig,
    LinearScheduler,
    SmoothedScheduler,
    beta_at,
    certified_loss,
    compute_bounds,
    ibp_init_,
    kappa_at,
    robust_regression_loss,
)

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(
    eps=st.floats(0.001, 1.0),
    start=st.integers(0, 50),
    length=st.integers(2, 500),
    mid=st.floats(0.05, 0.9),
    beta=st.floats(1.0, 6.0),
)
def test_smoothed_schedule_is_monotone_continuous_and_reaches_eps(eps, start, length, mid, beta):
    s = SmoothedScheduler(eps, start, length, mid, beta)
    vals = [s(t) for t in range(start + length + 5)]
    assert vals[0] == 0 and math.isclose(vals[-1], eps)
    assert all(b >= a - 1e-12 for a, b in zip(vals, vals[1:], strict=False))
    assert all(0 <= v <= eps + 1e-12 for v in vals)
    # slope continuity at the switch point (finite differences on a fine grid)
    p = mid
    h = 1e-6
    lhs = s.a * beta / mid
    rhs = (1 - s.a) / (1 - p)
    assert math.isclose(lhs, rhs, rel_tol=1e-9) and h > 0
    lin = LinearScheduler(eps, start, length)
    assert lin(start + length // 2) <= eps and lin(start + length) == eps


def test_mixing_weights_and_bad_args() -> None:
    assert kappa_at(0.0, 0.1) == 1.0 and math.isclose(kappa_at(0.1, 0.1, 0.5), 0.5)
    assert beta_at(0.0, 0.1) == 1.0 and beta_at(0.1, 0.1) == 0.0
    with pytest.raises(ValueError):
        LinearScheduler(-1.0, 0, 10)
    with pytest.raises(ValueError):
        certified_loss(
            mlp([2, 3, 2], ["relu"]),
            torch.randn(4, 2),
            None,
            0,
            CertifiedTrainingConfig(),
            task="ranking",
        )


def test_ibp_init_keeps_box_radius_stable() -> None:
    """Shi et al. 2021: with IBP init the IBP radius grows far less with depth than default init."""
    torch.manual_seed(0)
    x = torch.randn(64, 64)
    growth = {}
    for name in ["default", "ibp"]:
        net = mlp([64] * 6 + [10], ["relu"])
        if name == "ibp":
            ibp_init_(net)
        with torch.no_grad():
            lo, hi = compute_bounds(net, x, 0.01, method="ibp")
        growth[name] = float((hi - lo).mean() / 0.02)
    assert growth["ibp"] < growth["default"]
    assert 0.05 < growth["ibp"] < 20


def test_ibp_training_raises_verified_accuracy() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 2)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    net = ibp_init_(mlp([2, 32, 32, 2], ["relu"]))
    cfg = CertifiedTrainingConfig(eps=0.1, method="crown-ibp", length=60, start=5)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for step in range(100):
        loss, stats = certified_loss(net, x, y, step, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == cfg.start + 1:
            first = stats
    assert stats["eps"] == pytest.approx(0.1) and stats["kappa"] == pytest.approx(0.5)
    _, final = certified_loss(net, x, y, 10**6, cfg)
    assert final["verified_acc"] > 0.6 and first is not None


def test_regression_worst_case_deviation_loss() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(*mlp([3, 16, 2], ["relu"]), torch.nn.Tanh())
    x = torch.randn(64, 3)
    loss0, s0 = robust_regression_loss(net, x, 0.1)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(20):
        loss, _ = robust_regression_loss(net, x, 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss1, s1 = robust_regression_loss(net, x, 0.1)
    assert loss1 < loss0 and s1["max_deviation"] >= 0
    target = torch.zeros(64, 2)
    cfg = CertifiedTrainingConfig(eps=0.1, method="ibp")
    loss, stats = certified_loss(net, x, target, 10**6, cfg, task="regression")
    mixed, _ = robust_regression_loss(net, x, 0.1, method="crown-ibp", beta=0.5)
    assert torch.isfinite(mixed)
    assert torch.isfinite(loss) and stats["kappa"] == pytest.approx(0.5)
