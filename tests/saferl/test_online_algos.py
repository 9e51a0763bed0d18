"""``TD3Config.algo`` / ``saferl train-online --algo``: TD3, SAC and PPO with every network kind.

Each algorithm x kind trains a tiny run, reports the budget it made, evaluates, and its saved
actor reloads to the model's own deterministic action; SAC and PPO resume from checkpoints with
their optimiser state (SAC: replay buffer and entropy coefficient too); SET keeps exact
rotation invariance under SAC and PPO (actions, log-probabilities, V); the CLI takes the algo
and refuses flags it does not use.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saferl.cli import main
from saferl.online import resume
from saferl.online.td3 import TD3Config, budget, load_actor, save_run, train
from saferl.policies import deterministic_net, invariance_error, orbit_angles, rotate_flat

NETS = {
    "set": {"width": 16, "ff": 32, "heads": 2, "layers": 1, "channels": 4},
    "transformer": {"width": 16, "ff": 32, "heads": 2, "layers": 1},
    "mlp": {"hidden": [16]},
}
ALGOS = ("td3", "sac", "ppo")


def tiny(algo: str, kind: str, **kw) -> TD3Config:
    base = dict(suite="Hopper++", agents=["hopper_3"], policy=kind, net_config=NETS[kind],
                algo=algo, total_steps=120, learning_starts=60, batch_size=16, buffer_size=500,
                n_steps=32, ppo_batch_size=16, n_epochs=2, eval_episodes=1,
                eval_max_steps=15)  # fmt: skip
    return TD3Config(**{**base, **kw})


@pytest.fixture(scope="module")
def trained():
    """trained(algo, kind): one tiny run per pair, shared by the tests of this module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = {}

    def get(algo: str, kind: str):
        if (algo, kind) not in runs:
            runs[algo, kind] = train(tiny(algo, kind), device="cpu")
        return runs[algo, kind]

    yield get
    torch.set_num_threads(threads)


def observations(model) -> torch.Tensor:
    """Env observations the run saw (replay buffer or the last rollout)."""
    buffer = getattr(model, "replay_buffer", None) or model.rollout_buffer
    obs = buffer.observations.reshape(-1, buffer.observations.shape[-1])[:64]
    return torch.as_tensor(obs, dtype=torch.float32)


@pytest.mark.parametrize("kind", sorted(NETS))
@pytest.mark.parametrize("algo", ALGOS)
def test_each_algo_and_kind_trains_evaluates_saves_and_reloads(trained, tmp_path, algo, kind):
    result = trained(algo, kind)
    plan = budget(result.config)
    assert result.run["transitions_done"] == plan["transitions"]
    assert result.run["updates_done"] == plan["updates"] > 0  # gradient steps actually made
    assert set(result.evaluation) == {"hopper_3", "hopper_4b"}
    assert all(np.isfinite(s["return_mean"]) for s in result.evaluation.values())
    assert result.losses and all(np.isfinite(x["critic_loss"]) for x in result.losses)

    save_run(result, str(tmp_path))
    actor = load_actor(str(tmp_path), device="cpu")
    obs = observations(result.model)
    with torch.no_grad():
        loaded = actor(obs).numpy()
    predicted, _ = result.model.predict(obs.numpy(), deterministic=True)
    np.testing.assert_allclose(loaded, predicted, atol=1e-6)
    assert np.abs(loaded).max() <= 1.0


def test_ppo_budget_counts_whole_rollouts_and_minibatch_steps() -> None:
    config = TD3Config(algo="ppo", agents=["hopper_3", "hopper_4"], total_steps=5000)
    plan = budget(config)
    assert plan["rollout"] == 2048 * 2 and plan["transitions"] == 2 * 4096  # whole rollouts
    assert plan["gradient_steps"] == 10 * 64  # 10 epochs of 4096 / 64 minibatches
    assert plan["updates"] == 2 * 640 and plan["learning_starts"] == 0


def test_sac_and_ppo_never_add_noise_on_the_torso_or_padded_rows(trained) -> None:
    for algo in ("sac", "ppo"):
        model = trained(algo, "mlp").model
        obs = observations(model)
        actions, _ = model.predict(obs.numpy(), deterministic=False)
        rows = actions.reshape(len(obs), -1, 3)
        assert np.all(rows[:, 0] == 0.0) and np.all(rows[:, 3:] == 0.0)  # hopper_3: limbs 1, 2
        assert np.all(np.abs(rows[:, 1:3]) > 0.0)


@pytest.mark.parametrize("algo", ["sac", "ppo"])
def test_set_sac_and_ppo_are_rotation_invariant(trained, algo) -> None:
    model = trained(algo, "set").model
    obs = observations(model)
    assert invariance_error(deterministic_net(model.policy), obs, orbit_angles(24)) <= 1e-5
    actions = torch.as_tensor(model.predict(obs.numpy(), deterministic=False)[0])
    for angle in orbit_angles(6)[1:]:
        turned = rotate_flat(obs, angle)
        with torch.no_grad():
            if algo == "ppo":  # log-probabilities and V(s) of the rotated scene are the same
                v0, lp0, ent0 = model.policy.evaluate_actions(obs, actions)
                v1, lp1, ent1 = model.policy.evaluate_actions(turned, actions)
                assert torch.allclose(v0, v1, atol=1e-5) and torch.allclose(ent0, ent1)
            else:
                lp0, lp1 = _sac_log_prob(model, obs, actions), _sac_log_prob(model, turned, actions)
            assert torch.allclose(lp0, lp1, atol=1e-4)


def _sac_log_prob(model, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    mean, log_std, kwargs = model.policy.actor.get_action_dist_params(obs)
    dist = model.policy.actor.action_dist.proba_distribution(mean, log_std, **kwargs)
    return dist.log_prob(actions.clamp(-0.99, 0.99))


def test_sac_mlp_run_learns_its_critic_and_entropy_coefficient(trained) -> None:
    result = trained("sac", "mlp")
    critic = [x["critic_loss"] for x in result.losses]
    assert len(critic) >= 20 and np.all(np.isfinite(critic)) and np.ptp(critic) > 0  # it moves
    coefs = [x["ent_coef"] for x in result.losses]
    assert coefs[0] > coefs[-1] and 0.0 < coefs[-1] < 1.0  # the entropy coefficient is learnt
    assert result.episodes and all(np.isfinite(e["return"]) for e in result.episodes)


def _optimisers(model) -> dict:
    return {name: opt.state_dict()["state"] for name, opt in resume.optimizers(model).items()}


def _assert_same_state(saved_model, model) -> None:
    for key, value in saved_model.policy.state_dict().items():
        assert torch.equal(model.policy.state_dict()[key], value), key
    saved, now = _optimisers(saved_model), _optimisers(model)
    assert saved.keys() == now.keys()
    for name in saved:
        assert saved[name].keys() == now[name].keys() and saved[name], name
        for index in saved[name]:
            for field, value in saved[name][index].items():
                assert torch.equal(now[name][index][field], value), (name, index, field)


def test_sac_resume_carries_counters_buffer_optimisers_and_entropy_coefficient(tmp_path):
    out = tmp_path / "run"
    config = tiny("sac", "mlp", buffer_size=50)
    calls = iter(range(10_000))
    stop = lambda: next(calls) > 90  # noqa: E731  (asked before training, then each step)
    part = train(config, device="cpu", out=out, checkpoint_every=40, stop=stop)
    assert part.interrupted
    tensors, state = resume.read_checkpoint(out)
    assert state["num_timesteps"] == 90 and state["n_updates"] == 90 - 60
    assert set(_optimisers(part.model)) == {"actor", "critic", "ent_coef"}
    assert torch.equal(tensors["sac.log_ent_coef"], part.model.log_ent_coef.detach())

    resumed = train(config, device="cpu", out=out, resume_run=True, stop=lambda: True)
    model = resumed.model
    assert model.num_timesteps == 90 and model._n_updates == 30
    assert torch.equal(model.log_ent_coef, part.model.log_ent_coef)
    buf, live = model.replay_buffer, part.model.replay_buffer
    assert buf.pos == live.pos == 90 % 50 and buf.full
    for name in ("observations", "next_observations", "actions", "rewards", "dones"):
        assert np.array_equal(getattr(buf, name), getattr(live, name)), name
    _assert_same_state(part.model, model)

    done = train(config, device="cpu", out=out, resume_run=True)
    assert not done.interrupted and done.run["transitions_done"] == 120
    assert done.run["updates_done"] == budget(config)["updates"] == 60
    assert set(done.evaluation) == {"hopper_3", "hopper_4b"}


def test_ppo_resume_restarts_the_interrupted_rollout(tmp_path) -> None:
    out = tmp_path / "run"
    config = tiny("ppo", "mlp")
    calls = iter(range(10_000))
    stop = lambda: next(calls) > 80  # noqa: E731  (inside the third rollout of 32 steps)
    part = train(config, device="cpu", out=out, checkpoint_every=1000, stop=stop)
    assert part.interrupted
    _, state = resume.read_checkpoint(out)
    assert state["num_timesteps"] == 64 and state["n_updates"] == 2 * 2  # its start: 2 trained
    assert state["replay_chunks"] == []

    resumed = train(config, device="cpu", out=out, resume_run=True, stop=lambda: True)
    assert resumed.model.num_timesteps == 64
    _assert_same_state(part.model, resumed.model)

    done = train(config, device="cpu", out=out, resume_run=True)
    assert done.run["transitions_done"] == budget(config)["transitions"] == 128
    assert done.run["updates_done"] == budget(config)["updates"] == 4 * 2 * 2


TINY_CLI = ["--suite", "Hopper++", "--agents", "hopper_3", "--policy", "mlp", "--net-config",
            json.dumps(NETS["mlp"]), "--steps", "64", "--eval-episodes", "1",
            "--eval-max-steps", "10", "--device", "cpu"]  # fmt: skip


def test_cli_trains_with_the_chosen_algo(tmp_path, capsys) -> None:
    argv = ["train-online", *TINY_CLI, "--algo", "ppo", "--n-steps", "32", "--batch-size", "16",
            "--n-epochs", "1", "--lr", "1e-3", "--out", str(tmp_path / "ppo")]  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    config = json.loads(stdout.splitlines()[0])
    assert config["algo"] == "ppo" and config["ppo_batch_size"] == 16
    assert config["ppo_learning_rate"] == 1e-3 and config["learning_rate"] == 1e-4
    assert "budget (ppo): 64 transitions" in stdout and "4 updates" in stdout
    assert isinstance(load_actor(str(tmp_path / "ppo")), torch.nn.Module)

    argv = ["train-online", *TINY_CLI, "--algo", "sac", "--learning-starts", "32", "--batch-size",
            "8", "--buffer-size", "100", "--gamma", "0.995",
            "--out", str(tmp_path / "sac")]  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "trained mlp with sac" in stdout
    assert json.loads(stdout.splitlines()[0])["gamma"] == 0.995
    saved = json.loads((tmp_path / "sac" / "config.json").read_text())
    assert saved["td3"]["gamma"] == 0.995


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--algo", "ppo", "--buffer-size", "10"], "--buffer-size: off-policy"),
        (["--algo", "ppo", "--learning-starts", "0", "--max-grad-norm", "1"], "--learning-starts"),
        (["--algo", "sac", "--n-steps", "8"], "--n-steps: flags of --algo ppo"),
        (["--n-epochs", "3"], "not used by --algo td3"),
    ],
)
def test_cli_refuses_flags_the_algo_does_not_use(tmp_path, capsys, extra, message) -> None:
    assert main(["train-online", *TINY_CLI, *extra, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_cli_rejects_a_discount_outside_0_1(tmp_path, capsys) -> None:
    assert main(["train-online", *TINY_CLI, "--gamma", "1.5", "--out", str(tmp_path / "o")]) == 2
    assert "--gamma: expected a number in [0, 1], got '1.5'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_rejects_an_unknown_algo(capsys) -> None:
    assert main(["train-online", "--algo", "a2c", "--out", "x"]) == 2
    assert "invalid choice: 'a2c'" in capsys.readouterr().err
