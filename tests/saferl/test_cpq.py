"""CPQ (OSRL's cpq.py): defaults, the penalized targets, the VAE-based OOD cost, α, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saferl.data import DatasetMetadata
from saferl.offline import CPQ, CPQConfig, TransitionBuffer, train_cpq
from saferl.offline.cpq import (
    CPQNets,
    alpha_step,
    cost_critic_loss,
    cost_target,
    ood_cost,
    ood_mask,
    reward_target,
)

SMALL = dict(hidden=(16, 16), vae_hidden=(16, 16), num_samples=4, batch_size=32)


class StubCritic(torch.nn.Module):
    """A critic whose members return fixed values ``(E, B)``, whatever the input."""

    def __init__(self, values):
        super().__init__()
        self.values = torch.tensor(values, dtype=torch.float32)

    def forward(self, s, a):
        return self.values


def region_data(n_traj: int = 8, length: int = 25, seed: int = 0) -> dict:
    """Half the trajectories stay at x₀ ≈ +1 and cost 1 per step, half at x₀ ≈ −1 and cost 0."""
    rng = np.random.default_rng(seed)
    n = n_traj * length
    unsafe = np.repeat(np.arange(n_traj) % 2 == 1, length)
    obs = rng.normal(0, 0.1, (n + 1, 3)).astype(np.float32)
    obs[:-1, 0] += np.where(unsafe, 1.0, -1.0)
    obs[-1, 0] += 1.0 if unsafe[-1] else -1.0
    last = (np.arange(n) % length) == length - 1
    nxt = obs[1:].copy()
    nxt[last, 0] = np.where(unsafe[last], 1.0, -1.0)  # the episode's own region
    return {
        "observations": obs[:-1],
        "next_observations": nxt,
        "actions": rng.uniform(-0.5, 0.5, (n, 2)).astype(np.float32),
        "rewards": np.ones(n, np.float32),
        "costs": unsafe.astype(np.float32),
        "terminals": np.zeros(n, np.float32),
        "timeouts": last.astype(np.float32),
    }


META = DatasetMetadata("Hopper-v5", 25, 0.0, 25.0, max_cost=25.0)


def test_defaults_are_osrls():
    """examples/configs/cpq_configs.py and osrl/algorithms/cpq.py."""
    c = CPQConfig()
    assert (c.actor_lr, c.critic_lr, c.alpha_lr, c.vae_lr) == (1e-4, 1e-3, 1e-4, 1e-3)
    assert (c.batch_size, c.steps, c.hidden, c.vae_hidden) == (512, 1e5, (256, 256), (400, 400))
    assert (c.kl_weight, c.num_samples, c.num_q, c.qc_scalar, c.reward_scale) == (
        0.5, 10, 2, 1.5, 0.1,
    )  # fmt: skip
    assert (c.ood_quantile, c.log_alpha_init, c.log_alpha_bound) == (0.75, 0.0, 5.0)
    assert not c.ood_gradient
    agent = CPQ(3, 2, CPQConfig(**SMALL, cost_limit=10.0), horizon=1000, device="cpu")
    assert agent.cost_threshold == pytest.approx(10 * (1 - 0.99**1000) / (0.01 * 1000))
    assert agent.ood_threshold == pytest.approx(1.5 * agent.cost_threshold)
    assert agent.nets.q_r.ensemble == agent.nets.q_c.ensemble == 2


def test_penalized_reward_target_and_cost_target_hand_values():
    cfg = CPQConfig(**SMALL, gamma=0.5)
    nets = CPQNets(3, 2, cfg)
    nets.q_r_target = StubCritic([[4.0, 4.0, 4.0], [6.0, 2.0, 8.0]])  # min: 4, 2, 4
    nets.q_c_target = StubCritic([[0.1, 3.0, 0.5], [0.2, 1.0, 0.4]])  # min: 0.1, 1.0, 0.4
    batch = {
        "next_obs": torch.zeros(3, 3),
        "reward": torch.ones(3),
        "cost": torch.tensor([0.0, 1.0, 0.0]),
        "done": torch.tensor([0.0, 0.0, 1.0]),
    }
    # l = 0.5: sample 0 safe → 1 + 0.5·4; sample 1 unsafe (1.0 > 0.5) → 1; sample 2 done → 1
    torch.testing.assert_close(
        reward_target(batch, nets, cfg, threshold=0.5), torch.tensor([3.0, 1.0, 1.0])
    )
    # cost backup: c + γ·min Q_c', with no done mask (OSRL)
    torch.testing.assert_close(cost_target(batch, nets, cfg), torch.tensor([0.05, 1.5, 0.2]))


def test_ood_mask_marks_the_top_quarter_of_latent_kl():
    torch.manual_seed(0)
    nets = CPQNets(3, 2, CPQConfig(**SMALL))
    obs, actions = torch.randn(10, 3), torch.randn(4, 10, 2) * 3
    mask = ood_mask(obs, actions, nets.vae, 0.75)
    mean, std = nets.vae.encode(obs.repeat(4, 1), actions.reshape(40, 2))
    kl = (-0.5 * (1 + torch.log(std**2) - mean**2 - std**2)).mean(1).reshape(4, 10)
    assert mask.shape == (4, 10) and mask.sum().item() == 10  # 40 distinct values: top 10
    assert kl[mask.bool()].min() > kl[~mask.bool()].max()


def test_ood_term_moves_only_alpha_in_osrl_and_the_critic_in_the_paper():
    batch = TransitionBuffer(region_data(), "cpu").sample(16, torch.Generator().manual_seed(0))
    grads = {}
    for paper in (False, True):
        cfg = CPQConfig(**SMALL, ood_gradient=paper)
        torch.manual_seed(1)
        nets = CPQNets(3, 2, cfg)
        with torch.no_grad():
            nets.log_alpha.fill_(2.0)  # a large α: the OOD term is visible if it has a gradient
        loss, stats = cost_critic_loss(batch, nets, cfg, 0.1, torch.Generator().manual_seed(2))
        grads[paper] = torch.autograd.grad(loss, list(nets.q_c.parameters()))
        target = cost_target(batch, nets, cfg, torch.Generator().manual_seed(2))  # same draws
        td = (nets.q_c(batch["obs"], batch["act"]) - target).square().mean(1).sum()
        assert td.item() == pytest.approx(stats["losses/q_c"].item(), rel=1e-6)
        td_grads = torch.autograd.grad(td, list(nets.q_c.parameters()))
        pairs = zip(grads[paper], td_grads, strict=True)
        same = all(torch.allclose(g, t, atol=1e-6) for g, t in pairs)
        assert same == (not paper)  # OSRL: the OOD term is a constant in the critic's loss
    assert ood_cost(batch, nets, cfg).shape == (16,)


def test_alpha_step_hand_values():
    cfg = CPQConfig(**SMALL, alpha_lr=0.1)
    nets = CPQNets(3, 2, cfg)
    # log α += 0.1·exp(0)·(0.5 − 1) = −0.05: the OOD cost is above its target, α falls
    alpha_step(nets, torch.tensor(1.0), 0.5, cfg)
    assert nets.log_alpha.item() == pytest.approx(-0.05)
    alpha_step(nets, torch.tensor(-1e6), 0.5, cfg)
    assert nets.log_alpha.item() == 5.0  # clipped at log_alpha_bound


def test_cpq_trains_and_its_cost_critic_separates_safe_from_unsafe(tmp_path):
    data = region_data()
    cfg = CPQConfig(**SMALL, steps=150, cost_limit=5.0, log_every=50)
    agent, log = train_cpq(data, META, cfg, "cpu")
    assert [row["step"] for row in log] == [50, 100, 150]
    assert all(np.isfinite(v) for row in log for v in row.values())
    assert agent.cost_threshold == pytest.approx(5 * (1 - 0.99**25) / (0.01 * 25))
    unsafe = data["costs"] > 0
    with torch.no_grad():
        obs = torch.as_tensor(data["observations"])
        q_c = agent.nets.q_c(obs, agent.nets.actor(obs, deterministic=True)).min(0).values
    assert q_c[unsafe].mean() > q_c[~unsafe].mean() + 0.5
    assert q_c[unsafe].min() > q_c[~unsafe].max()  # every unsafe state above every safe one
    act = agent.act(data["observations"][:5])
    assert act.shape == (5, 2) and np.all(np.abs(act) <= 1)
    np.testing.assert_array_equal(act, agent.act(data["observations"][:5]))  # tanh of the mean
    agent.save(tmp_path / "cpq")
    loaded = CPQ.load(tmp_path / "cpq", "cpu")
    np.testing.assert_array_equal(loaded.act(data["observations"]), agent.act(data["observations"]))
    assert loaded.nets.log_alpha.item() == agent.nets.log_alpha.item() != 0.0
