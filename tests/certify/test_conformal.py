"""Split and ℓ∞-robust conformal prediction: coverage over many random splits, bounds, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from certify.conformal import (
    SCORES,
    ConformalConfig,
    RobustConformalClassifier,
    SplitConformalClassifier,
    SplitConformalRegressor,
    check_coverage,
    conformal_quantile,
    conformal_rank,
    coverage_over_splits,
    evaluate_sets,
    margin_softmax_bounds,
    score_bounds,
    softmax_bounds,
)

ALPHA = 0.1
N_SPLITS = 200


def bound_fn():
    """The bound engine (CROWN) as a (model, x, eps) -> (lo, hi) callable."""
    from certify import compute_bounds

    return lambda m, x, eps: compute_bounds(m, x, eps, method="crown")


# --------------------------------------------------------------------------------------------
# fixtures: a synthetic 5-class task with a small trained MLP
# --------------------------------------------------------------------------------------------


def _blobs(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.tensor([[0.0, 0.0], [1.0, 0.2], [0.3, 1.0], [-0.8, 0.6], [0.6, -0.9]])
    y = torch.randint(0, 5, (n,), generator=gen)
    x = centres[y] + 0.45 * torch.randn(n, 2, generator=gen)
    return x, y


@pytest.fixture(scope="module")
def task():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x_tr, y_tr = _blobs(1000, gen)
    model = nn.Sequential(
        nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x_tr), y_tr).backward()
        opt.step()
    x, y = _blobs(2000, gen)
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)
    return model, x, y, probs


def _true_scores(score: str, probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    cp = SplitConformalClassifier(score, ALPHA, generator=torch.Generator().manual_seed(1))
    return cp.scores(probs).gather(1, y[:, None]).squeeze(1)


# --------------------------------------------------------------------------------------------
# the quantile
# --------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=60),
    st.floats(0.01, 0.99),
)
def test_quantile_is_the_conformal_order_statistic(values, alpha):
    s = torch.tensor(values, dtype=torch.float64)
    n, k = len(values), conformal_rank(len(values), alpha)
    assert k == math.ceil((n + 1) * (1 - alpha) - 1e-9)
    q = conformal_quantile(s, alpha)
    if k > n:
        assert math.isinf(q.item())
    else:
        assert q.item() == sorted(values)[k - 1]
        assert (s <= q).sum().item() >= k


def test_quantile_is_batched():
    s = torch.rand(7, 30, generator=torch.Generator().manual_seed(0))
    q = conformal_quantile(s, 0.2)
    assert q.shape == (7,)
    for i in range(7):
        assert q[i] == conformal_quantile(s[i], 0.2)


# --------------------------------------------------------------------------------------------
# coverage over 200 random splits (tests that can fail)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("n_cal", [10, 100])
def test_split_cp_coverage_over_splits(task, score, n_cal):
    _, _, y, probs = task
    s = _true_scores(score, probs, y)
    cov = coverage_over_splits(
        s, n_cal, ALPHA, N_SPLITS, generator=torch.Generator().manual_seed(2)
    )
    check = check_coverage(cov, ALPHA, n_cal)
    assert check.ok, check
    assert check.std_err < 0.01  # the test is sharp enough to mean something


def _broken_quantile(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """Deliberately wrong: the ⌈n(1−α)⌉-th score, without the (n+1) finite-sample correction."""
    n = scores.shape[-1]
    return torch.kthvalue(scores, math.ceil(n * (1 - alpha)), dim=-1).values


def _conservative_quantile(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """Deliberately wrong the other way: two ranks too high (over-covers)."""
    n = scores.shape[-1]
    return torch.kthvalue(scores, min(conformal_rank(n, alpha) + 2, n), dim=-1).values


def test_checker_flags_quantile_without_n_plus_one_correction(task):
    _, _, y, probs = task
    s = _true_scores("lac", probs, y)
    gen = torch.Generator().manual_seed(3)
    cov = coverage_over_splits(s, 10, ALPHA, N_SPLITS, generator=gen, quantile_fn=_broken_quantile)
    check = check_coverage(cov, ALPHA, 10)
    assert not check.ok and check.mean < check.lower, check


def test_checker_flags_over_conservative_calibration(task):
    _, _, y, probs = task
    s = _true_scores("aps", probs, y)
    gen = torch.Generator().manual_seed(4)
    cov = coverage_over_splits(
        s, 100, ALPHA, N_SPLITS, generator=gen, quantile_fn=_conservative_quantile
    )
    check = check_coverage(cov, ALPHA, 100)
    assert not check.ok and check.mean > check.upper, check


@pytest.mark.parametrize("score", ["absolute", "cqr"])
def test_regression_coverage_over_splits(score):
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(3000, generator=gen) * 4
    y = torch.sin(x) + (0.1 + 0.2 * x) * torch.randn(3000, generator=gen)
    pred = (
        torch.sin(x)
        if score == "absolute"
        else torch.stack([torch.sin(x) - 0.2 * x, torch.sin(x) + 0.2 * x], 1)
    )
    reg = SplitConformalRegressor(ALPHA, score)
    s = reg.scores(pred, y)
    cov = coverage_over_splits(s, 50, ALPHA, N_SPLITS, generator=gen)
    assert check_coverage(cov, ALPHA, 50).ok
    # the object API agrees with the score formulation
    reg.calibrate(pred[:50], y[:50])
    lo, hi = reg.predict(pred[50:])
    inside = (lo <= y[50:]) & (y[50:] <= hi)
    assert torch.equal(inside, s[50:] <= reg.q_hat)


def test_regressor_multi_output_is_per_dimension():
    gen = torch.Generator().manual_seed(6)
    pred = torch.randn(200, 3, generator=gen)
    y = pred + torch.randn(200, 3, generator=gen) * torch.tensor([0.1, 1.0, 5.0])
    reg = SplitConformalRegressor(0.2).calibrate(pred, y)
    assert reg.q_hat.shape == (3,) and reg.q_hat[0] < reg.q_hat[1] < reg.q_hat[2]
    lo, hi = reg.predict(pred)
    assert lo.shape == hi.shape == (200, 3)


# --------------------------------------------------------------------------------------------
# the object API
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("score", SCORES)
def test_predict_matches_scores_and_covers(task, score):
    _, _, y, probs = task
    cp = SplitConformalClassifier(score, ALPHA, generator=torch.Generator().manual_seed(7))
    cp.calibrate(probs[:1000], y[:1000])
    sets = cp.predict(probs[1000:])
    assert sets.shape == (1000, 5) and sets.dtype == torch.bool
    ev = evaluate_sets(sets, y[1000:])
    assert 0.85 <= ev["coverage"] <= 0.96 and 1.0 <= ev["size"] < 5.0


def test_aps_scores_match_definition():
    gen = torch.Generator().manual_seed(8)
    p = torch.softmax(torch.randn(50, 6, generator=gen), 1)
    u = torch.rand(50, 1, generator=gen)
    cp = SplitConformalClassifier("raps", 0.1, penalty=0.05, kreg=2)
    s = cp.scores(p, u)
    for i in range(5):
        for y in range(6):
            above = p[i] > p[i, y]
            expected = p[i][above].sum() + u[i, 0] * p[i, y] + 0.05 * max(0, above.sum() + 1 - 2)
            assert torch.isclose(s[i, y], expected, atol=1e-6)


# --------------------------------------------------------------------------------------------
# bounds: soundness
# --------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(SCORES), st.floats(0.0, 2.0))
def test_softmax_and_score_bounds_are_sound(seed, score, width):
    gen = torch.Generator().manual_seed(seed)
    mid = 2 * torch.randn(4, 5, generator=gen, dtype=torch.float64)
    rad = width * torch.rand(4, 5, generator=gen, dtype=torch.float64)
    p_lo, p_hi = softmax_bounds(mid - rad, mid + rad)
    cfg = ConformalConfig(score=score, penalty=0.02, kreg=1)
    u = torch.rand(4, 1, generator=gen, dtype=torch.float64)
    s_lo, s_hi = score_bounds(p_lo, p_hi, cfg, u)
    cp = SplitConformalClassifier(score, penalty=0.02, kreg=1)
    for _ in range(30):
        z = mid + rad * (2 * torch.rand(4, 5, generator=gen, dtype=torch.float64) - 1)
        p = torch.softmax(z, 1)
        assert (p >= p_lo - 1e-12).all() and (p <= p_hi + 1e-12).all()
        s = cp.scores(p, u)
        assert (s >= s_lo - 1e-9).all() and (s <= s_hi + 1e-9).all()


def test_margin_bounds_tighter_and_sound():
    gen = torch.Generator().manual_seed(9)
    z_mid = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    r = 0.3
    # exact margin ranges of a box: [z_j − z_y − 2r, z_j − z_y + 2r]
    d = z_mid[:, None, :] - z_mid[:, :, None]
    m_lo, m_hi = margin_softmax_bounds(d + 2 * r, d - 2 * r)
    s_lo, s_hi = softmax_bounds(z_mid - r, z_mid + r)
    assert torch.allclose(m_lo, s_lo) and torch.allclose(m_hi, s_hi)
    # with correlated logits (all shifted together) the margin form stays tight
    m_lo2, m_hi2 = margin_softmax_bounds(d, d)
    assert torch.allclose(m_lo2, torch.softmax(z_mid, 1)) and torch.allclose(m_hi2, m_lo2)


# --------------------------------------------------------------------------------------------
# robust CP under PGD
# --------------------------------------------------------------------------------------------


def pgd_linf(model, x, y, eps, steps=20, score="lac"):
    """ℓ∞ PGD maximising the LAC score of the true label (minimising p_y)."""
    delta = torch.zeros_like(x).uniform_(-eps, eps).requires_grad_(True)
    for _ in range(steps):
        logp = torch.log_softmax(model(x + delta), 1).gather(1, y[:, None]).sum()
        (grad,) = torch.autograd.grad(-logp, delta)
        with torch.no_grad():
            delta += 2.5 * eps / steps * grad.sign()
            delta.clamp_(-eps, eps)
    return (x + delta).detach()


@pytest.mark.parametrize("score", ["lac", "aps"])
def test_robust_cp_keeps_coverage_under_pgd(task, score):
    model, x, y, _ = task
    eps = 0.08
    torch.manual_seed(10)
    x_adv = pgd_linf(model, x, y, eps)
    assert (x_adv - x).abs().max() <= eps + 1e-6
    rcp = RobustConformalClassifier(model, eps, score, ALPHA, bound_fn=bound_fn())
    gen = torch.Generator().manual_seed(11)
    rcp.cp.generator = gen
    u = rcp.cp.draw_u(len(y), x)
    clean = rcp.cp.scores(rcp.probs(x), u).gather(1, y[:, None]).squeeze(1)
    attacked = rcp.cp.scores(rcp.probs(x_adv), u).gather(1, y[:, None]).squeeze(1)
    lo, hi = rcp.bounds(x_adv)
    worst, _ = score_bounds(lo, hi, rcp.cp.cfg, u)
    worst = worst.gather(1, y[:, None]).squeeze(1)
    assert (worst <= attacked + 1e-6).all()  # the bound really is below the attacked score
    cov_rob = coverage_over_splits(clean, 100, ALPHA, N_SPLITS, worst, gen)
    assert check_coverage(cov_rob, ALPHA, 100, upper=False).ok
    # the plain CP under the same attack loses coverage: the test can fail
    cov_plain = coverage_over_splits(clean, 100, ALPHA, N_SPLITS, attacked, gen)
    assert not check_coverage(cov_plain, ALPHA, 100).ok


def test_robust_classifier_object_api(task):
    model, x, y, _ = task
    rcp = RobustConformalClassifier(model, 0.05, "lac", ALPHA, bound_fn=bound_fn())
    rcp.calibrate(x[:500], y[:500])
    x_adv = pgd_linf(model, x[500:], y[500:], 0.05)
    rob, plain = rcp.predict(x_adv), rcp.predict_clean(x_adv)
    assert (rob >= plain).all()  # robust sets contain the plain ones
    assert evaluate_sets(rob, y[500:])["coverage"] >= 0.88
    assert evaluate_sets(rcp.predict(x[500:]), y[500:])["size"] < 5.0


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_alpha_outside_unit_interval_raises(alpha):
    with pytest.raises(ValueError, match="alpha"):
        SplitConformalClassifier("lac", alpha)
    with pytest.raises(ValueError, match="alpha"):
        SplitConformalRegressor(alpha)
    with pytest.raises(ValueError, match="alpha"):
        conformal_quantile(torch.rand(10), alpha)


def test_bad_inputs_raise_clear_errors():
    cp = SplitConformalClassifier("aps", 0.1)
    p = torch.softmax(torch.randn(20, 3), 1)
    with pytest.raises(ValueError, match="empty"):
        cp.calibrate(p[:0], torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        cp.calibrate(p, torch.full((20,), 3))
    with pytest.raises(ValueError, match=r"labels must lie"):
        cp.calibrate(p, torch.full((20,), -1))
    with pytest.raises(TypeError, match="integer"):
        cp.calibrate(p, torch.zeros(20))
    with pytest.raises(ValueError, match="shape"):
        cp.calibrate(p, torch.zeros(19, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        cp.calibrate(torch.full((20, 3), float("nan")), torch.zeros(20, dtype=torch.long))
    with pytest.raises(ValueError, match="logits"):
        cp.calibrate(torch.randn(20, 3) * 5, torch.zeros(20, dtype=torch.long))
    with pytest.raises(RuntimeError, match="calibrate"):
        cp.predict(p)
    with pytest.raises(ValueError, match="unknown score"):
        SplitConformalClassifier("thr-ish")
    with pytest.raises(ValueError, match="empty"):
        SplitConformalRegressor().calibrate(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        SplitConformalRegressor(score="cqr").calibrate(torch.zeros(5), torch.zeros(5))
    with pytest.raises(ValueError, match="eps"):
        RobustConformalClassifier(nn.Sequential(nn.Linear(2, 2)), -0.1)


def test_wrong_number_of_classes_at_predict():
    cp = SplitConformalClassifier("lac", 0.1)
    cp.calibrate(torch.softmax(torch.randn(20, 3), 1), torch.zeros(20, dtype=torch.long))
    with pytest.raises(ValueError, match="3 classes"):
        cp.predict(torch.softmax(torch.randn(5, 4), 1))


# --------------------------------------------------------------------------------------------
# device
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_split_cp_on_cuda(task):
    _, _, y, probs = task
    for score in SCORES:
        cp = SplitConformalClassifier(score, ALPHA).calibrate(probs[:1000].cuda(), y[:1000].cuda())
        sets = cp.predict(probs[1000:].cuda())
        assert sets.is_cuda
        assert evaluate_sets(sets, y[1000:].cuda())["coverage"] > 0.85
