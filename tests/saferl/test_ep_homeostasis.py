"""Jacobian homeostasis: spec sanity checks 2 and 4."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saferl.ep import (
    EPNetConfig,
    EPNetwork,
    asymmetry_penalty,
    ep_error,
    homeostasis_exact,
    homeostasis_loss,
    layer_cosines,
    rbp_error,
    whitened_jacobian,
)

F64 = torch.float64


def setup(angle: float, seed: int = 1, batch: int = 6, hidden=(6, 5)):
    cfg = EPNetConfig(in_dim=8, hidden=hidden, n_classes=4, angle_deg=angle, dtype="float64")
    net = EPNetwork(cfg, device="cpu", seed=seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 8, dtype=F64, generator=gen)
    y = torch.randint(0, 4, (batch,), generator=gen)
    u, _ = net.free_phase(x, steps=200)
    return net, x, y, u


@settings(max_examples=20, deadline=None, derandomize=True)
@given(n=st.integers(2, 8), seed=st.integers(0, 10_000), symmetric=st.booleans())
def test_penalty_is_unbiased_for_half_frobenius_of_asymmetry(n, seed, symmetric):
    """Spec check 4 (generic J): MC penalty -> 1/2 ||J - J^T||_F^2 / n; exactly 0 if J = J^T."""
    rng = np.random.default_rng(seed)
    a = torch.as_tensor(rng.standard_normal((n, n)))
    if symmetric:
        a = a + a.T
    eps = torch.as_tensor(rng.standard_normal((40_000, n)))
    draws = asymmetry_penalty(lambda t: t @ a.T, eps)
    target = 0.5 * float(((a - a.T) ** 2).sum()) / n
    if symmetric:
        assert float(draws.abs().max()) < 1e-9
    else:
        stderr = float(draws.std()) / np.sqrt(len(draws))
        assert abs(float(draws.mean()) - target) < 5 * stderr + 1e-12


def test_whitened_jacobian_matches_autograd_state_jacobian():
    """J = D^{1/2} J_u D^{-1/2} , J_u = dF/du by autograd (independent of the JVP code)."""
    net, x, _, u = setup(70.0, batch=2)
    j = whitened_jacobian(net, x, u)
    for i in range(2):
        j_u = torch.autograd.functional.jacobian(lambda s, i=i: net.vector_field(s, x[i]), u[i])
        s = net.rho_prime(u[i]).sqrt()
        torch.testing.assert_close(j[i], s[:, None] * j_u / s[None, :])


def test_check4_network_estimate_matches_exact_and_is_zero_when_symmetric():
    """Spec check 4 on the network: MC loss ~ 1/2 ||J - J^T||^2 / n; 0 for B = W^T."""
    net, x, _, u = setup(90.0)
    exact = float(homeostasis_exact(net, x, u).mean())
    gen = torch.Generator().manual_seed(0)
    mc = float(homeostasis_loss(net, x, u, n_draws=4000, generator=gen).detach())
    assert exact > 1e-3
    assert abs(mc - exact) < 0.05 * exact
    net0, x0, _, u0 = setup(0.0)
    assert float(homeostasis_exact(net0, x0, u0).max()) < 1e-20
    assert abs(float(homeostasis_loss(net0, x0, u0, n_draws=50).detach())) < 1e-12


def test_check2_random_feedback_cosine_below_one_and_raised_by_homeostasis():
    """Spec check 2: random B (90 deg) -> hidden-layer cos(EP, RBP) well below 1; descending the
    homeostatic loss alone (u* re-relaxed every step) raises it."""
    net, x, y, u = setup(90.0, batch=16, hidden=(10,))

    def hidden_cos() -> float:
        u_star, _ = net.free_phase(x, steps=100)
        v = ep_error(net, x, y, u_star, 0, t2=40)
        return layer_cosines(net, v, rbp_error(net, x, y, u_star, steps=150))[0]

    before = hidden_cos()
    opt = torch.optim.SGD(net.dynamics_parameters(), lr=1.0)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(20):
        u_star, _ = net.free_phase(x, steps=50)
        loss = homeostasis_loss(net, x, u_star, n_draws=4, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    after = hidden_cos()
    assert before < 0.5, before
    assert after > before + 0.5 and after > 0.9, (before, after)
    assert np.mean(losses[-5:]) < 0.2 * np.mean(losses[:5])


def test_homeostasis_gradient_touches_feedback_and_non_input_weights_only():
    net, x, _, u = setup(90.0)
    loss = homeostasis_loss(net, x, u, n_draws=2)
    grads = torch.autograd.grad(loss, net.dynamics_parameters(), allow_unused=True)
    named = dict(zip(["W0", "W1", "W2", "b0", "b1", "b2", "B0", "B1"], grads, strict=True))
    assert named["W0"] is None and named["b0"] is None
    assert named["B0"] is not None and float(named["B0"].abs().sum()) > 0
    assert named["W1"] is not None and float(named["W1"].abs().sum()) > 0


def test_bad_arguments():
    net, x, _, u = setup(0.0, batch=2)
    with pytest.raises(ValueError, match="n_draws"):
        homeostasis_loss(net, x, u, n_draws=0)
    with pytest.raises(ValueError, match="u_star"):
        homeostasis_loss(net, x, u[:1])
