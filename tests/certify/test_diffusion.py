"""Diffusion-policy certificates: the unrolled chain equals a step-by-step DDPM sampler
(diffusers'), its bounds contain every sampled observation's candidates and chosen action (same
fixed noise), the selection only drops candidates that are never chosen, bad input is refused."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from certify.diffusion import (
    DiffusionChain,
    candidate_bounds,
    candidate_scores,
    certify_diffusion_policy,
    ddpm_steps,
    select_action,
    surviving_candidates,
)

S, A, N = 4, 2, 6
METHODS = ("ibp", "crown-ibp", "crown")


class TinyNoiseNet(nn.Module):
    """A small ε_θ(a, s, t): ReLU/Tanh MLP on [a, s] plus a per-timestep constant."""

    def __init__(self, timesteps: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(A + S, 16)
        self.hid = nn.Linear(16, 16)
        self.out = nn.Linear(16, A)
        self.time = nn.Parameter(torch.randn(timesteps, 16) * 0.1)

    def forward(self, a, s, t: int):
        h = F.relu(self.inp(torch.cat([a, s], -1)) + self.time[t])
        return self.out(torch.tanh(self.hid(h)))


def vp_alphas_cumprod(T: int = 4) -> torch.Tensor:
    t = torch.arange(1, T + 1, dtype=torch.float64)
    betas = 1 - torch.exp(-0.1 / T - 0.5 * 9.9 * (2 * t - 1) / T**2)
    return torch.cumprod(1 - betas, 0).float()


def make(seed: int = 0, T: int = 4):
    torch.manual_seed(seed)
    net = TinyNoiseNet(T).eval()
    chain = DiffusionChain(net, vp_alphas_cumprod(T), list(range(T - 1, -1, -1)), S, A, N)
    critic = nn.Sequential(nn.Linear(S + A, 16), nn.ReLU(), nn.Linear(16, 2))  # 2 members
    return chain, critic


def test_ddpm_steps_hand_values():
    abar = torch.tensor([0.9, 0.5])
    st = ddpm_steps(abar, [1, 0])
    # t = 1: alpha = 0.5/0.9, beta = 1 - alpha; Ho et al. Eq. 7 coefficients
    alpha, beta = 0.5 / 0.9, 1 - 0.5 / 0.9
    assert st.x0_scale[0] == pytest.approx(1 / math.sqrt(0.5))
    assert st.x0_eps[0] == pytest.approx(math.sqrt(0.5) / math.sqrt(0.5))
    assert st.mean_x0[0] == pytest.approx(math.sqrt(0.9) * beta / 0.5)
    assert st.mean_xt[0] == pytest.approx(math.sqrt(alpha) * 0.1 / 0.5)
    assert st.sigma[0] == pytest.approx(math.sqrt(beta * 0.1 / 0.5))
    # last step: abar_prev = 1, so the mean is x0 itself and no noise is added
    assert st.mean_x0[1] == pytest.approx(1.0) and st.mean_xt[1] == pytest.approx(0.0)
    assert st.sigma[1] == 0.0


def test_chain_equals_diffusers_sampler_with_the_same_noise():
    from diffusers import DDPMScheduler

    chain, _ = make()
    T = chain.num_draws
    betas = 1 - vp_alphas_cumprod(T) / torch.cat([torch.ones(1), vp_alphas_cumprod(T)[:-1]])
    sched = DDPMScheduler(num_train_timesteps=T, trained_betas=betas.tolist(), clip_sample=True,
                          clip_sample_range=1.0, variance_type="fixed_small")  # fmt: skip
    sched.set_timesteps(T)
    obs = torch.randn(3, S)
    gen = torch.Generator().manual_seed(5)
    draws = [torch.randn(3 * N, A, generator=gen) for _ in range(T)]
    noise = torch.stack([d.reshape(3, N, A) for d in draws], 1)
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(3 * N, A, generator=gen)
    s = obs.repeat_interleave(N, 0)
    with torch.no_grad():
        for t in sched.timesteps:
            eps = chain.noise_net(a, s, int(t))
            a = sched.step(eps, int(t), a, generator=gen).prev_sample.clamp(-1, 1)
        ours = chain.candidates(obs, noise)
    torch.testing.assert_close(ours, a.reshape(3, N, A), atol=1e-5, rtol=1e-5)


def samples_in_ball(obs: torch.Tensor, eps: float, k: int, seed: int = 0) -> torch.Tensor:
    """(k, B, S): corners and uniform points of the ball around every observation."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (k // 2, *obs.shape), generator=g) * 2 - 1
    uniform = torch.rand((k - k // 2, *obs.shape), generator=g) * 2 - 1
    return obs + eps * torch.cat([signs.float(), uniform])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("steps", [False, True])
def test_bounds_contain_sampled_observations_with_the_same_noise(method, steps):
    chain, critic = make(1)
    obs, eps = torch.randn(5, S), 0.05
    noise = torch.randn(5, *chain.noise_shape)
    cert = certify_diffusion_policy(chain, critic, obs, eps, noise, method, steps=steps)
    tol = 1e-5
    with torch.no_grad():
        for s in samples_in_ball(obs, eps, 64):
            action, cand, scores, best = select_action(chain, critic, s, noise)
            assert (cand >= cert.candidate_lower - tol).all()
            assert (cand <= cert.candidate_upper + tol).all()
            assert (scores >= cert.candidate_score_lower - tol).all()
            assert (scores <= cert.candidate_score_upper + tol).all()
            assert cert.surviving.gather(1, best[:, None]).all()  # never drop the chosen one
            assert (action >= cert.action_lower - tol).all()
            assert (action <= cert.action_upper + tol).all()
            assert (scores.amin(1) <= cert.score_upper + tol).all()
            dev = (action - cert.action).abs().amax(1)
            assert (dev <= cert.deviation + tol).all()


def test_pgd_cannot_escape_the_candidate_bounds():
    chain, critic = make(2)
    obs, eps = torch.randn(4, S), 0.05
    noise = torch.randn(*chain.noise_shape)  # one draw shared by every state
    lo, hi = candidate_bounds(chain, obs, eps, noise, "crown")
    for sign in (1.0, -1.0):
        delta = torch.zeros_like(obs, requires_grad=True)
        for _ in range(20):
            out = chain.candidates(obs + delta, noise)
            (sign * out.sum()).backward()
            with torch.no_grad():
                delta += 0.01 * delta.grad.sign()
                delta.clamp_(-eps, eps)
                delta.grad = None
        with torch.no_grad():
            out = chain.candidates(obs + delta, noise)
        assert (out >= lo - 1e-5).all() and (out <= hi + 1e-5).all()


def test_zero_radius_collapses_to_the_nominal_action():
    chain, critic = make(3)
    obs = torch.randn(6, S)
    noise = torch.randn(6, *chain.noise_shape)
    cert = certify_diffusion_policy(chain, critic, obs, 0.0, noise, "crown")
    assert cert.deviation.max() < 1e-4
    with torch.no_grad():
        action, _, scores, best = select_action(chain, critic, obs, noise)
    torch.testing.assert_close(cert.action, action)
    gap = scores.sort(1).values[:, 1] - scores.amin(1)
    clear = gap > 1e-3  # no near tie: only the chosen candidate can survive
    assert clear.any()
    assert (cert.surviving[clear].sum(1) == 1).all()


def test_crown_is_no_looser_than_ibp_on_the_chain():
    chain, _ = make(4)
    obs, noise = torch.randn(4, S), torch.randn(4, *chain.noise_shape)
    lo_i, hi_i = candidate_bounds(chain, obs, 0.02, noise, "ibp")
    lo_c, hi_c = candidate_bounds(chain, obs, 0.02, noise, "crown")
    assert ((hi_c - lo_c) <= (hi_i - lo_i) + 1e-6).all()
    assert (hi_c - lo_c).mean() < (hi_i - lo_i).mean()


def test_surviving_candidates_hand_cases():
    lo = torch.tensor([[0.0, 0.5, 2.0, 1.0]])
    hi = torch.tensor([[1.0, 0.9, 3.0, 1.5]])
    # min upper bound 0.9 (candidate 1); candidate 2's lower bound 2.0 > 0.9: dropped;
    # candidate 3's 1.0 > 0.9 dropped; candidate 0 (0 < 0.9) and 1 (0.5 < 1.0) stay
    assert surviving_candidates(lo, hi, tol=0.0).tolist() == [[True, True, False, False]]
    # equal bounds everywhere: nobody can be excluded
    same = torch.ones(1, 3)
    assert surviving_candidates(same, same, tol=0.0).all()
    # a candidate is never compared with itself: a lone narrow one survives
    assert surviving_candidates(torch.tensor([[5.0]]), torch.tensor([[5.0]])).all()


def test_feasibility_uses_the_argmin_bound():
    chain, critic = make(5)
    obs, noise = torch.randn(3, S), torch.randn(3, *chain.noise_shape)
    cert = certify_diffusion_policy(chain, critic, obs, 0.01, noise, "crown", threshold=0.0)
    torch.testing.assert_close(cert.score_upper, cert.candidate_score_upper.amin(1))
    assert (cert.score_upper <= cert.set_score_upper).all()
    assert torch.equal(cert.certified, cert.score_upper <= 0)
    with torch.no_grad():
        cand = chain.candidates(obs, noise)
    torch.testing.assert_close(candidate_scores(critic, obs, cand).amin(1), cert.score)


def test_bad_inputs_are_refused_before_any_work():
    chain, critic = make()
    obs = torch.randn(2, S)
    noise = torch.randn(*chain.noise_shape)
    with pytest.raises(ValueError, match="noise must have shape"):
        certify_diffusion_policy(chain, critic, obs, 0.1, torch.randn(3, N, A))
    with pytest.raises(ValueError, match="eps"):
        certify_diffusion_policy(chain, critic, obs, -0.1, noise)
    with pytest.raises(ValueError, match="method"):
        certify_diffusion_policy(chain, critic, obs, 0.1, noise, method="pgd")
    with pytest.raises(ValueError, match="obs must have shape"):
        certify_diffusion_policy(chain, critic, torch.randn(2, S + 1), 0.1, noise)
    with pytest.raises(ValueError, match="NaN"):
        certify_diffusion_policy(chain, critic, obs, 0.1, noise * float("nan"))
    with pytest.raises(ValueError, match="decreasing"):
        ddpm_steps(vp_alphas_cumprod(4), [0, 1, 2])
    with pytest.raises(ValueError, match="clip"):
        DiffusionChain(chain.noise_net, vp_alphas_cumprod(4), [3, 2, 1, 0], S, A, N, x0_clip=-1)
