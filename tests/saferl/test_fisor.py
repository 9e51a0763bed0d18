"""FISOR: each loss against hand-computed values on tiny batches, the schedule, sampling."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

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
from saferl.offline.fisor import (
    cosine_decay,
    critic_loss,
    diffusion_tables,
    noised_actions,
    train_fisor,
    value_loss,
)
from saferl.offline.networks import MLP, EnsembleMLP, ema_update

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
        for p in agent.nets.critic.parameters():  # the online critic, Q_h members included
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
    for prefix in ("critic.", "value.", "actor.", "critic_target.", "actor_ema."):
        changed = [not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix)]
        assert any(changed), prefix
    e = a1.config.ensemble  # every member of the fused critic and value moved
    for prefix, members in (("critic.", 2 * e), ("critic_target.", 2 * e), ("value.", 2)):
        key = prefix + "layers.0.weight"
        assert all(not torch.equal(before[key][m], after[key][m]) for m in range(members))
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


# ---------------------------------------------------------------------------------------------
# Fused critics and the reference's update order


def test_fused_critics_equal_per_member_nets_on_the_same_weights():
    """Each view of the fused critic/value ensembles equals its members run as plain nets."""
    torch.manual_seed(3)
    cfg = FISORConfig(**SMALL, ensemble=3)
    nets = FISORNets(4, 2, cfg)
    with torch.no_grad():  # targets apart from the online critic
        for p in nets.critic_target.parameters():
            p.add_(0.1 * torch.randn_like(p))
    obs, act = torch.randn(9, 4), torch.rand(9, 2) * 2 - 1
    x = torch.cat([obs, act], dim=-1)
    for view in (nets.q_r, nets.q_h, nets.q_r_target, nets.q_h_target):
        assert view.ensemble == 3
        per_member = torch.stack([view.member(k)(x).squeeze(-1) for k in range(3)])
        torch.testing.assert_close(view(obs, act), per_member)
    torch.testing.assert_close(nets.critic(obs, act), torch.cat([nets.q_r(obs, act),
                                                                 nets.q_h(obs, act)]))  # fmt: skip
    for view in (nets.v_r, nets.v_h):
        assert view(obs).shape == (9,)
        torch.testing.assert_close(view(obs), view.member(0)(obs).squeeze(-1))
    assert not torch.allclose(nets.q_r(obs, act), nets.q_h(obs, act)[:3])
    names = [k for k, _ in nets.named_parameters()]  # each weight once, views own none
    assert not any(k.startswith(("q_r", "q_h", "v_r", "v_h")) for k in names)


def test_fused_losses_equal_the_separate_ones_with_their_gradients():
    torch.manual_seed(4)
    cfg = FISORConfig(**SMALL)
    batch = tiny_batch(12)
    for fused, parts in ((value_loss, (v_r_loss, v_h_loss)), (critic_loss, (q_r_loss, q_h_loss))):
        nets = FISORNets(3, 2, cfg)
        params = [p for p in nets.parameters() if p.requires_grad]
        loss, stats = fused(batch, nets, cfg)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        separate = [fn(batch, nets, cfg) for fn in parts]
        total = sum(part_loss for part_loss, _ in separate)
        expected = torch.autograd.grad(total, params, allow_unused=True)
        torch.testing.assert_close(loss, total)
        for g, h in zip(grads, expected, strict=True):
            assert (g is None) == (h is None)
            if g is not None:
                torch.testing.assert_close(g, h)
        separate_stats = {k: v for _, s in separate for k, v in s.items()}
        assert stats.keys() == separate_stats.keys()
        for key, value in stats.items():
            torch.testing.assert_close(value, separate_stats[key])


def test_noised_actions_are_diffusers_add_noise_bit_for_bit():
    sched = make_scheduler(FISORConfig())
    act, noise = torch.rand(64, 3) * 2 - 1, torch.randn(64, 3)
    t = torch.randint(5, (64,))
    tables = diffusion_tables(sched, torch.device("cpu"))
    assert torch.equal(noised_actions(act, noise, t, tables), sched.add_noise(act, noise, t))


class ReferenceOrder:
    """One FISOR iteration as the official code runs it (``update``, fisor.py:611–636), net by
    net: separate plain networks (the fused members, copied) and one optimiser per network;
    actor twice, then V_r, Q_r on the new V_r, its target, V_h, Q_h on the new V_h, its target."""

    def __init__(self, agent: FISOR) -> None:
        n, e = agent.nets, agent.config.ensemble
        self.cfg, self.sched = agent.config, agent.scheduler
        self.q_r = [n.q_r.member(k) for k in range(e)]
        self.q_h = [n.q_h.member(k) for k in range(e)]
        self.q_r_t = [n.q_r_target.member(k) for k in range(e)]
        self.q_h_t = [n.q_h_target.member(k) for k in range(e)]
        self.v_r, self.v_h = n.v_r.member(0), n.v_h.member(0)
        self.actor, self.actor_ema = copy.deepcopy(n.actor), copy.deepcopy(n.actor_ema)
        lr = self.cfg.critic_lr
        params = {"q_r": self.params(self.q_r), "q_h": self.params(self.q_h),
                  "v_r": self.v_r.parameters(), "v_h": self.v_h.parameters()}  # fmt: skip
        self.opts = {k: torch.optim.Adam(v, lr=lr, foreach=False) for k, v in params.items()}
        self.actor_opt = torch.optim.AdamW(self.actor.parameters(), lr=self.cfg.actor_lr,
                                           weight_decay=0.0, foreach=False)  # fmt: skip
        self.generator = torch.Generator().manual_seed(self.cfg.seed)
        self.updates = 0

    @staticmethod
    def params(nets):
        return [p for net in nets for p in net.parameters()]

    @staticmethod
    def q(nets, obs, act):
        return torch.stack([net(torch.cat([obs, act], -1)).squeeze(-1) for net in nets])

    def _step(self, name, loss):
        self.opts[name].zero_grad()
        loss.backward()
        self.opts[name].step()

    def update(self, cb, ab):
        cfg = self.cfg
        obs, act = ab["obs"], ab["act"]
        with torch.no_grad():  # the critics and values as the previous iteration left them
            w = policy_weights(self.q(self.q_r_t, obs, act).min(0).values,
                               self.v_r(obs).squeeze(-1),
                               self.q(self.q_h_t, obs, act).max(0).values,
                               self.v_h(obs).squeeze(-1), cfg)  # fmt: skip
        t = torch.randint(cfg.diffusion_steps, (len(obs),), generator=self.generator)
        noise = torch.randn(act.shape, generator=self.generator)
        a_t = self.sched.add_noise(act, noise, t)
        size = len(obs) // cfg.actor_splits
        for k in range(cfg.actor_splits):
            s = slice(k * size, (k + 1) * size)
            eps = self.actor(a_t[s], obs[s], t[s])
            loss = (w[s] * (eps - noise[s]).square().sum(-1)).mean()
            self.actor_opt.param_groups[0]["lr"] = cfg.actor_lr * cosine_decay(
                self.updates, cfg.actor_decay_steps
            )
            self.actor_opt.zero_grad()
            loss.backward()
            self.actor_opt.step()
            self.updates += 1
            ema_update(self.actor_ema, self.actor, cfg.actor_ema)
        s, a, s2 = cb["obs"], cb["act"], cb["next_obs"]
        with torch.no_grad():
            q = self.q(self.q_r_t, s, a).min(0).values
        self._step("v_r", expectile_loss(q - self.v_r(s).squeeze(-1), cfg.reward_expectile))
        with torch.no_grad():  # update_q reads the value just stepped
            target = cb["reward"] + cfg.gamma * (1 - cb["done"]) * self.v_r(s2).squeeze(-1)
        self._step("q_r", (self.q(self.q_r, s, a) - target).square().mean(1).sum())
        for tgt, src in zip(self.q_r_t, self.q_r, strict=True):
            ema_update(tgt, src, cfg.target_tau)
        with torch.no_grad():
            q = self.q(self.q_h_t, s, a).max(0).values
        diff = q - self.v_h(s).squeeze(-1)
        self._step("v_h", reversed_expectile_loss(diff, cfg.feasibility_expectile))
        with torch.no_grad():  # update_qc reads the value just stepped
            h = torch.where(cb["cost"] > 0, cfg.cost_scale, -1.0)
            target = feasibility_target(h, cb["done"], self.v_h(s2).squeeze(-1), cfg.gamma)
        self._step("q_h", (self.q(self.q_h, s, a) - target).square().mean(1).sum())
        for tgt, src in zip(self.q_h_t, self.q_h, strict=True):
            ema_update(tgt, src, cfg.target_tau)


def test_update_is_the_references_order_net_by_net():
    """Three fused updates equal the reference's sequence run on separate per-member nets with
    separate optimisers (no dropout, so both see the same actor)."""
    cfg = FISORConfig(**SMALL, actor_dropout=0.0, actor_decay_steps=8)
    agent = FISOR(3, 2, cfg, device="cpu")
    ref = ReferenceOrder(agent)
    for i in range(3):
        cb, ab = tiny_batch(8, seed=10 + i), tiny_batch(16, seed=20 + i)
        agent.update(cb, ab)
        ref.update(cb, ab)
    n = agent.nets
    pairs = [(n.q_r, ref.q_r), (n.q_h, ref.q_h), (n.q_r_target, ref.q_r_t),
             (n.q_h_target, ref.q_h_t), (n.v_r, [ref.v_r]), (n.v_h, [ref.v_h])]  # fmt: skip
    for view, nets in pairs:
        for k, net in enumerate(nets):
            for p, q in zip(view.member(k).parameters(), net.parameters(), strict=True):
                torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    for mine, theirs in ((n.actor, ref.actor), (n.actor_ema, ref.actor_ema)):
        for p, q in zip(mine.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    assert agent.actor_opt.param_groups[0]["lr"] == pytest.approx(3e-4 * cosine_decay(6, 8))


def test_critic_targets_use_this_steps_values_and_actor_the_previous_critics(monkeypatch):
    """Pinned one by one: Q_r and Q_h targets read V_r(s'), V_h(s') after this step's value
    update; the actor's weights read the critics and values from before this step's updates."""
    import saferl.offline.fisor as fisor

    seen: dict[str, list] = {}

    def spy(name, args):  # record the tensor arguments ``args`` of fisor.<name>
        fn = getattr(fisor, name)

        def wrapped(*a, **k):
            seen.setdefault(name, []).append([a[i].clone() for i in args])
            return fn(*a, **k)

        monkeypatch.setattr(fisor, name, wrapped)

    spy("reward_target", [2])  # V_r(s')
    spy("feasibility_target", [2])  # V_h(s')
    spy("policy_weights", [0, 1, 2, 3])  # Q_r, V_r, Q_h, V_h
    agent = FISOR(3, 2, FISORConfig(**SMALL), device="cpu")
    agent.update(tiny_batch(8, seed=1), tiny_batch(16, seed=2))  # move off the initial weights
    before = copy.deepcopy(agent.nets)
    for values in seen.values():
        values.clear()
    cb, ab = tiny_batch(8, seed=3), tiny_batch(16, seed=4)
    agent.update(cb, ab)
    after = agent.nets
    with torch.no_grad():
        for name, view in (("reward_target", "v_r"), ("feasibility_target", "v_h")):
            ((v_next,),) = seen[name]
            torch.testing.assert_close(v_next, getattr(after, view)(cb["next_obs"]))
            assert not torch.allclose(v_next, getattr(before, view)(cb["next_obs"]))
        (weights_args,) = seen["policy_weights"]
        obs, act = ab["obs"], ab["act"]
        old = [before.q_r_target(obs, act).min(0).values, before.v_r(obs),
               before.q_h_target(obs, act).max(0).values, before.v_h(obs)]  # fmt: skip
        new = [after.q_r_target(obs, act).min(0).values, after.v_r(obs),
               after.q_h_target(obs, act).max(0).values, after.v_h(obs)]  # fmt: skip
        for got, o, nw in zip(weights_args, old, new, strict=True):
            torch.testing.assert_close(got, o)
            assert not torch.allclose(got, nw)


def test_checkpoint_of_the_separate_critics_layout_loads():
    """A state dict with q_r/q_h (+ targets) as separate ensembles and v_r/v_h as MLPs (the
    layout before the critics were fused) loads into the fused nets with the same outputs."""
    torch.manual_seed(5)
    cfg = FISORConfig(**SMALL)
    old = nn.Module()  # the earlier FISORNets' attributes
    for name in ("q_r", "q_h", "q_r_target", "q_h_target"):
        setattr(old, name, EnsembleMLP(5, 1, cfg.critic_hidden, cfg.ensemble))
    old.v_r, old.v_h = MLP(3, 1, cfg.critic_hidden), MLP(3, 1, cfg.critic_hidden)
    nets = FISORNets(3, 2, cfg)
    old.actor, old.actor_ema = copy.deepcopy(nets.actor), copy.deepcopy(nets.actor_ema)
    FISORNets(3, 2, cfg).load_state_dict(old.state_dict())  # strict: every key accounted for
    nets.load_state_dict(old.state_dict())
    obs, act = torch.randn(7, 3), torch.rand(7, 2)
    with torch.no_grad():
        for name in ("q_r", "q_h", "q_r_target", "q_h_target"):
            torch.testing.assert_close(getattr(nets, name)(obs, act), getattr(old, name)(obs, act))
        for name in ("v_r", "v_h"):
            torch.testing.assert_close(getattr(nets, name)(obs), getattr(old, name)(obs))


def test_resumed_agent_continues_the_learning_rate_schedule(tmp_path):
    cfg = FISORConfig(**SMALL, actor_decay_steps=20)
    agent = FISOR(3, 2, cfg, device="cpu")
    for _ in range(3):
        agent.update(tiny_batch(8), tiny_batch(16, seed=3))
    agent.save(tmp_path / "ckpt")
    loaded = FISOR.load(tmp_path / "ckpt", device="cpu")
    loaded.update(tiny_batch(8), tiny_batch(16, seed=3))
    # 4 iterations × 2 actor updates done: the next one runs at 3e-4 · ½(1 + cos(8π/20))
    assert loaded.actor_opt.param_groups[0]["lr"] == pytest.approx(3e-4 * cosine_decay(8, 20))


def test_train_fisor_critics_use_the_first_rows_of_the_actor_batch(monkeypatch):
    """As the reference (``mini_batch = x[:256]`` of the actor's batch, fisor.py:627–630)."""
    from saferl.data import DatasetMetadata

    calls = []
    update = FISOR.update

    def recording(self, cb, ab):
        calls.append((cb, ab))
        return update(self, cb, ab)

    monkeypatch.setattr(FISOR, "update", recording)
    rng = np.random.default_rng(0)
    n = 40
    data = {"observations": rng.normal(size=(n, 3)), "next_observations": rng.normal(size=(n, 3)),
            "actions": rng.uniform(-1, 1, (n, 2)), "rewards": rng.normal(size=n),
            "costs": (rng.random(n) < 0.3).astype(float), "terminals": np.zeros(n),
            "timeouts": np.zeros(n)}  # fmt: skip
    meta = DatasetMetadata("Hopper-v5", max_episode_steps=10, reward_min=-5.0, reward_max=5.0,
                           max_cost=3.0)  # fmt: skip
    train_fisor({k: v.astype(np.float32) for k, v in data.items()}, meta,
                FISORConfig(**{**SMALL, "steps": 2}), device="cpu")  # fmt: skip
    assert len(calls) == 2
    for cb, ab in calls:
        assert len(cb["obs"]) == 8 and len(ab["obs"]) == 16
        for key, value in cb.items():
            assert torch.equal(value, ab[key][:8])


@pytest.mark.slow  # about a minute of compilation on a CPU
def test_compiled_update_equals_eager():
    """``compile=True`` runs the same arithmetic (no dropout, so both draw nothing else)."""
    cfg = FISORConfig(**SMALL, actor_dropout=0.0)
    eager = FISOR(3, 2, cfg, device="cpu")
    compiled = FISOR(3, 2, FISORConfig(**SMALL, actor_dropout=0.0, compile=True), device="cpu")
    for i in range(2):
        cb, ab = tiny_batch(8, seed=i), tiny_batch(16, seed=5 + i)
        s1, s2 = eager.update(cb, ab), compiled.update(cb, ab)
    for key in s1:
        torch.testing.assert_close(s1[key], s2[key], rtol=1e-4, atol=1e-5)
    for (k, p), q in zip(eager.nets.state_dict().items(), compiled.nets.state_dict().values(),
                         strict=True):  # fmt: skip
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_update_equals_eager_on_cuda(mode):
    """Not yet run (no GPU so far): the compiled update, CUDA graphs included, on CUDA."""
    cfg = dict(**SMALL, actor_dropout=0.0)
    eager = FISOR(3, 2, FISORConfig(**cfg), device="cuda")
    compiled = FISOR(3, 2, FISORConfig(**cfg, compile=True, compile_mode=mode), device="cuda")
    for i in range(4):
        cb, ab = (
            {k: v.cuda() for k, v in b.items()} for b in (tiny_batch(8, seed=i), tiny_batch(16))
        )
        s1, s2 = eager.update(cb, ab), compiled.update(cb, ab)
        for key in s1:
            torch.testing.assert_close(s1[key], s2[key], rtol=1e-3, atol=1e-4)
    for p, q in zip(eager.nets.parameters(), compiled.nets.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5)


@pytest.mark.gpu
def test_update_and_action_selection_on_cuda():
    agent = FISOR(3, 2, FISORConfig(**SMALL), device="cuda")
    to_cuda = lambda b: {k: v.cuda() for k, v in b.items()}  # noqa: E731
    stats = agent.update(to_cuda(tiny_batch(8)), to_cuda(tiny_batch(16, seed=1)))
    assert all(v.device.type == "cuda" for v in stats.values())
    act = agent.act(np.zeros((5, 3), np.float32))
    assert act.shape == (5, 2) and np.all(np.abs(act) <= 1)
