"""FISOR: each loss against hand-computed values on tiny batches, the schedule, sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saferl.offline import (
    FISOR,
    FISORConfig,
    FISORNets,
    actor_loss,
    config_from_dict,
    constraint_signal,
    expectile_loss,
    feasibility_target,
    make_scheduler,
    policy_weights,
    q_h_loss,
    q_r_loss,
    reversed_expectile_loss,
    v_h_loss,
    v_r_loss,
    vp_betas,
)
from saferl.offline.fisor import cosine_decay

SMALL = dict(actor_width=32, actor_blocks=1, critic_hidden=(16, 16), time_dim=8,
             actor_batch_size=16, critic_batch_size=8, steps=10)  # fmt: skip


def tiny_batch(b: int = 6, obs_dim: int = 3, act_dim: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": torch.randn(b, obs_dim, generator=g),
        "act": torch.rand(b, act_dim, generator=g) * 2 - 1,
        "next_obs": torch.randn(b, obs_dim, generator=g),
        "reward": torch.randn(b, generator=g),
        "cost": torch.tensor([0.0, 1.0, 0.0, 2.0, 0.0, 0.0]).repeat(b // 6 + 1)[:b],
        "done": torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 1.0]).repeat(b // 6 + 1)[:b],
    }


def test_vp_betas_hand_values():
    # β_t = 1 − exp(−0.1/5 − 0.5·9.9·(2t − 1)/25)
    expected = [1 - math.exp(-0.02 - 0.198 * (2 * t - 1)) for t in range(1, 6)]
    np.testing.assert_allclose(vp_betas(5, 0.1, 10.0), expected, rtol=1e-12)
    np.testing.assert_allclose(
        vp_betas(), [0.195875, 0.458818, 0.635781, 0.754878, 0.835031], atol=1e-6
    )


def test_scheduler_uses_vp_betas_and_five_steps():
    sched = make_scheduler(FISORConfig())
    np.testing.assert_allclose(sched.betas.numpy(), vp_betas(), rtol=1e-6)
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), np.cumprod(1 - vp_betas()), rtol=1e-6)
    assert list(sched.timesteps.numpy()) == [4, 3, 2, 1, 0]
    assert sched.config.clip_sample and sched.config.clip_sample_range == 1.0


def test_constraint_signal():
    h = constraint_signal(torch.tensor([0.0, 1.0, 0.5, 0.0]), 25.0)
    assert h.tolist() == [-1.0, 25.0, 25.0, -1.0]


def test_feasibility_target_hand_values():
    h = torch.tensor([25.0, -1.0, -1.0, 25.0])
    done = torch.tensor([0.0, 0.0, 1.0, 1.0])
    v_next = torch.tensor([-5.0, 3.0, 7.0, -2.0])
    # (1−γ)h + γ max(h, V'): 0.1·25 + 0.9·25 = 25; 0.1·(−1) + 0.9·3 = 2.6; terminal: h
    target = feasibility_target(h, done, v_next, gamma=0.9)
    torch.testing.assert_close(target, torch.tensor([25.0, 2.6, -1.0, 25.0]))


def test_expectile_losses_hand_values():
    diff = torch.tensor([1.0, -2.0])
    # IQL: τ on positive residuals: (0.9·1 + 0.1·4)/2
    assert expectile_loss(diff, 0.9).item() == pytest.approx(0.65)
    # reversed: τ on negative residuals: (0.1·1 + 0.9·4)/2
    assert reversed_expectile_loss(diff, 0.9).item() == pytest.approx(1.85)


def test_value_losses_wire_the_right_critics():
    torch.manual_seed(0)
    cfg = FISORConfig(**SMALL)
    nets = FISORNets(3, 2, cfg)
    batch = tiny_batch()
    q_h = nets.q_h_target(batch["obs"], batch["act"]).max(dim=0).values
    diff = q_h - nets.v_h(batch["obs"])
    w = torch.where(diff < 0, 0.9, 0.1)
    loss, stats = v_h_loss(batch, nets, cfg)
    assert loss.item() == pytest.approx((w * diff**2).mean().item(), rel=1e-6)
    assert 0.0 <= stats["values/feasible_fraction"].item() <= 1.0

    q_r = nets.q_r_target(batch["obs"], batch["act"]).min(dim=0).values
    diff = q_r - nets.v_r(batch["obs"])
    w = torch.where(diff > 0, 0.9, 0.1)
    loss, _ = v_r_loss(batch, nets, cfg)
    assert loss.item() == pytest.approx((w * diff**2).mean().item(), rel=1e-6)


def test_critic_losses_hand_targets():
    torch.manual_seed(1)
    cfg = FISORConfig(**SMALL)
    nets = FISORNets(3, 2, cfg)
    batch = tiny_batch()
    h = torch.where(batch["cost"] > 0, 25.0, -1.0)
    v_next = nets.v_h(batch["next_obs"])
    target = torch.where(batch["done"] > 0, h, 0.01 * h + 0.99 * torch.maximum(h, v_next))
    q = nets.q_h(batch["obs"], batch["act"])
    loss, _ = q_h_loss(batch, nets, cfg)
    assert loss.item() == pytest.approx(((q - target) ** 2).mean(1).sum().item(), rel=1e-6)

    target_r = batch["reward"] + 0.99 * (1 - batch["done"]) * nets.v_r(batch["next_obs"])
    q = nets.q_r(batch["obs"], batch["act"])
    loss, _ = q_r_loss(batch, nets, cfg)
    assert loss.item() == pytest.approx(((q - target_r) ** 2).mean(1).sum().item(), rel=1e-6)


def test_three_way_weight_rule_hand_values():
    cfg = FISORConfig()
    q_r = torch.tensor([1.0, 3.0, 0.0, 0.0, 0.0, 0.0])
    v_r = torch.tensor([0.5, 0.0, 0.0, 0.0, 0.0, 0.0])
    v_h = torch.tensor([-1.0, -1.0, 2.0, 2.0, -1.0, 0.0])
    q_h = torch.tensor([-0.5, -0.5, 1.0, 0.0, 0.5, 0.0])
    w = policy_weights(q_r, v_r, q_h, v_h, cfg)
    expected = [
        math.exp(3 * 0.5),  # feasible: exp(3(Q_r − V_r))
        100.0,  # exp(9) clipped at 100
        math.exp(5 * 1.0),  # infeasible: exp(5(V_h − Q_h)) = 148.4
        150.0,  # exp(10) clipped at 150
        0.0,  # V_h ≤ 0 < Q_h: leaves the feasible region
        1.0,  # boundary V_h = Q_h = 0 counts as feasible: exp(0)
    ]
    torch.testing.assert_close(w, torch.tensor(expected))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(*[st.floats(-5, 5)] * 4), min_size=1, max_size=20))
def test_weights_bounded_and_zero_exactly_on_leaving_actions(rows):
    q_r, v_r, q_h, v_h = (torch.tensor(c, dtype=torch.float32) for c in zip(*rows, strict=True))
    cfg = FISORConfig()
    w = policy_weights(q_r, v_r, q_h, v_h, cfg)
    assert torch.all(w >= 0) and torch.all(w <= 150)
    leaving = (v_h <= 0) & (q_h > 0)
    assert torch.all(w[leaving] == 0)
    assert torch.all(w[~leaving] > 0)  # exp of arguments in [−50, 50] never underflows to 0
    assert torch.all(w[(v_h <= 0) & ~leaving] <= 100)


def test_actor_loss_matches_manual_forward_diffusion():
    torch.manual_seed(2)
    cfg = FISORConfig(**SMALL)
    nets = FISORNets(3, 2, cfg)
    nets.actor.eval()  # no dropout so both passes see the same network
    sched = make_scheduler(cfg)
    batch = tiny_batch()
    loss, _ = actor_loss(batch, nets, cfg, sched, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    t = torch.randint(5, (6,), generator=g)
    eps = torch.randn(6, 2, generator=g)
    abar = torch.tensor(np.cumprod(1 - vp_betas()), dtype=torch.float32)[t].unsqueeze(1)
    a_t = abar.sqrt() * batch["act"] + (1 - abar).sqrt() * eps
    w = policy_weights(
        nets.q_r_target(batch["obs"], batch["act"]).min(0).values,
        nets.v_r(batch["obs"]),
        nets.q_h_target(batch["obs"], batch["act"]).max(0).values,
        nets.v_h(batch["obs"]),
        cfg,
    )
    manual = (w * ((nets.actor(a_t, batch["obs"], t) - eps) ** 2).sum(-1)).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)


def test_action_selection_is_argmin_target_qh_of_candidates():
    """The reference's eval_actions scores candidates with the *target* Q_h (safe_target_critic)."""
    agent = FISOR(3, 2, FISORConfig(**SMALL, num_candidates=7), device="cpu")
    with torch.no_grad():  # online and target Q_h disagree: the choice must follow the target
        for p in agent.nets.q_h.parameters():
            p.mul_(-1.0)
    obs = torch.randn(4, 3)
    agent.generator.manual_seed(11)
    cand = agent.sample_candidates(obs, 7)
    assert cand.shape == (4, 7, 2) and cand.abs().max() <= 1.0
    flat_obs, flat = obs.repeat_interleave(7, 0), cand.reshape(-1, 2)
    q = agent.nets.q_h_target(flat_obs, flat).max(0).values.reshape(4, 7)
    q_online = agent.nets.q_h(flat_obs, flat).max(0).values.reshape(4, 7)
    assert not torch.equal(q.argmin(1), q_online.argmin(1))
    expected = cand[torch.arange(4), q.argmin(1)]
    agent.generator.manual_seed(11)
    torch.testing.assert_close(agent.act_tensor(obs), expected)


def test_actor_optimiser_is_the_references():
    """AdamW, weight decay 0; cosine decay over a fixed 3e6 actor updates, whatever the budget
    (reference: decay_steps=int(3e6), 2 actor updates per iteration, 1e6 iterations → 0.25×)."""
    cfg = FISORConfig()
    assert cfg.actor_weight_decay == 0.0 and cfg.actor_decay_steps == 3_000_000
    assert cosine_decay(0, 3_000_000) == 1.0
    assert cosine_decay(1_500_000, 3_000_000) == pytest.approx(0.5)
    assert cosine_decay(2 * cfg.steps, 3_000_000) == pytest.approx(0.25)  # at the reference's end
    assert cosine_decay(4_000_000, 3_000_000) == 0.0 and cosine_decay(7, None) == 1.0
    lrs = []
    for steps in (10, 100_000):  # the budget does not compress the schedule
        agent = FISOR(3, 2, FISORConfig(**{**SMALL, "steps": steps}, actor_decay_steps=40),
                      device="cpu")  # fmt: skip
        assert agent.actor_opt.param_groups[0]["weight_decay"] == 0.0
        for _ in range(5):
            agent.update(tiny_batch(8), tiny_batch(16, seed=3))
        lrs.append(agent.actor_opt.param_groups[0]["lr"])
    # 5 iterations × 2 actor updates = 10 of 40: 3e-4 · ½(1 + cos(π/4))
    assert lrs[0] == lrs[1] == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_update_changes_all_nets_and_is_deterministic():
    def run():
        agent = FISOR(3, 2, FISORConfig(**SMALL), device="cpu")
        before = {k: v.clone() for k, v in agent.nets.state_dict().items()}
        stats = agent.update(tiny_batch(8), tiny_batch(16, seed=3))
        return agent, before, stats

    a1, before, stats = run()
    a2, _, _ = run()
    after = a1.nets.state_dict()
    for prefix in ("q_r.", "v_r.", "q_h.", "v_h.", "actor.", "q_r_target.", "actor_ema."):
        changed = [not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix)]
        assert any(changed), prefix
    for k, v in a2.nets.state_dict().items():
        torch.testing.assert_close(v, after[k], rtol=0, atol=0)
    assert all(math.isfinite(float(v)) for v in stats.values())


def test_checkpoint_round_trip(tmp_path):
    agent = FISOR(3, 2, FISORConfig(**SMALL), device="cpu")
    agent.update(tiny_batch(8), tiny_batch(16, seed=1))
    agent.save(tmp_path / "ckpt")
    loaded = FISOR.load(tmp_path / "ckpt", device="cpu")
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    agent.generator.manual_seed(0)
    loaded.generator.manual_seed(0)
    np.testing.assert_array_equal(agent.act(obs), loaded.act(obs))
    assert loaded.step == 1 and loaded.config == agent.config


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="gamma"):
        FISORConfig(gamma=1.5)
    with pytest.raises(ValueError, match="divisible"):
        FISORConfig(actor_batch_size=1001)
    with pytest.raises(KeyError, match="unknown"):
        config_from_dict(FISORConfig, {"nope": 1})
    agent = FISOR(3, 2, FISORConfig(**SMALL), device="cpu")
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        agent.act(np.zeros((2, 4)))


@pytest.mark.gpu
def test_update_and_action_selection_on_cuda():
    agent = FISOR(3, 2, FISORConfig(**SMALL), device="cuda")
    to_cuda = lambda b: {k: v.cuda() for k, v in b.items()}  # noqa: E731
    stats = agent.update(to_cuda(tiny_batch(8)), to_cuda(tiny_batch(16, seed=1)))
    assert all(v.device.type == "cuda" for v in stats.values())
    act = agent.act(np.zeros((5, 3), np.float32))
    assert act.shape == (5, 2) and np.all(np.abs(act) <= 1)
