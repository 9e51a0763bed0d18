"""FISOR's diffusion policy certified: the unrolled chain is FISOR's own sampler (same noise,
same candidates, same chosen action), bounds contain sampled observations' actions, and the
feasibility bound holds for the chosen action's Q_h."""

from __future__ import annotations

import pytest
import torch

from certify.diffusion import certify_diffusion_policy, select_action
from saferl.offline import FISOR, FISORConfig
from saferl.offline.fisor_certify import (
    certify_fisor,
    diffusion_chain,
    sampler_noise,
    selection_critic,
)

SMALL = dict(actor_width=16, actor_blocks=1, critic_hidden=(16, 16), time_dim=8,
             actor_batch_size=16, critic_batch_size=8, steps=10, num_candidates=5)  # fmt: skip


@pytest.fixture(scope="module")
def agent() -> FISOR:
    torch.manual_seed(0)
    agent = FISOR(3, 2, FISORConfig(**SMALL), device="cpu")
    g = torch.Generator().manual_seed(1)
    batch = {
        "obs": torch.randn(16, 3, generator=g),
        "act": torch.rand(16, 2, generator=g) * 2 - 1,
        "next_obs": torch.randn(16, 3, generator=g),
        "reward": torch.randn(16, generator=g),
        "cost": (torch.rand(16, generator=g) < 0.3).float(),
        "done": torch.zeros(16),
    }
    for _ in range(3):  # move the weights off their initialisation
        agent.update({k: v[:8] for k, v in batch.items()}, batch)
    return agent


def test_chain_is_fisors_own_sampler_for_the_same_noise(agent):
    obs = torch.randn(4, 3)
    agent.generator.manual_seed(11)
    cand_ref = agent.sample_candidates(obs, agent.config.num_candidates)
    agent.generator.manual_seed(11)
    act_ref = agent.act_tensor(obs)
    chain = diffusion_chain(agent)
    noise = sampler_noise(chain, 4, torch.Generator().manual_seed(11))
    with torch.no_grad():
        action, cand, _, _ = select_action(chain, selection_critic(agent), obs, noise)
    torch.testing.assert_close(cand, cand_ref, atol=2e-6, rtol=0)
    torch.testing.assert_close(action, act_ref, atol=2e-6, rtol=0)


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_fisor_bounds_contain_sampled_observations(agent, method):
    obs, eps = torch.randn(3, 3), 0.02
    chain, critic = diffusion_chain(agent), selection_critic(agent)
    noise = sampler_noise(chain, 3, torch.Generator().manual_seed(2))
    cert = certify_diffusion_policy(chain, critic, obs, eps, noise, method)
    g = torch.Generator().manual_seed(3)
    inside = 0
    for _ in range(40):
        s = obs + eps * (torch.rand(obs.shape, generator=g) * 2 - 1)
        with torch.no_grad():
            action, _, scores, best = select_action(chain, critic, s, noise)
            q_h = agent.nets.q_h_target(s, action).amax(0)  # FISOR's own score of its action
        assert (action >= cert.action_lower - 1e-5).all()
        assert (action <= cert.action_upper + 1e-5).all()
        assert (q_h <= cert.score_upper + 1e-5).all()
        assert cert.surviving.gather(1, best[:, None]).all()
        inside += 1
    assert inside == 40
    # certify_fisor draws the same noise from the same seed
    again = certify_fisor(agent, obs, eps, method, noise=noise)
    torch.testing.assert_close(again.action_upper, cert.action_upper)
