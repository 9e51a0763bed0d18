"""Policy certificates: SB3 actors, certified deviation, fraction certified, feasibility."""

from __future__ import annotations

import pytest
import torch
from certify_nets import one_thread
from torch import nn

from certify import (
    ConcatCritic,
    action_bounds,
    as_actor_module,
    certified_deviation,
    feasibility_certificate,
    fraction_certified,
)

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


def _sb3(algo_name: str):
    gym = pytest.importorskip("gymnasium")
    sb3 = pytest.importorskip("stable_baselines3")
    env = gym.make("Pendulum-v1")
    algo = getattr(sb3, algo_name)
    return algo("MlpPolicy", env, policy_kwargs={"net_arch": [16, 16]}, device="cpu", seed=0)


@pytest.mark.parametrize("algo", ["TD3", "SAC"])
def test_sb3_actor_bounds_are_sound(algo: str) -> None:
    model = _sb3(algo)
    torch.manual_seed(0)
    obs = torch.randn(8, 3)
    actor = model.policy.actor
    low, high = model.action_space.low, model.action_space.high
    det = torch.as_tensor(model.policy.predict(obs.numpy(), deterministic=True)[0])
    net = as_actor_module(actor)
    scaled = low[0] + (net(obs) + 1) * (high[0] - low[0]) / 2
    torch.testing.assert_close(scaled.detach(), det, atol=1e-5, rtol=0)
    lo, hi = action_bounds(actor, obs, 0.1, action_low=low, action_high=high)
    pts = obs.unsqueeze(1) + 0.1 * (2 * torch.rand(8, 500, 3) - 1)
    a = torch.as_tensor(model.policy.predict(pts.reshape(-1, 3).numpy(), deterministic=True)[0])
    a = a.reshape(8, 500, -1)
    assert (a >= lo.unsqueeze(1) - 1e-5).all() and (a <= hi.unsqueeze(1) + 1e-5).all()


def test_deviation_and_fraction_monotone() -> None:
    torch.manual_seed(0)
    actor = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2), nn.Tanh())
    obs = torch.randn(64, 4)
    dev = certified_deviation(actor, obs, 0.05)
    pts = obs.unsqueeze(1) + 0.05 * (2 * torch.rand(64, 300, 4) - 1)
    with torch.no_grad():
        emp = (actor(pts) - actor(obs).unsqueeze(1)).abs().amax(-1).amax(-1)
    assert (emp <= dev + 1e-6).all()
    fr = [fraction_certified(actor, obs, 0.05, d) for d in (0.0, 0.01, 0.05, 1.0, 2.0)]
    assert fr == sorted(fr) and fr[-1] == 1.0
    with pytest.raises(ValueError):
        fraction_certified(actor, obs, 0.05, -1.0)


def test_feasibility_certificate_bounds_critic() -> None:
    torch.manual_seed(0)
    actor = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1), nn.Tanh())
    critic = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    with torch.no_grad():
        critic[2].bias.fill_(-0.5)
    obs = torch.randn(32, 3)
    cert = feasibility_certificate(critic, actor, obs, 0.05)
    pts = obs.unsqueeze(1) + 0.05 * (2 * torch.rand(32, 400, 3) - 1)
    with torch.no_grad():
        q = critic(torch.cat([pts, actor(pts)], -1))[..., 0]
    assert (q <= cert.q_upper.unsqueeze(1) + 1e-5).all()
    assert (q >= cert.q_lower.unsqueeze(1) - 1e-5).all()
    assert torch.equal(cert.certified, cert.q_upper <= 0) and 0 <= cert.fraction <= 1


def test_sb3_critic_wrapper() -> None:
    model = _sb3("TD3")
    obs = torch.randn(4, 3)
    critic = ConcatCritic(model.policy.critic, obs_dim=3)
    cert = feasibility_certificate(critic, model.policy.actor, obs, 0.01)
    q = model.policy.critic(obs, model.policy.actor(obs))[0][:, 0]
    assert (q <= cert.q_upper + 1e-5).all() and (q >= cert.q_lower - 1e-5).all()
