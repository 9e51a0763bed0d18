"""Error estimators: spec sanity checks 1 and 3, gradient exactness, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saferl.ep import (
    EPNetConfig,
    EPNetwork,
    cosine,
    dynamics_gradients,
    ep_error,
    layer_cosines,
    rbp_error,
)

F64 = torch.float64


def setup(angle: float, seed: int = 1, activation: str = "sigmoid4", batch: int = 6):
    cfg = EPNetConfig(
        in_dim=8,
        hidden=(6, 5),
        n_classes=4,
        angle_deg=angle,
        activation=activation,
        dtype="float64",
    )
    net = EPNetwork(cfg, device="cpu", seed=seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 8, dtype=F64, generator=gen)
    y = torch.randint(0, 4, (batch,), generator=gen)
    u, stats = net.free_phase(x, steps=200)
    assert bool(stats.converged.all())
    return net, x, y, u


def test_check1_symmetric_feedback_ep_equals_rbp():
    """Spec check 1: with B = W^T the EP error equals the RBP error (cos ~ 1), every layer."""
    net, x, y, u = setup(0.0)
    v_rbp = rbp_error(net, x, y, u, steps=200)
    for n_points, beta in ((2, 0.05), (4, 0.5), (1, 1e-4)):
        v = ep_error(net, x, y, u, n_points, beta, t2=40)
        assert min(layer_cosines(net, v, v_rbp)) > 0.999, (n_points, beta)
    v0 = ep_error(net, x, y, u, 0, t2=40)
    torch.testing.assert_close(v0, v_rbp, atol=1e-8, rtol=1e-6)


def test_check1_fails_without_symmetry():
    """Control for check 1: random feedback (90 deg): hidden-layer cosine well below 1."""
    net, x, y, u = setup(90.0)
    v = ep_error(net, x, y, u, 0, t2=40)
    cos = layer_cosines(net, v, rbp_error(net, x, y, u, steps=200))
    assert cos[0] < 0.9
    assert cos[-1] > 0.99  # the output layer's error is right whatever B is


def test_check3_cauchy_bias_falls_with_n_at_large_beta():
    """Spec check 3: at |beta| = 0.5 the N-point Cauchy estimate approaches the exact derivative."""
    net, x, y, u = setup(45.0)
    exact = ep_error(net, x, y, u, 0, t2=20)
    errs = []
    for n_points in (1, 2, 4, 6):
        v = ep_error(net, x, y, u, n_points, 0.5, t2=20)
        errs.append(float((v - exact).norm() / exact.norm()))
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False)), errs
    assert errs[-1] < 2e-3 and errs[0] > 10 * errs[2]
    assert cosine(ep_error(net, x, y, u, 6, 0.5, t2=20), exact) > 0.9999


def test_cauchy_bias_is_order_beta_to_the_n():
    """The N-point estimate's bias scales like |beta|^N (Cauchy/Taylor): halving beta, N=2 -> /4."""
    net, x, y, u = setup(45.0)
    exact = ep_error(net, x, y, u, 0, t2=20)
    e = [float((ep_error(net, x, y, u, 2, b, t2=20) - exact).norm()) for b in (0.2, 0.1)]
    assert 3.0 < e[0] / e[1] < 5.0


@settings(max_examples=5, deadline=None, derandomize=True)
@given(
    angle=st.floats(0.0, 180.0),
    seed=st.integers(0, 1000),
    n_points=st.integers(2, 5),
)
def test_small_beta_holomorphic_estimate_matches_exact(angle, seed, n_points):
    """For any angle, hEP with small |beta| recovers the exact beta-derivative."""
    net, x, y, u = setup(angle, seed=seed, batch=3)
    exact = ep_error(net, x, y, u, 0, t2=15)
    v = ep_error(net, x, y, u, n_points, 0.01, t2=15)
    assert float((v - exact).norm() / exact.norm()) < 2e-3  # bias O(|beta|^N), |beta| = 0.01


def test_rbp_gradient_matches_backprop_through_time():
    """-(dF/dtheta)^T (-delta) equals the loss gradient by autograd through a relaxation."""
    net, x, y, u = setup(60.0)
    grads = dynamics_gradients(net, x, u, rbp_error(net, x, y, u, steps=300))
    u_t = net.relax(torch.zeros_like(u), x, 300)
    loss = net.loss(u_t, y).mean()
    bptt = torch.autograd.grad(loss, net.dynamics_parameters())
    for g, h in zip(grads, bptt, strict=True):
        torch.testing.assert_close(g, h, atol=1e-8, rtol=1e-6)


def test_one_sided_ep_works_with_non_holomorphic_activation():
    net, x, y, u = setup(0.0, activation="tanh")
    net_relu = EPNetwork(
        EPNetConfig(in_dim=8, hidden=(6,), n_classes=4, activation="hard_sigmoid", dtype="float64"),
        device="cpu",
    )
    u2, _ = net_relu.free_phase(x, steps=50)
    v = ep_error(net_relu, x, y, u2, 1, 0.01, t2=10)
    assert torch.isfinite(v).all()


@pytest.mark.parametrize("n_points", [1, 2, 6])
def test_beta_zero_rejected_for_n_at_least_one(n_points):
    net, x, y, u = setup(0.0)
    with pytest.raises(ValueError, match="beta = 0"):
        ep_error(net, x, y, u, n_points, 0.0)


@pytest.mark.parametrize("activation", ["relu", "hard_sigmoid"])
def test_non_holomorphic_activation_rejected_for_n_at_least_two(activation):
    cfg = EPNetConfig(in_dim=8, hidden=(6,), n_classes=4, activation=activation, dtype="float64")
    net = EPNetwork(cfg, device="cpu")
    x = torch.rand(2, 8, dtype=F64)
    y = torch.tensor([0, 1])
    u, _ = net.free_phase(x, steps=10)
    with pytest.raises(ValueError, match="holomorphic"):
        ep_error(net, x, y, u, 2, 0.1)


@pytest.mark.parametrize(
    ("n_points", "beta", "match"),
    [(-1, 0.1, "N"), (1.5, 0.1, "N"), (2, float("nan"), "finite"), (2, float("inf"), "finite")],
)
def test_bad_estimator_arguments(n_points, beta, match):
    net, x, y, u = setup(0.0, batch=2)
    with pytest.raises(ValueError, match=match):
        ep_error(net, x, y, u, n_points, beta)


def test_wrong_state_shape_rejected():
    net, x, y, u = setup(0.0, batch=2)
    with pytest.raises(ValueError, match="u_star"):
        ep_error(net, x, y, u[:, :-1], 2, 0.1)
