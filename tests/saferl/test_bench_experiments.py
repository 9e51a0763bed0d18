"""The offline experiment scripts run end to end in their --quick mode."""

from __future__ import annotations


def test_fisor_throughput_quick(experiment, tmp_path):
    table = experiment("fisor_throughput").main(
        ["--quick", "--device", "cpu", "--out", str(tmp_path)]
    )
    assert "| quick (width 32, actor 2×16) |" in table
    assert (tmp_path / "fisor_throughput_cpu_quick.md").exists()
    assert (tmp_path / "fisor_throughput_cpu_quick.png").exists()


def test_bench_offline_quick_and_merge(experiment, tmp_path):
    bench = experiment("bench_offline")
    bench.main(["--quick", "--out", str(tmp_path), "--rows-only", "--prefix", "p1"])
    report = bench.main(["--merge", str(tmp_path / "p1_rows.json"), "--out", str(tmp_path),
                         "--prefix", "m"])  # fmt: skip
    assert "| quick-hopper |" in report and "FISOR's published results" in report
    assert "Budget: FISOR 5 steps" in report and "Methods bc_all, bc_safe" in report
    assert (tmp_path / "m_scatter.png").exists()
