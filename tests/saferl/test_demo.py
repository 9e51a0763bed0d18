"""The main job, ``saferl demo``, runs every stage end to end at its quick budget."""

from __future__ import annotations

import pytest

from saferl.cli import main
from saferl.demo import STAGES, DemoConfig, run_demo


def test_demo_quick_runs_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    results = run_demo(DemoConfig(env_id="Saferl3D-Hopper3-v0", episodes=1, quick=True))
    assert list(results) == [s.name for s in STAGES]
    assert results["rollout"]["episodes"][0]["length"] >= 1
    # float32 rounding only (grows with the weights); tests/saferl/test_set_equivariance.py
    # checks the 1e-5 bound on random and trained policies
    assert results["train"]["rotation_invariance_error"] <= 5e-5
    # a learning signal a person can read: episodes last (a hopper under zero torques stands
    # ~250 steps; random ones fall in ~40), the TD loss moves, the curve has start/middle/end
    train = results["train"]
    assert train["mean_episode_length"] >= 10 and train["updates"] > 0
    assert train["training_loss_first"] != train["training_loss_last"]
    assert [step for step, _, _ in train["curve"]] == [0, 100, 200, 300, 400]
    assert {"reward", "cost", "safe"} <= set(results["offline"]["scores"][0])
    cert = results["certify"]
    # the policies the demo trained: the SET actor and FISOR's own diffusion policy
    assert cert["set"]["policy"] == "set" and cert["fisor"]["kind"] == "fisor"
    assert cert["set"]["states"] == 16 and cert["fisor"]["candidates"] == 16
    for figures in cert.values():
        assert 0.0 <= figures["fraction_within_delta"] <= 1.0
        assert 0.0 <= figures["deviation_mean"] <= figures["deviation_max"] <= 2.0
    # certified feasibility is a sound subset of nominal feasibility
    assert cert["fisor"]["fraction_feasible"] <= cert["fisor"]["fraction_feasible_nominal"]
    out = capsys.readouterr().out
    assert all(f"[{s.name}] done" in out for s in STAGES)


def test_demo_cli_rollout_stage_and_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--quick", "--stages", "rollout", "--episodes", "1"]) == 0
    assert "episode 0: return" in capsys.readouterr().out
    with pytest.raises(KeyError, match="unknown env id"):
        run_demo(DemoConfig(env_id="Saferl3D-Nope-v0", quick=True))
    with pytest.raises(ValueError, match="unknown demo stage"):
        run_demo(DemoConfig(stages=("dance",), quick=True))


def test_envs_command_lists_ids_with_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["envs", "--filter", "Hopper3"]) == 0
    out = capsys.readouterr().out
    assert "Saferl3D-Hopper3-v0" in out and "728" in out
