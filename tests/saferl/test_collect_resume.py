"""Resumable collection: a stopped or killed collection continues from its newest checkpoint
(learner, normalisers, Lagrangian, rollouts so far) to the same budget; other settings are
refused; ``saferl collect`` turns a SIGTERM into a checkpoint and exit status 75."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from saferl.data import load_dataset
from saferl.data.collection import (
    KIND,
    ROLLOUTS,
    CollectConfig,
    CollectionInterrupted,
    check_resumable,
    collect,
    work_folder,
)
from saferl.online import resume

PLANAR = "SaferlPlanar-HopperVelocity-v1"
LEARNERS = {
    "sac": {"learning_starts": 40, "buffer_size": 1000, "batch_size": 32},
    "ppo": {"n_steps": 50, "batch_size": 50, "n_epochs": 2},
}
STOP_AFTER = {"sac": 80, "ppo": 1}
"""Rollout starts before the stop: SAC starts one per vector step (2 transitions), PPO one per
rollout of 100, so both stop between the first and second behaviour checkpoints."""


def tiny(algo: str, **overrides) -> CollectConfig:
    settings = {"total_timesteps": 400, "n_envs": 2, "num_checkpoints": 4,
                "episodes_per_mode": 1, "seed": 2, "verbose": 0, "algo": algo,
                "learner_kwargs": LEARNERS[algo], **overrides}  # fmt: skip
    return CollectConfig.for_task(PLANAR, 20, **settings)


@pytest.mark.parametrize("algo", ["sac", "ppo"])
def test_a_stopped_collection_resumes_to_the_same_budget(tmp_path, algo) -> None:
    torch.set_num_threads(1)
    work = tmp_path / "work"
    calls = iter(range(10_000))
    with pytest.raises(CollectionInterrupted, match="stopped at"):
        collect(tiny(algo), work=work, checkpoint_every=100,
                stop=lambda: next(calls) > STOP_AFTER[algo])  # fmt: skip
    state = resume.read_run_state(work, KIND)
    stopped_at = state["num_timesteps"]
    assert 0 < stopped_at < 400
    done = state["next_checkpoint"]  # behaviour checkpoints rolled out before the stop
    assert done >= 1 and (work / ROLLOUTS / f"{done:04d}.npz").exists()
    if algo == "sac":  # the replay rows up to the stop are on disk
        assert state["rows"] == stopped_at // 2 and state["replay_chunks"]
    history = state["history"]

    result = collect(tiny(algo), work=work, checkpoint_every=100)
    # every behaviour checkpoint rolled out exactly once: 3 modes x 1 episode each
    np.testing.assert_array_equal(np.bincount(result.checkpoint), [3, 3, 3, 3])
    steps = [h["step"] for h in result.training_log]
    assert result.training_log[: len(history)] == history  # one training log across sittings
    assert steps == sorted(steps) and steps[-1] > stopped_at
    assert resume.read_run_state(work, KIND)["num_timesteps"] == 400
    assert result.seconds > 0


def test_resuming_with_other_settings_is_refused(tmp_path) -> None:
    work = tmp_path / "work"
    calls = iter(range(10_000))
    with pytest.raises(CollectionInterrupted):
        collect(tiny("ppo"), work=work, checkpoint_every=100, stop=lambda: next(calls) > 1)
    with pytest.raises(ValueError, match="other settings .*total_timesteps"):
        check_resumable(tiny("ppo", total_timesteps=800), work)
    with pytest.raises(ValueError, match="seed"):
        collect(tiny("ppo", seed=3), work=work)
    with pytest.raises(ValueError, match="checkpoint_every"):
        collect(tiny("ppo"), work=work, checkpoint_every=0)


def test_cli_sigterm_checkpoints_and_a_rerun_finishes(tmp_path) -> None:
    out = tmp_path / "hopper.hdf5"
    argv = [sys.executable, "-m", "saferl.cli", "collect", PLANAR, "--out", str(out),
            "--algo", "sac", "--steps", "2000", "--max-episode-steps", "20", "--checkpoints",
            "2", "--episodes", "1", "--checkpoint-every", "200", "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    work = work_folder(out)
    latest = resume.checkpoint_root(work) / resume.LATEST
    deadline = time.monotonic() + 240
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()  # the first checkpoint is at step 0
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 75, err
    assert "run the same command again to resume" in err
    steps = resume.read_run_state(work, KIND)["num_timesteps"]
    assert 0 <= steps < 2000 and not out.exists()
    # the same command resumes there, finishes, writes the dataset and drops the work folder
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    data, meta = load_dataset(out)
    assert meta.num_trajectories >= 1 and len(data["rewards"]) > 0
    assert not work.exists()


def test_a_stop_before_a_task_starts_is_logged_as_resumable(tmp_path) -> None:
    from saferl.data.collection import STOP, run_collect

    lines: list[str] = []
    STOP.set()
    try:
        jobs = [(tiny("ppo"), tmp_path / "d.hdf5")]
        grid = run_collect(jobs, tmp_path / "grid", log=lines.append)
    finally:
        STOP.clear()
    assert list(grid.failed) == [PLANAR] and "CollectionInterrupted" in grid.failed[PLANAR]
    assert any("stopped (resumable)" in line for line in lines)
    assert not any("FAILED" in line for line in lines)
