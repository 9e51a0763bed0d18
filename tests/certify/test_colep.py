"""COLEP: exact circuit marginals, sound bounds, coverage (clean and certified), errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from certify.colep import (
    COLEP,
    COLEPConfig,
    ProbabilisticCircuit,
    coverage_over_splits,
    sensor_bounds_linf,
    sensor_probs,
    sensor_thresholds,
)
from certify.conformal import check_coverage, conformal_quantile
from certify.smoothing import (
    SmoothingConfig,
    monte_carlo_mean,
    smoothed_calibration_alpha,
    smoothed_prob_bounds,
)


def bound_fn():
    """The bound engine (CROWN) as a (model, x, eps) -> (lo, hi) callable."""
    from certify import compute_bounds

    return lambda m, x, eps: compute_bounds(m, x, eps, method="crown")


ALPHA = 0.1


def brute_force_marginals(rules, w, p, q):
    """Enumerate all 2^(K+A) assignments: Σ_{λ_k=1} P·F / Σ P·F (COLEP Eq. 4–5)."""
    k, a = rules.shape
    num = torch.zeros(p.shape[0], k, dtype=torch.float64)
    den = torch.zeros(p.shape[0], dtype=torch.float64)
    for bits in itertools.product([0, 1], repeat=k + a):
        lam, att = torch.tensor(bits[:k]), torch.tensor(bits[k:])
        prob = torch.where(lam.bool(), p, 1 - p).prod(1) * torch.where(att.bool(), q, 1 - q).prod(1)
        sat = 0.0
        for i in range(k):
            for j in range(a):
                if rules[i, j] == 0:
                    continue
                holds = att[j] == 1 if rules[i, j] == 1 else att[j] == 0
                sat += w[i, j] * float((lam[i] == 0) or holds)
        weight = prob * math.exp(sat)
        den += weight
        num += weight[:, None] * lam.double()[None, :]
    return num / den[:, None]


def _rules_3x2():
    return torch.tensor([[1, -1], [1, 1], [0, -1]])


def test_circuit_marginals_are_exact():
    gen = torch.Generator().manual_seed(0)
    pc = ProbabilisticCircuit(_rules_3x2(), init_weight=1.3).double()
    with torch.no_grad():
        pc.raw_w.normal_(0, 1, generator=gen)
    p = torch.rand(6, 3, generator=gen, dtype=torch.float64)
    q = torch.rand(6, 2, generator=gen, dtype=torch.float64)
    expected = brute_force_marginals(_rules_3x2(), pc.weights.detach(), p, q)
    assert torch.allclose(pc(p, q), expected, atol=1e-10)


def test_zero_weights_leave_sensors_unchanged():
    pc = ProbabilisticCircuit(_rules_3x2(), init_weight=0.0).double()
    p = torch.rand(5, 3, dtype=torch.float64)
    q = torch.rand(5, 2, dtype=torch.float64)
    assert torch.allclose(pc(p, q), p, atol=1e-4)  # softplus(-10) ≈ 4.5e-5


def test_rules_correct_a_contradicted_label():
    # label 0 ⇒ attribute 0; a confident "no attribute 0" pulls label 0 down
    pc = ProbabilisticCircuit(torch.tensor([[1], [0]]), init_weight=3.0)
    p = torch.tensor([[0.6, 0.4]])
    assert pc(p, torch.tensor([[0.02]]))[0, 0] < 0.2
    assert pc(p, torch.tensor([[0.98]]))[0, 0] > 0.55


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 100_000), st.floats(0.0, 0.4), st.sampled_from(["ratio", "terms"]))
def test_circuit_bounds_are_sound(seed, width, method):
    gen = torch.Generator().manual_seed(seed)
    model = COLEP(_rules_3x2(), groups=[[0], [0, 1]], cfg=COLEPConfig(raw_weight=0.2)).double()
    with torch.no_grad():
        for c in model.circuits:
            c.raw_w.normal_(0, 1.5, generator=gen)
    p_lo = torch.rand(4, 3, generator=gen, dtype=torch.float64) * (1 - width)
    q_lo = torch.rand(4, 2, generator=gen, dtype=torch.float64) * (1 - width)
    p_hi, q_hi = p_lo + width, q_lo + width
    lo, hi = model.bounds(p_lo, p_hi, q_lo, q_hi, method)
    with torch.no_grad():
        for _ in range(15):
            p = p_lo + (p_hi - p_lo) * torch.rand(4, 3, generator=gen, dtype=torch.float64)
            q = q_lo + (q_hi - q_lo) * torch.rand(4, 2, generator=gen, dtype=torch.float64)
            pi = model(p, q)
            assert (pi >= lo - 1e-10).all() and (pi <= hi + 1e-10).all()
    # a degenerate box gives the point value
    with torch.no_grad():
        lo0, hi0 = model.bounds(p_lo, p_lo, q_lo, q_lo, method)
        assert torch.allclose(lo0, model(p_lo, q_lo)) and torch.allclose(hi0, lo0)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 100_000), st.floats(0.01, 0.5))
def test_ratio_bounds_are_exact_over_weights_and_never_looser(seed, width):
    gen = torch.Generator().manual_seed(seed)
    model = COLEP(_rules_3x2()).double()
    with torch.no_grad():
        model.circuits[0].raw_w.normal_(0, 1.5, generator=gen)
    p_lo = torch.rand(6, 3, generator=gen, dtype=torch.float64) * (1 - width)
    q_lo = torch.rand(6, 2, generator=gen, dtype=torch.float64) * (1 - width)
    with torch.no_grad():
        r_lo, r_hi = model.bounds(p_lo, p_lo + width, q_lo, q_lo + width, "ratio")
        t_lo, t_hi = model.bounds(p_lo, p_lo + width, q_lo, q_lo + width, "terms")
        assert (r_lo >= t_lo - 1e-12).all() and (r_hi <= t_hi + 1e-12).all()
        # a vertex search over all 2^5 box corners stays inside (and close to) the ratio bounds
        best_lo, best_hi = torch.ones_like(r_lo), torch.zeros_like(r_hi)
        for bits in itertools.product([0, 1], repeat=5):
            b = torch.tensor(bits, dtype=torch.float64) * width
            pi = model(p_lo + b[:3], q_lo + b[3:])
            best_lo, best_hi = torch.minimum(best_lo, pi), torch.maximum(best_hi, pi)
        assert (r_lo <= best_lo + 1e-10).all() and (r_hi >= best_hi - 1e-10).all()


# --------------------------------------------------------------------------------------------
# a small task: 4 classes, 2 attributes (class ≥ 2, class odd), sensors are small MLPs
# --------------------------------------------------------------------------------------------

RULES = torch.tensor([[-1, -1], [-1, 1], [1, -1], [1, 1]])


def _data(n, gen):
    y = torch.randint(0, 4, (n,), generator=gen)
    centres = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    return centres[y] + 0.4 * torch.randn(n, 2, generator=gen), y


def _attrs(y):
    return torch.stack([(y >= 2), (y % 2 == 1)], 1).float()


def _train(model, x, target, steps=150):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(x), target).backward()
        opt.step()
    return model


def _mlp(out):
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, out))


@pytest.fixture(scope="module")
def colep_task():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x, y = _data(800, gen)
    labels = nn.functional.one_hot(y, 4).float()
    # one binary sensor per label and per attribute
    sensors = [_train(_mlp(1), x, labels[:, i : i + 1]) for i in range(4)]
    sensors += [_train(_mlp(1), x, _attrs(y)[:, j : j + 1]) for j in range(2)]
    model = COLEP(RULES, cfg=COLEPConfig(fit_steps=60))
    xf, yf = _data(400, gen)
    s = sensor_probs(sensors, xf)
    losses = model.fit(s[:, :4], s[:, 4:], yf)
    x_pool, y_pool = _data(2000, gen)
    return sensors, model, x_pool, y_pool, losses


def test_fit_lowers_the_loss(colep_task):
    losses = colep_task[-1]
    assert len(losses) == 60 and losses[-1] < losses[0] - 1e-3


@pytest.mark.parametrize("mode", ["classwise", "union"])
def test_colep_coverage_over_splits(colep_task, mode):
    sensors, model, x, y, _ = colep_task
    s = sensor_probs(sensors, x)
    with torch.no_grad():
        pi = model(s[:, :4], s[:, 4:])
    cfg = COLEPConfig(alpha=ALPHA, calibration=mode)
    cov, size = coverage_over_splits(pi, pi, y, 200, cfg, 200, torch.Generator().manual_seed(1))
    check = check_coverage(cov, ALPHA, 200, upper=False)  # union is conservative by design
    assert check.ok, check
    assert size.mean() < 4.0
    if mode == "classwise":  # ≈ 50 calibration points per class: ≤ 1 − α + 1/(n_k+1) + tol
        assert check.mean <= 1 - ALPHA + 1 / 40 + 4 * check.std_err


def test_sensor_thresholds_match_scalar_quantile(colep_task):
    gen = torch.Generator().manual_seed(2)
    pi = torch.rand(1, 60, 4, generator=gen)
    y = torch.randint(0, 4, (1, 60), generator=gen)
    q = sensor_thresholds(pi, y, COLEPConfig(calibration="classwise"))[0]
    for k in range(4):
        assert q[k] == conformal_quantile(1 - pi[0, y[0] == k, k], 0.1)
    q = sensor_thresholds(pi, y, COLEPConfig(calibration="union"))[0]
    for k in range(4):
        s = torch.where(y[0] == k, 1 - pi[0, :, k], pi[0, :, k])
        assert q[k] == conformal_quantile(s, 0.1 / 4)


def pgd_sensors(sensors, model, x, y, eps, steps=15):
    """ℓ∞ PGD lowering COLEP's corrected probability of the true label."""
    delta = torch.zeros_like(x).uniform_(-eps, eps).requires_grad_(True)
    for _ in range(steps):
        s = torch.sigmoid(torch.cat([m(x + delta) for m in sensors], 1))
        pi = model(s[:, :4], s[:, 4:]).gather(1, y[:, None])
        (grad,) = torch.autograd.grad(pi.clamp_min(1e-12).log().sum(), delta)
        with torch.no_grad():
            delta -= 2.5 * eps / steps * grad.sign()
            delta.clamp_(-eps, eps)
    return (x + delta).detach()


def test_certified_colep_keeps_coverage_under_pgd(colep_task):
    sensors, model, x, y, _ = colep_task
    eps = 0.1
    torch.manual_seed(3)
    x_adv = pgd_sensors(sensors, model, x, y, eps)
    with torch.no_grad():
        s = sensor_probs(sensors, x)
        s_adv = sensor_probs(sensors, x_adv)
        pi, pi_adv = model(s[:, :4], s[:, 4:]), model(s_adv[:, :4], s_adv[:, 4:])
        lo, hi = sensor_bounds_linf(sensors, x_adv, eps, bound_fn=bound_fn())
        assert (lo <= s_adv + 1e-6).all() and (s_adv <= hi + 1e-6).all()
        _, pi_hi = model.bounds(lo[:, :4], hi[:, :4], lo[:, 4:], hi[:, 4:])
    assert (pi_adv <= pi_hi + 1e-6).all()
    cfg = COLEPConfig(alpha=ALPHA)
    gen = torch.Generator().manual_seed(4)
    cov, size = coverage_over_splits(pi, pi_hi, y, 200, cfg, 200, gen)
    assert check_coverage(cov, ALPHA, 200, upper=False).ok
    cov_plain, _ = coverage_over_splits(pi, pi_adv, y, 200, cfg, 200, gen)
    assert not check_coverage(cov_plain, ALPHA, 200).ok  # the attack does hurt plain COLEP


def test_smoothed_colep_keeps_coverage_under_l2_attack(colep_task):
    sensors, model, x, y, _ = colep_task
    x, y = x[:600], y[:600]
    cfg = SmoothingConfig(sigma=0.25, n_samples=200, beta=1e-4)
    eps = 0.1
    torch.manual_seed(5)
    x_adv = pgd_sensors(sensors, model, x, y, eps / math.sqrt(2))  # ℓ∞ step inside the ℓ2 ball
    gen = torch.Generator().manual_seed(6)

    def probs(z):
        return sensor_probs(sensors, z)

    s_hat = monte_carlo_mean(probs, x, cfg, gen)
    s_adv = monte_carlo_mean(probs, x_adv, cfg, gen)
    lo, hi = smoothed_prob_bounds(s_adv, eps, cfg)
    with torch.no_grad():
        pi = model(s_hat[:, :4], s_hat[:, 4:])
        _, pi_hi = model.bounds(lo[:, :4], hi[:, :4], lo[:, 4:], hi[:, 4:])
    alpha_cal = smoothed_calibration_alpha(ALPHA, 6, cfg.beta)
    ccfg = COLEPConfig(alpha=alpha_cal)
    cov, _ = coverage_over_splits(pi, pi_hi, y, 150, ccfg, 200, gen)
    assert check_coverage(cov, ALPHA, 150, upper=False).ok


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_colep_bad_inputs():
    with pytest.raises(ValueError, match="alpha"):
        COLEP(RULES, cfg=COLEPConfig(alpha=1.0))
    with pytest.raises(ValueError, match="calibration"):
        COLEP(RULES, cfg=COLEPConfig(calibration="bonferroni-ish"))
    with pytest.raises(ValueError, match="rules"):
        COLEP(torch.tensor([[2, 0]]))
    with pytest.raises(ValueError, match="group"):
        COLEP(RULES, groups=[[0, 5]])
    model = COLEP(RULES)
    p, q = torch.rand(10, 4), torch.rand(10, 2)
    with pytest.raises(ValueError, match="empty"):
        model.calibrate(p[:0], q[:0], torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        model.calibrate(p, q, torch.full((10,), 4))
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        model(p, torch.rand(10, 3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model(p * 3, q)
    with pytest.raises(RuntimeError, match="calibrate"):
        model.predict(p, q)
    with pytest.raises(ValueError, match="exceed"):
        smoothed_calibration_alpha(0.01, 14, 0.001)


def test_colep_object_api(colep_task):
    sensors, model, x, y, _ = colep_task
    s = sensor_probs(sensors, x)
    model.calibrate(s[:300, :4], s[:300, 4:], y[:300])
    sets = model.predict(s[300:, :4], s[300:, 4:])
    cov = sets.gather(1, y[300:, None]).float().mean().item()
    assert sets.shape == (1700, 4) and cov >= 0.86
    lo, hi = sensor_bounds_linf(sensors, x[300:], 0.05, bound_fn=bound_fn())
    rob = model.predict_from_bounds(lo[:, :4], hi[:, :4], lo[:, 4:], hi[:, 4:])
    assert (rob >= sets).all()


def test_saturated_sensors_keep_fit_and_bounds_finite():
    # sigmoid saturates to exactly 0 or 1 in float32; the circuit clips, gradients stay finite
    model = COLEP(RULES, cfg=COLEPConfig(fit_steps=5))
    p = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    q = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    losses = model.fit(p, q, torch.tensor([0, 3]))
    assert all(math.isfinite(v) for v in losses)
    assert all(torch.isfinite(c.raw_w).all() for c in model.circuits)
    lo, hi = model.bounds(p, p, q, q)
    assert torch.isfinite(lo).all() and torch.isfinite(hi).all() and (lo <= hi).all()


@pytest.mark.gpu
def test_colep_on_cuda():
    gen = torch.Generator().manual_seed(7)
    model = COLEP(RULES).cuda()
    p = torch.rand(50, 4, generator=gen).cuda()
    q = torch.rand(50, 2, generator=gen).cuda()
    y = torch.randint(0, 4, (50,), generator=gen).cuda()
    model.calibrate(p, q, y)
    sets = model.predict(p, q)
    rob = model.predict_from_bounds((p - 0.05).clamp(0, 1), (p + 0.05).clamp(0, 1), q, q)
    assert sets.is_cuda and rob.is_cuda and (rob >= sets).all()
