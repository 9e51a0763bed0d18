"""RSCP+: ℓ2-robust conformal prediction by randomized smoothing with Monte-Carlo margins."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from certify.conformal import check_coverage, coverage_over_splits
from certify.smoothing import (
    SmoothedConformalClassifier,
    SmoothingConfig,
    clopper_pearson,
    hoeffding_margin,
    monte_carlo_mean,
    smoothed_prob_bounds,
)

ALPHA = 0.1


@pytest.fixture(scope="module")
def task():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [1.0, 0.2], [0.3, 1.0], [-0.8, 0.6]])

    def data(n):
        y = torch.randint(0, 4, (n,), generator=gen)
        return centres[y] + 0.4 * torch.randn(n, 2, generator=gen), y

    x_tr, y_tr = data(800)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(120):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x_tr), y_tr).backward()
        opt.step()
    x, y = data(1500)
    return model, x, y


def pgd_l2(model, x, y, eps, steps=10):
    """ℓ2 PGD (with noise, expectation over transformation) lowering p_y of the base model."""
    delta = torch.zeros_like(x, requires_grad=True)
    for _ in range(steps):
        z = (x + delta).unsqueeze(0) + 0.25 * torch.randn(8, *x.shape)
        logp = torch.log_softmax(model(z), -1).gather(2, y.expand(8, -1)[..., None]).sum()
        (g,) = torch.autograd.grad(-logp, delta)
        with torch.no_grad():
            delta += 2.5 * eps / steps * g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
            norm = delta.norm(dim=1, keepdim=True)
            delta *= (eps / norm.clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta).detach()


def test_hoeffding_and_clopper_pearson():
    assert math.isclose(hoeffding_margin(200, 0.01), math.sqrt(math.log(100) / 400))
    lo, hi = clopper_pearson(torch.tensor([0.0, 50.0, 100.0]), 100, 0.05)
    assert lo[0] == 0.0 and hi[2] == 1.0 and lo[1] < 0.5 < hi[1]
    assert math.isclose(hi[0].item(), 1 - 0.025 ** (1 / 100), rel_tol=1e-6)  # exact k = 0 case


def test_smoothed_prob_bounds_contain_the_estimate_at_clean_points():
    # a 1-D linear model: p(x) = σ(3x); smoothing then attack by ε in ℓ2
    cfg = SmoothingConfig(sigma=0.5, n_samples=500, beta=1e-3)
    gen = torch.Generator().manual_seed(1)
    x = torch.linspace(-2, 2, 200)[:, None]
    x_adv = x + 0.2 * torch.sign(torch.randn(200, 1, generator=gen))

    def fn(z):
        return torch.sigmoid(3 * z)

    lo, hi = smoothed_prob_bounds(monte_carlo_mean(fn, x_adv, cfg, gen), 0.2, cfg)
    p_clean = monte_carlo_mean(fn, x, cfg, gen)
    assert ((lo <= p_clean) & (p_clean <= hi)).float().mean() == 1.0


@pytest.mark.parametrize("score", ["lac", "aps"])
def test_rscp_plus_keeps_coverage_under_l2_pgd(task, score):
    model, x, y = task
    eps = 0.15
    cfg = SmoothingConfig(sigma=0.25, n_samples=128, beta=0.005)
    gen = torch.Generator().manual_seed(2)
    scp = SmoothedConformalClassifier(
        lambda z: torch.softmax(model(z), -1), eps, score, ALPHA, cfg, gen
    )
    torch.manual_seed(3)
    x_adv = pgd_l2(model, x, y, eps)
    assert (x_adv - x).norm(dim=1).max() <= eps + 1e-5
    s_clean = scp.smoothed_scores(x).gather(1, y[:, None]).squeeze(1)
    s_adv = scp.smoothed_scores(x_adv).gather(1, y[:, None]).squeeze(1)
    alpha_cal = ALPHA - 2 * cfg.beta
    cov = coverage_over_splits(s_clean, 200, alpha_cal, 200, scp.effective_scores(s_adv), gen)
    assert check_coverage(cov, ALPHA, 200, upper=False).ok
    # plugging the attacked MC score straight in (no Lipschitz margin) loses coverage
    cov_naive = coverage_over_splits(s_clean, 200, ALPHA, 200, s_adv, gen)
    assert not check_coverage(cov_naive, ALPHA, 200).ok


def test_smoothed_classifier_object_api(task):
    model, x, y = task
    cfg = SmoothingConfig(sigma=0.25, n_samples=64, beta=0.005)
    scp = SmoothedConformalClassifier(
        lambda z: torch.softmax(model(z), -1), 0.1, "lac", ALPHA, cfg, torch.Generator()
    )
    scp.calibrate(x[:300], y[:300])
    sets = scp.predict(x[300:])
    assert sets.shape == (1200, 4)
    assert sets.gather(1, y[300:, None]).float().mean() >= 0.9
    with pytest.raises(ValueError, match="exceed"):
        SmoothedConformalClassifier(lambda z: z, 0.1, alpha=0.01, cfg=SmoothingConfig(beta=0.01))
    with pytest.raises(ValueError, match="sigma"):
        SmoothedConformalClassifier(lambda z: z, 0.1, cfg=SmoothingConfig(sigma=0.0))
    with pytest.raises(ValueError, match="'lac' or 'aps'"):
        SmoothedConformalClassifier(lambda z: z, 0.1, score="raps")
    with pytest.raises(ValueError, match="empty"):
        scp.calibrate(x[:0], y[:0])


@pytest.mark.gpu
def test_smoothed_classifier_on_cuda(task):
    model, x, y = task
    model = copy.deepcopy(model).cuda()
    cfg = SmoothingConfig(sigma=0.25, n_samples=32, beta=0.005)
    scp = SmoothedConformalClassifier(lambda z: torch.softmax(model(z), -1), 0.1, "aps", 0.1, cfg)
    scp.calibrate(x[:300].cuda(), y[:300].cuda())
    sets = scp.predict(x[300:].cuda())
    assert sets.is_cuda and sets.shape == (1200, 4)
