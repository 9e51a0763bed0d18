"""The offline experiment scripts run end to end in their --quick mode."""

from __future__ import annotations

import json

import numpy as np
import pytest


def test_fisor_throughput_quick(experiment, tmp_path):
    table = experiment("fisor_throughput").main(
        ["--quick", "--device", "cpu", "--out", str(tmp_path)]
    )
    assert "| quick (width 32, actor 2×16) |" in table
    assert (tmp_path / "fisor_throughput_cpu_quick.md").exists()
    assert (tmp_path / "fisor_throughput_cpu_quick.png").exists()


def test_bench_offline_quick_and_resume(experiment, tmp_path):
    bench = experiment("bench_offline")
    report = bench.main(["--quick", "--out", str(tmp_path), "--prefix", "q"])
    assert "| quick-hopper |" in report and "FISOR's published results" in report
    assert "Budget: FISOR 5 steps" in report and "Methods bc_all, bc_safe" in report
    assert "(0 were already done)" in report
    assert (tmp_path / "q_scatter.png").exists()
    summary = json.loads((tmp_path / "q_summary.json").read_text())
    fisor = next(r for r in summary if r["method"] == "fisor")
    assert fisor["task"] == "quick-hopper" and fisor["seeds"] == [0] and fisor["iterations"] == 5
    assert fisor["thresholds"] == [2.0, 5.0]
    assert {r["method"] for r in summary} == {"bc_all", "bc_safe", "bcq_lag", "cpq", "fisor"}
    assert all(np.isfinite([r["normalized_reward"], r["normalized_cost"]]).all() for r in summary)
    again = bench.main(["--quick", "--out", str(tmp_path), "--prefix", "q"])  # resumes: no work
    assert "for the 0 cells run now" in again
    assert again.split("\n\n", 1)[1] == report.split("\n\n", 1)[1]  # the same table


def test_bench_grid_quick(experiment):
    result = experiment("bench_grid").main(["--quick"])
    assert result["same_rows"] and result["speedup_median"] > 0 and result["ray_init_seconds"] > 0


def test_fisor_weights_runs_and_resumes(experiment, tmp_path):
    from saferl.data import save_dataset
    from saferl.offline import random_rollouts

    data, meta = random_rollouts(transitions=300, max_steps=30, seed=0)
    meta.cost_thresholds = [2.0, 5.0]
    path = tmp_path / "tiny.hdf5"
    save_dataset(path, data, meta)
    script = experiment("fisor_weights")
    args = ["--data", str(path), "--steps", "3", "--episodes", "2", "--out", str(tmp_path),
            "--variants", "batch 2x128", "uniform 2x128"]  # fmt: skip
    text = script.main(args)
    rows = json.loads((tmp_path / "fisor_weights.json").read_text())["rows"]
    assert {r["variant"] for r in rows} == {"batch 2x128", "uniform 2x128"}
    assert len(rows) == 4 and {r["threshold"] for r in rows} == {2.0, 5.0}
    uniform = next(r for r in rows if r["variant"] == "uniform 2x128")
    # every weight 0 or 1: the batch's ESS is its count of nonzero weights, at most its size
    assert uniform["update_batch"] == 128 and 0 < uniform["ess_median"] <= 128
    assert uniform["mean_weight"] <= 1.0 and uniform["at_clip"] == 0.0
    assert "| uniform 2x128 | 1 | 128 |" in text
    assert script.main(args) == text  # finished cells are reused
    for r in rows:  # every evaluation episode ended by a fall or at the time limit
        assert r["falls"] + r["full_length"] == 2 and r["advantage_sd"] >= 0


def test_fisor_weights_feasibility_probe(experiment):
    """V_h before a fall is the mean over the last 5 states of falling episodes only."""
    import torch

    script = experiment("fisor_weights")

    class Nets:  # V_r = 0, V_h = the first observation coordinate
        def value(self, obs):
            return torch.stack([torch.zeros(len(obs)), obs[:, 0]])

    agent = type("Agent", (), {"nets": Nets()})()

    def episode(v_h, terminal):
        n = len(v_h)
        obs = np.zeros((n, 2), np.float32)
        obs[:, 0] = v_h
        ends = np.zeros(n, bool)
        ends[-1] = True
        return {"observations": obs, "terminals": ends & terminal, "timeouts": ends & ~terminal}

    fall = episode([-9.0] * 5 + [1.0, 2.0, 3.0, 4.0, 5.0], True)
    full = episode([-1.0, -3.0], False)
    probe = script.feasibility_probe(agent, [fall, full, fall])
    assert probe["v_h_before_fall"] == pytest.approx(3.0)
    assert probe["v_h_full_length"] == pytest.approx(-2.0)
    assert (probe["falls"], probe["full_length"]) == (2, 1)
    assert np.isnan(script.feasibility_probe(agent, [fall])["v_h_full_length"])
