"""Hostile inputs: every bad argument raises a clear error before any work is done, and CROWN
stays finite (and sound) wherever IBP does, even for absurd radii."""

from __future__ import annotations

import pytest
import torch
from certify_nets import CROWN_ACTS, mlp, one_thread, sample_box
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from certify import (
    action_bounds,
    certified_deviation,
    compute_bounds,
    feasibility_certificate,
    fraction_certified,
)

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)
NAN = float("nan")


@pytest.fixture
def net() -> nn.Sequential:
    torch.manual_seed(0)
    return mlp([4, 8, 2], ["relu"])


# ----------------------------------------------------------------- 1. NaN data bounds


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"x_min": NAN}, "x_min"),
        ({"x_max": NAN}, "x_max"),
        ({"x_min": NAN, "x_max": 1.0}, "x_min"),
        ({"x_min": torch.tensor([0.0, NAN, 0.0, 0.0])}, "x_min"),
        ({"x_max": torch.tensor([1.0, 1.0, 1.0, NAN])}, "x_max"),
    ],
)
@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_nan_data_bounds_raise(net, kw, name, method) -> None:
    x = torch.rand(3, 4) * 0.5 + 0.25
    with pytest.raises(ValueError, match=f"{name}.*NaN"):
        compute_bounds(net, x, 0.1, method=method, **kw)


# ------------------------------------------------------------- 2. x outside [x_min, x_max]


@pytest.mark.parametrize(
    "shift, kw, match",
    [
        (2.0, {"x_min": 0.0, "x_max": 1.0}, r"above x_max .*by up to 1\.5"),
        (-0.75, {"x_min": 0.0, "x_max": 1.0}, r"below x_min .*by up to 0\.25"),
        (-0.75, {"x_min": torch.zeros(4)}, r"below x_min"),
        (0.0, {"x_min": 1.0, "x_max": 0.0}, r"x_min must be <= x_max"),
    ],
)
def test_x_outside_data_bounds_raises(net, shift, kw, match) -> None:
    x = torch.full((3, 4), 0.5)
    x[1, 2] += shift
    with pytest.raises(ValueError, match=match):
        compute_bounds(net, x, 0.1, **kw)
    with pytest.raises(ValueError, match=match):
        action_bounds(net, x, 0.1, method="crown", **kw)


def test_x_on_the_data_bounds_is_accepted(net) -> None:
    x = torch.tensor([[0.0, 1.0, 0.5, 0.0]])
    lo, hi = compute_bounds(net, x, 0.1, method="crown", x_min=0.0, x_max=1.0)
    y = net(x)
    assert (lo <= y + 1e-6).all() and (y <= hi + 1e-6).all()


# ---------------------------------------------------------------- 3. CROWN at huge radii


@pytest.mark.parametrize("method", ["crown", "crown-ibp"])
@pytest.mark.parametrize("fast", [True, False])
def test_crown_huge_eps_is_finite_where_ibp_is(net, method, fast) -> None:
    x = torch.rand(3, 4)
    with torch.no_grad():
        ibp = compute_bounds(net, x, 1e30, method="ibp")
        lo, hi = compute_bounds(net, x, 1e30, method=method, fast=fast)
    assert torch.isfinite(ibp[0]).all() and torch.isfinite(ibp[1]).all()
    assert torch.isfinite(lo).all() and torch.isfinite(hi).all(), (lo, hi)
    assert (lo <= net(x) + 1e-6).all() and (net(x) <= hi + 1e-6).all()


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    hidden=st.lists(st.integers(1, 10), min_size=1, max_size=3),
    act=st.sampled_from(sorted(CROWN_ACTS)),
    log_eps=st.sampled_from([-3, 0, 3, 10, 20, 30, 34, 38, 300]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    method=st.sampled_from(["crown", "crown-ibp"]),
    spec=st.booleans(),
    fast=st.booleans(),
)
def test_bounds_contain_samples_at_any_radius(
    seed, hidden, act, log_eps, dtype, method, spec, fast
):
    """Property: at any radius CROWN is finite wherever IBP is and never NaN (±inf where even
    IBP overflows), and its bounds contain sampled outputs (relative tolerance)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = mlp([3, *hidden, 2], [act, "relu"]).to(dtype)
    x = torch.randn(2, 3, generator=gen, dtype=dtype)
    C = torch.tensor([[1.0, -1.0], [0.0, 1.0]], dtype=dtype) if spec else None
    eps = 10.0**log_eps
    with torch.no_grad():
        ibp = compute_bounds(net, x, eps, method="ibp", C=C)
        lo, hi = compute_bounds(net, x, eps, method=method, C=C, fast=fast)
        for a, b in zip(ibp, (lo, hi), strict=True):
            assert (torch.isfinite(b) | ~torch.isfinite(a)).all(), (eps, a, b)
        assert not torch.isnan(lo).any() and not torch.isnan(hi).any()
        y = net(sample_box(x - eps, x + eps, 500, gen))
        y = y if C is None else y @ C.T
    tol = (1e-9 if dtype == torch.float64 else 1e-5) * (1 + torch.maximum(lo.abs(), hi.abs()))
    tol = tol.unsqueeze(1)
    assert not (y < lo.unsqueeze(1) - tol).any() and not (y > hi.unsqueeze(1) + tol).any()


# ------------------------------------------------- 5. dtype, feature count, empty batch


@pytest.mark.parametrize("method", ["ibp", "crown", "crown-ibp"])
def test_dtype_mismatch_raises(net, method) -> None:
    with pytest.raises(TypeError, match=r"float64.*float32"):
        compute_bounds(net, torch.rand(3, 4, dtype=torch.float64), 0.1, method=method)


@pytest.mark.parametrize("method", ["ibp", "crown", "crown-ibp"])
def test_wrong_feature_count_raises(net, method) -> None:
    with pytest.raises(ValueError, match=r"5 features.*takes 4"):
        compute_bounds(net, torch.rand(3, 5), 0.1, method=method)


@pytest.mark.parametrize("method", ["ibp", "crown", "crown-ibp"])
def test_empty_batch_raises(net, method) -> None:
    with pytest.raises(ValueError, match="empty batch"):
        compute_bounds(net, torch.rand(0, 4), 0.1, method=method)


def test_policy_functions_name_the_problem(net) -> None:
    actor = nn.Sequential(net, nn.Tanh())
    critic = mlp([6, 8, 1], ["relu"])
    for fn in (action_bounds, certified_deviation):
        with pytest.raises(TypeError, match="float64"):
            fn(actor, torch.rand(3, 4, dtype=torch.float64), 0.1)
        with pytest.raises(ValueError, match="5 features"):
            fn(actor, torch.rand(3, 5), 0.1)
        with pytest.raises(ValueError, match="empty batch"):
            fn(actor, torch.rand(0, 4), 0.1)
    with pytest.raises(ValueError, match="empty batch"):
        fraction_certified(actor, torch.rand(0, 4), 0.1, 0.5)
    with pytest.raises(ValueError, match="delta"):
        fraction_certified(actor, torch.rand(3, 4), 0.1, NAN)
    with pytest.raises(ValueError, match="empty batch"):
        feasibility_certificate(critic, actor, torch.rand(0, 4), 0.1)
    with pytest.raises(ValueError, match="threshold"):
        feasibility_certificate(critic, actor, torch.rand(3, 4), 0.1, threshold=NAN)
    wrong = mlp([7, 8, 1], ["relu"])  # expects obs_dim + act_dim = 7, gets 4 + 2 = 6
    with pytest.raises(ValueError, match=r"6 features.*takes 7"):
        feasibility_certificate(wrong, actor, torch.rand(3, 4), 0.1)
    with pytest.raises(ValueError, match="action_low"):
        action_bounds(actor, torch.rand(3, 4), 0.1, action_low=NAN, action_high=1.0)
