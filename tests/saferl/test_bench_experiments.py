"""The offline experiment scripts run end to end in their --quick mode."""

from __future__ import annotations

import json

import numpy as np


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
