"""Offline helpers, baselines and the DSRL protocol: hand-computed values on tiny inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saferl.common import PIDLagrangian, PIDLagrangianConfig
from saferl.data import (
    DatasetMetadata,
    Rollouts,
    make_env,
    rollout,
    safe_trajectories,
    split_trajectories,
    trajectory_returns,
    validate_data,
)
from saferl.offline import (
    BC,
    METHODS,
    BCConfig,
    BCQLag,
    BCQLagConfig,
    TransitionBuffer,
    bc_loss,
    dsrl_scores,
    ema_update,
    make_config,
    per_step_cost_threshold,
    summarize,
    train_bc,
    train_bcq_lag,
)
from saferl.offline.bcq_lag import BCQLagNets, actor_values, critic_targets, transitions
from saferl.offline.networks import VAE, EnsembleMLP, FourierFeatures, LNResNetNoise


def toy_data(n_traj: int = 4, length: int = 5, obs_dim: int = 3, act_dim: int = 2) -> dict:
    """Trajectory k has reward 1 and cost k on every step; the last ends on a timeout."""
    rng = np.random.default_rng(0)
    n = n_traj * length
    traj = np.repeat(np.arange(n_traj), length)
    last = (np.arange(n) % length) == length - 1
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "next_observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        "rewards": np.ones(n, np.float32),
        "costs": traj.astype(np.float32),
        "terminals": (last & (traj % 2 == 0)).astype(np.float32),
        "timeouts": (last & (traj % 2 == 1)).astype(np.float32),
    }


INFO = DatasetMetadata("Hopper-v5", 5, 0.0, 10.0, max_cost=15.0)


def test_trajectories_split_on_terminals_and_timeouts():
    data = toy_data()
    assert split_trajectories(data).tolist() == [[0, 5], [5, 10], [10, 15], [15, 20]]
    rewards, costs = trajectory_returns(data)
    assert rewards.tolist() == [5, 5, 5, 5] and costs.tolist() == [0, 5, 10, 15]


def test_bc_safe_keeps_trajectories_within_budget():
    kept = safe_trajectories(toy_data(), cost_limit=5.0)
    assert len(kept["rewards"]) == 10 and set(kept["costs"].tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="no trajectory"):
        safe_trajectories({**toy_data(), "costs": np.ones(20, np.float32) * 9}, 1.0)


def test_validate_data_names_the_problem():
    data = toy_data()
    with pytest.raises(KeyError, match="costs"):
        validate_data({k: v for k, v in data.items() if k != "costs"})
    bad = {**data, "rewards": data["rewards"].copy()}
    bad["rewards"][3] = np.nan
    with pytest.raises(ValueError, match="rewards"):
        validate_data(bad)
    with pytest.raises(ValueError, match="actions"):
        validate_data({**data, "actions": data["actions"][:-1]})
    # the learners accept any real dtype and extra keys; the file format does not
    loose = {**data, "rewards": data["rewards"].astype(np.float64), "infos/x": data["costs"]}
    assert validate_data(loose, strict_dtype=False, extra_keys=True) == 20
    with pytest.raises(KeyError, match="infos/x"):
        validate_data(loose, strict_dtype=False)


def test_buffer_scales_rewards_and_marks_done():
    buf = TransitionBuffer(toy_data(), "cpu", reward_scale=0.5)
    batch = buf.sample(64, torch.Generator().manual_seed(0))
    assert batch["obs"].shape == (64, 3) and batch["act"].shape == (64, 2)
    assert torch.all(batch["reward"] == 0.5)
    assert buf.tensors["done"].sum().item() == 4  # 2 terminals + 2 timeouts


def test_normalised_scores_hand_values():
    assert INFO.normalized_reward(7.5) == pytest.approx(0.75)
    assert INFO.normalized_cost(5.0, 10.0) == pytest.approx(0.5)
    assert INFO.normalized_cost(0.0, 0.0) == pytest.approx(1.0)  # ε = 1 when κ = 0
    assert INFO.normalized_cost(1.0, 0.0) == pytest.approx(2.0)
    res = Rollouts(np.array([5.0, 10.0]), np.array([10.0, 30.0]), np.array([5, 5]),
                   np.array([False, False]), [{}, {}])  # fmt: skip
    rows = dsrl_scores(res, INFO, [10.0, 40.0])
    assert [r["cost"] for r in rows] == [2.0, 0.5] and [r["safe"] for r in rows] == [False, True]
    assert rows[0]["reward"] == pytest.approx(0.75)
    summary = summarize([{"task": "t", "method": "m", "seed": s, **r}
                         for s in (0, 1) for r in rows])  # fmt: skip
    assert summary[0]["cost"] == pytest.approx(1.25) and not summary[0]["safe"]


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 1000), st.just(0.0) | st.floats(1e-3, 1e3))
def test_normalised_cost_safe_iff_within_threshold(cost, kappa):
    assert (INFO.normalized_cost(cost, kappa) <= 1.0) == (cost <= kappa)


def test_per_step_threshold_and_pid_hand_values():
    # κ(1 − γ^L)/((1 − γ)L) with κ = 10, γ = 0.5, L = 2: 10·0.75/(0.5·2) = 7.5
    assert per_step_cost_threshold(10.0, 0.5, 2) == pytest.approx(7.5)
    pid = PIDLagrangian(PIDLagrangianConfig.plain(0.1, 0.003, 0.001))
    # e = 3: I = 0.009, D = 5, λ = 0.3 + 0.009 + 0.005
    assert pid.update(5.0, 2.0) == pytest.approx(0.314)
    # e = −1: I = 0.006, D = max(0, 1 − 5) = 0, λ = max(0, −0.1 + 0.006) = 0
    assert pid.update(1.0, 2.0) == 0.0
    with pytest.raises(ValueError):
        per_step_cost_threshold(10.0, 1.0, 5)


def test_osrl_pid_keeps_lambda_on_a_satisfied_constraint():
    """OSRL's controller (BCQ-Lag's): proportional term K_P·relu(e), first rise from e = 0."""
    pid = PIDLagrangian(PIDLagrangianConfig.osrl(2.0, 0.1, 0.003, 0.001))
    # e = 3: P = 0.3, I = 0.009, D = relu(3 − 0) = 3 → 0.003
    assert pid.update(5.0, 2.0) == pytest.approx(0.312)
    # e = −1: P = 0.1·relu(−1) = 0 (the signed term would give −0.1 and λ = 0), I = 0.006, D = 0
    assert pid.update(1.0, 2.0) == pytest.approx(0.006)
    assert PIDLagrangian(PIDLagrangianConfig.plain()).update(5.0, 2.0) == pytest.approx(0.314)


def test_ema_rate_hand_value():
    a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        a.weight.fill_(1.0)
        b.weight.fill_(3.0)
    ema_update(a, b, 0.001)
    assert a.weight.item() == pytest.approx(1.002)


def test_network_shapes():
    q = EnsembleMLP(5, 1, (8, 8), 2)
    assert q(torch.zeros(7, 3), torch.zeros(7, 2)).shape == (2, 7)
    ff = FourierFeatures(64)
    assert ff(torch.arange(5)).shape == (5, 64)
    net = LNResNetNoise(4, 3)
    assert net(torch.zeros(6, 3), torch.zeros(6, 4), torch.zeros(6, dtype=torch.long)).shape == (
        6, 3,
    )  # fmt: skip


def test_bc_loss_and_training_fit_a_constant():
    data = toy_data()
    data["actions"][:] = 0.5
    agent, log = train_bc(data, None, BCConfig(steps=200, batch_size=16, hidden=(16,)), "cpu")
    assert log[-1]["losses/bc"] < 0.05
    np.testing.assert_allclose(agent.act(data["observations"][:3]), 0.5, atol=0.1)
    batch = {"obs": torch.zeros(2, 3), "act": torch.ones(2, 2)}
    loss, _ = bc_loss(batch, agent.actor)
    pred = agent.actor(torch.zeros(1, 3))
    # OSRL's F.mse_loss: the mean over batch and action dims (was: summed over action dims)
    assert loss.item() == pytest.approx(((pred - 1) ** 2).mean().item(), rel=1e-5)


def test_bc_checkpoint_round_trip(tmp_path):
    agent = BC(3, 2, BCConfig(hidden=(8,)), "cpu")
    agent.save(tmp_path / "bc")
    obs = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(BC.load(tmp_path / "bc", "cpu").act(obs), agent.act(obs))


def test_bcq_lag_trains_and_raises_lambda_on_costly_data(tmp_path):
    data = toy_data(n_traj=6)
    data["costs"][:] = 1.0  # every step costs: Q_c ≫ threshold, λ must grow
    cfg = BCQLagConfig(steps=30, batch_size=16, hidden=(16, 16), vae_hidden=(16, 16),
                       cost_limit=0.0, num_samples=3)  # fmt: skip
    agent, log = train_bcq_lag(data, INFO, cfg, "cpu")
    assert log[-1]["values/lambda"] > 0
    assert agent.cost_threshold == 0.0
    act = agent.act(data["observations"][:4])
    assert act.shape == (4, 2) and np.all(np.abs(act) <= 1)
    agent.save(tmp_path / "bcq")
    loaded = BCQLag.load(tmp_path / "bcq", "cpu")
    # acting decodes a fresh clamped latent per call (OSRL): equal streams give equal actions
    agent.act_generator.manual_seed(5)
    loaded.act_generator.manual_seed(5)
    np.testing.assert_array_equal(loaded.act(data["observations"]), agent.act(data["observations"]))
    assert not np.array_equal(agent.act(data["observations"]), agent.act(data["observations"]))
    det = BCQLag.load(tmp_path / "bcq", "cpu")
    det.config.deterministic_act = True
    np.testing.assert_array_equal(det.act(data["observations"]), det.act(data["observations"]))


BCQ_SMALL = dict(hidden=(8,), vae_hidden=(8,), num_samples=2)


class StubCritic(torch.nn.Module):
    """A critic whose members return fixed values ``(E, B·n)``, whatever the input."""

    def __init__(self, values):
        super().__init__()
        self.values = torch.tensor(values, dtype=torch.float32)

    def forward(self, s, a):
        return self.values


def test_bcq_lag_defaults_are_osrls():
    """bcql_configs.py: reward_scale 0.1, vae 400, num_q 2 (double critics: 4 nets), lr 1e-3."""
    c = BCQLagConfig()
    assert (c.reward_scale, c.vae_hidden, c.num_q, c.latent_clip) == (0.1, (400, 400), 2, 0.5)
    assert (c.actor_lr, c.critic_lr, c.vae_lr, c.batch_size, c.steps) == (1e-3,) * 3 + (512, 1e5)
    assert (c.phi, c.lmbda, c.kl_weight, c.num_samples, c.pid) == (
        0.05, 0.75, 0.5, 10, (0.1, 0.003, 0.001),
    )  # fmt: skip
    nets = BCQLagNets(3, 2, BCQLagConfig(hidden=(8,)))
    assert nets.q_r.ensemble == nets.q_c.ensemble == 4  # 2 reward and 2 cost double critics
    assert nets.vae.encoder.net[0].out_features == 400 and nets.vae.latent == 4
    acts = {type(m) for m in nets.actor.net.modules()}
    assert torch.nn.Tanh in acts and torch.nn.ReLU not in acts  # Tanh hidden layers


def test_bcq_lag_targets_mix_min_and_max_over_their_own_samples():
    """BCQ's soft clipped double Q over each critic's own next-action samples (OSRL bcql.py)."""
    nets = BCQLagNets(3, 2, BCQLagConfig(**BCQ_SMALL))
    cfg = BCQLagConfig(**BCQ_SMALL, gamma=0.5)
    # one state, 2 samples; members [Q1a, Q1b, Q2a, Q2b] per sample
    nets.q_c_target = StubCritic([[1.0, 4.0], [3.0, 0.0], [2.0, 6.0], [5.0, 6.0]])
    # sample 0: Q1 = 1, Q2 = 2 → 0.75·1 + 0.25·2 = 1.25; sample 1: Q1 = 0, Q2 = 6 → 1.5
    nets.q_r_target = StubCritic([[10.0, 0.0]] * 4)  # reward prefers sample 0: 10
    batch = {"next_obs": torch.zeros(1, 3), "reward": torch.tensor([1.0]),
             "cost": torch.tensor([2.0]), "done": torch.tensor([1.0])}  # fmt: skip
    y_r, y_c = critic_targets(batch, nets, cfg, torch.Generator().manual_seed(0))
    assert y_r.item() == pytest.approx(1.0)  # done: no bootstrap of the reward
    # cost: max over its own samples (1.5, not the 1.25 at the reward's best sample), no done mask
    assert y_c.item() == pytest.approx(2.0 + 0.5 * 1.5)
    batch["done"][:] = 0.0
    y_r, _ = critic_targets(batch, nets, cfg, torch.Generator().manual_seed(0))
    assert y_r.item() == pytest.approx(1.0 + 0.5 * 10.0)


def test_bcq_lag_rewards_scaled_by_a_tenth_in_the_target():
    data = toy_data()
    data["rewards"] = np.linspace(-3, 7, 20).astype(np.float32)
    cfg = BCQLagConfig(**BCQ_SMALL)
    buffer = transitions(data, cfg, "cpu")
    batch = buffer.sample(16, torch.Generator().manual_seed(0))
    nets = BCQLagNets(3, 2, cfg)
    b = 16 * cfg.num_samples
    nets.q_r_target = nets.q_c_target = StubCritic(np.zeros((4, b)))
    y_r, y_c = critic_targets(batch, nets, cfg)
    raw = torch.as_tensor(data["rewards"])
    idx = [int((buffer.tensors["obs"] == o).all(1).nonzero()) for o in batch["obs"]]
    torch.testing.assert_close(y_r, 0.1 * raw[idx])
    torch.testing.assert_close(y_c, batch["cost"])


def test_vae_decodes_latents_clamped_to_half():
    vae = VAE(3, 2, (8,))
    z = vae.sample_latent(4000, "cpu", torch.Generator().manual_seed(0))
    assert z.shape == (4000, 4) and z.abs().max().item() == 0.5  # N(0, 1) clamped: both ends hit
    assert (z.abs() == 0.5).float().mean() > 0.5  # ≈ 62% of N(0, 1) lies beyond ±0.5
    s = torch.randn(4000, 3)
    a = vae.decode(s, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, vae.decoder(s, z))


def test_bcq_lag_uses_this_steps_lambda_on_min_cost_value():
    """OSRL computes λ from the current actor's Q_c (min over the 4 cost nets) before its step."""
    agent = BCQLag(3, 2, BCQLagConfig(**BCQ_SMALL, cost_limit=1.0, lmbda=0.75), 10, "cpu")
    with torch.no_grad():
        agent.nets.q_c.layers[-1].bias.fill_(5.0)  # Q_c ≈ 5 ≫ d: a positive error at step 1
    batch = TransitionBuffer(toy_data(), "cpu").sample(8, torch.Generator().manual_seed(1))
    q_r, q_c = actor_values(batch, agent.nets, torch.Generator().manual_seed(2))
    assert q_c.shape == (8,)
    stats = agent.update(batch)
    e = stats["values/q_c_pi"].item() - agent.cost_threshold
    lam = stats["values/lambda"].item()
    assert e > 0 and lam == pytest.approx(0.1 * e + 0.003 * e + 0.001 * e, rel=1e-5)
    assert stats["losses/qc_penalty"].item() == pytest.approx(lam * e, rel=1e-5)


TINY = {
    "bc_all": dict(hidden=(8,)),
    "bc_safe": dict(hidden=(8,)),
    "bcq_lag": dict(hidden=(8,), vae_hidden=(8,), num_samples=2),
    "cpq": dict(hidden=(8,), vae_hidden=(8,), num_samples=2),
    "fisor": dict(actor_width=16, actor_blocks=1, critic_hidden=(8,), time_dim=8,
                  actor_batch_size=8, critic_batch_size=8),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_fits_acts_and_round_trips(name, tmp_path):
    method = METHODS[name]
    kappa = 5.0 if method.threshold_conditioned else None
    batch = {} if name == "fisor" else {"batch_size": 8}
    config = make_config(name, TINY[name], seed=1, cost_limit=kappa, steps=3, log_every=1,
                         **batch)  # fmt: skip
    agent, log = method.train(toy_data(), INFO, config, "cpu")
    assert isinstance(agent, method.agent) and [row["step"] for row in log] == [1, 2, 3]
    assert getattr(agent.config, "cost_limit", None) == kappa
    obs = toy_data()["observations"][:4]
    act = agent.act(obs)
    assert act.shape == (4, 2) and np.all(np.abs(act) <= 1)
    agent.save(tmp_path / name)
    loaded = method.agent.load(tmp_path / name, "cpu")
    assert loaded.config == agent.config and type(loaded) is type(agent)


def test_rollout_runs_episodes_side_by_side():
    calls = []

    def policy(obs):
        calls.append(len(obs))
        return np.zeros((len(obs), 3))

    res = rollout(policy, lambda: make_env("Hopper-v5"), episodes=3, max_steps=7, record=False)
    assert res.lengths.tolist() == [7, 7, 7] and calls[0] == 3 and len(calls) == 7
    assert np.all(res.costs >= 0) and res.returns.shape == (3,)
    with pytest.raises(ValueError):
        rollout(policy, lambda: make_env("Hopper-v5"), episodes=0)


def test_ensemble_member_is_a_plain_copy_of_one_member() -> None:
    from saferl.offline import EnsembleMLP

    torch.manual_seed(0)
    ens = EnsembleMLP(7, 1, (16, 16), ensemble=3)
    x = torch.randn(5, 7)
    out = ens(x)
    for k in range(3):
        net = ens.member(k)
        assert isinstance(net, torch.nn.Sequential)
        torch.testing.assert_close(net(x).squeeze(-1), out[k])
    with pytest.raises(ValueError, match="member index"):
        ens.member(3)
