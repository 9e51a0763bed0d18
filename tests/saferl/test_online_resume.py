"""Resumable ``saferl train-online``: checkpoints carry the step counter, the replay buffer and
the optimiser state; ``--resume`` continues to the same budget; a SIGTERM writes a checkpoint
and the run resumes to completion; a run without ``--out`` is refused; the default update-to-data
ratio is one update per transition."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from saferl.cli import main
from saferl.online import resume
from saferl.online.td3 import TD3Config, budget, train

NET = {"hidden": [16]}
TINY = ["--suite", "Hopper++", "--agents", "hopper_3", "--policy", "mlp",
        "--net-config", json.dumps(NET), "--batch-size", "16", "--eval-episodes", "1",
        "--eval-max-steps", "10", "--buffer-size", "100", "--device", "cpu"]  # fmt: skip


def tiny_config(**kw) -> TD3Config:
    base = dict(suite="Hopper++", agents=["hopper_3", "hopper_4"], policy="mlp", net_config=NET,
                total_steps=120, learning_starts=30, batch_size=16, buffer_size=60,
                eval_episodes=1, eval_max_steps=10)  # fmt: skip
    return TD3Config(**{**base, **kw})


def test_default_update_to_data_ratio_is_one_update_per_transition() -> None:
    config = TD3Config()  # the reference: Hopper++'s training agents, 5,000 warm-up each
    plan = budget(config)
    assert plan["update_to_data"] == 1.0 and plan["gradient_steps"] == plan["envs"] > 1
    assert plan["learning_starts"] == 5_000 * plan["envs"]
    assert config.learning_rate == 1e-4 and config.batch_size == 256 and config.tau == 0.005
    result = train(tiny_config(), device="cpu")
    done = result.run
    assert done["updates_done"] == result.model._n_updates == 120 - 30  # after the warm-up
    assert done["updates_done"] / (done["transitions_done"] - 30) == 1.0
    assert done["update_to_data"] == 1.0


def _optim(model, which: str) -> dict:
    return getattr(model, which).optimizer.state_dict()["state"]


def test_resume_carries_counters_buffer_and_optimiser_state(tmp_path) -> None:
    out = tmp_path / "run"
    calls = iter(range(10_000))
    # stop() is asked once before training, then before each vector step: stop at 80 transitions
    stop = lambda: next(calls) > 40  # noqa: E731
    part = train(tiny_config(), device="cpu", out=out, checkpoint_every=20, stop=stop)
    assert part.interrupted and part.evaluation == {}
    tensors, state = resume.read_checkpoint(out)
    assert state["num_timesteps"] == 80 and state["rows"] == 40
    assert state["n_updates"] == part.run["updates_done"] == 80 - 30

    # what was saved equals the live model at the checkpoint (optimiser tensors, weights)
    for which in ("actor", "critic"):
        for index, fields in _optim(part.model, which).items():
            for name, value in fields.items():
                assert torch.equal(tensors[f"optim.{which}.{index}.{name}"], value)

    # a model restored from the checkpoint (and stopped before its first step) holds the same
    # buffer, counters and optimiser state
    resumed = train(tiny_config(), device="cpu", out=out, resume_run=True, stop=lambda: True)
    assert resumed.interrupted and resumed.run["transitions_done"] == 80
    model = resumed.model
    assert model.num_timesteps == 80 and model._n_updates == 50
    buf, live = model.replay_buffer, part.model.replay_buffer
    assert buf.pos == 40 % 30 and buf.full and buf.buffer_size == 30
    for name in ("observations", "next_observations", "actions", "rewards", "dones"):
        assert np.array_equal(getattr(buf, name), getattr(live, name)), name
    for which in ("actor", "critic"):
        saved, now = _optim(part.model, which), _optim(model, which)
        assert saved.keys() == now.keys()
        for index in saved:
            for name in saved[index]:
                assert torch.equal(saved[index][name], now[index][name])
    for key, value in part.model.policy.state_dict().items():
        assert torch.equal(model.policy.state_dict()[key], value), key
    assert [e["step"] for e in resumed.episodes] == [e["step"] for e in part.episodes
                                                     if e["step"] <= 80]  # fmt: skip


def test_resume_refuses_another_config(tmp_path) -> None:
    out = tmp_path / "run"
    train(tiny_config(total_steps=40), device="cpu", out=out, checkpoint_every=20)
    with pytest.raises(ValueError, match="batch_size"):
        train(tiny_config(total_steps=40, batch_size=8), device="cpu", out=out, resume_run=True)


def test_cli_resume_continues_the_learning_curve_to_the_same_budget(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train-online", *TINY, "--steps", "120", "--learning-starts", "30", "--out", out]
    # a first session stopped by the checkpointer's stop flag (as SIGTERM would)
    config = TD3Config(suite="Hopper++", agents=["hopper_3"], policy="mlp", net_config=NET,
                       total_steps=120, learning_starts=30, batch_size=16, buffer_size=100,
                       eval_episodes=1, eval_max_steps=10)  # fmt: skip
    calls = iter(range(10_000))
    train(config, device="cpu", out=out, checkpoint_every=50, stop=lambda: next(calls) > 70)
    assert resume.read_run_state(out)["num_timesteps"] == 70
    # a fresh run into the same folder is refused: it would start the run again
    code = main([str(a) for a in argv])
    assert code == 2 and "--resume" in capsys.readouterr().err
    # --resume takes the saved settings and refuses others (the budget may grow, not shrink)
    assert main(["train-online", "--resume", str(out), "--batch-size", "8"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert main(["train-online", "--resume", str(out), "--steps", "60"]) == 2
    assert "at least that" in capsys.readouterr().err
    threads = torch.get_num_threads()
    assert main(["train-online", "--resume", str(out), "--device", "cpu", "--threads", "1"]) == 0
    assert torch.get_num_threads() == threads  # --threads holds for the run only
    stdout = capsys.readouterr().out
    assert "120 transitions" in stdout and "update per transition" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["transitions_done"] == 120 and metrics["run"]["updates_done"] == 90
    steps = [e["step"] for e in metrics["episodes"]]
    assert steps == sorted(steps) and steps[0] < 70 < steps[-1]  # one curve across sessions
    assert (out / "model.safetensors").exists()
    # a finished run trains longer with a larger budget: counters and the curve continue
    argv = ["train-online", "--resume", str(out), "--steps", "180", "--eval-every", "60"]
    assert main([*argv, "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["transitions_done"] == 180 and metrics["run"]["updates_done"] == 150
    assert [e["step"] for e in metrics["episodes"]][: len(steps)] == steps
    assert sorted({r["step"] for r in metrics["curve"]}) == [120, 180]


def test_train_online_refuses_zero_threads(tmp_path, capsys) -> None:
    code = main(["train-online", *TINY, "--threads", "0", "--out", str(tmp_path / "o")])
    assert code == 2 and "--threads" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_train_online_without_out_is_refused(capsys) -> None:
    code = main(["train-online", *TINY, "--steps", "20", "--learning-starts", "10"])
    err = capsys.readouterr().err
    assert code == 2 and "--out" in err


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def test_sigterm_writes_a_checkpoint_and_the_run_resumes_to_completion(tmp_path) -> None:
    out = tmp_path / "run"
    steps = 200_000  # far more than the test waits for
    argv = [sys.executable, "-m", "saferl.cli", "train-online", *TINY, "--steps", str(steps),
            "--learning-starts", "20", "--checkpoint-every", "50", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    try:
        _wait_for(out / "checkpoints" / "latest", proc, timeout=120)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, stderr
    assert f"resume with: saferl train-online --resume {out}" in stdout
    state = resume.read_run_state(out)
    stopped = state["num_timesteps"]
    assert 50 <= stopped < steps and state["td3"]["total_steps"] == steps
    # shorten the remaining budget only for the test: the saved config is the run's settings
    config_path = resume.latest_checkpoint(out) / "config.json"
    saved = json.loads(config_path.read_text())
    saved["td3"]["total_steps"] = stopped + 30
    config_path.write_text(json.dumps(saved))
    code = subprocess.run([sys.executable, "-m", "saferl.cli", "train-online", "--resume",
                           str(out), "--device", "cpu"], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert code.returncode == 0, code.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["transitions_done"] == stopped + 30
    assert resume.read_run_state(out)["num_timesteps"] == stopped + 30


def test_periodic_evaluation_leaves_training_unchanged_and_resumes_with_the_curve(tmp_path):
    """Evaluating every 40 transitions gives curve rows at 0, 40, 80 and the end (120), with
    episode length and target velocity; the training run (episodes, weights) is the same as
    without it; a run stopped at 80 and resumed ends with the same curve."""
    plain = train(tiny_config(), device="cpu")
    watched = train(tiny_config(eval_every=40), device="cpu")
    assert watched.episodes == plain.episodes
    for key, value in plain.model.policy.state_dict().items():
        assert torch.equal(watched.model.policy.state_dict()[key], value), key
    steps = sorted({row["step"] for row in watched.curve})
    assert steps == [0, 40, 80, 120]
    assert {row["agent"] for row in watched.curve} == {"hopper_3", "hopper_4", "hopper_4b"}
    for row in watched.curve:
        assert row["length_mean"] >= 1 and np.isfinite(row["target_velocity"])
    final = {r["agent"]: r["return_mean"] for r in watched.curve if r["step"] == 120}
    assert {a: s["return_mean"] for a, s in watched.evaluation.items()} == final

    out = tmp_path / "run"
    calls = iter(range(10_000))
    part = train(tiny_config(eval_every=40), device="cpu", out=out, checkpoint_every=20,
                 stop=lambda: next(calls) > 40)  # fmt: skip
    assert part.interrupted and sorted({r["step"] for r in part.curve}) == [0, 40, 80]
    rest = train(tiny_config(eval_every=40), device="cpu", out=out, resume_run=True)
    assert sorted({r["step"] for r in rest.curve}) == [0, 40, 80, 120]
    assert [r for r in rest.curve if r["step"] <= 80] == [r for r in watched.curve
                                                          if r["step"] <= 80]  # fmt: skip
