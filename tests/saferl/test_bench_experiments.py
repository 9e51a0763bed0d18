"""The offline experiment scripts run end to end in their --quick mode."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_fisor_throughput_quick(tmp_path):
    table = load("fisor_throughput").main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    assert "| quick (width 32, actor 2×16) |" in table
    assert (tmp_path / "fisor_throughput_cpu_quick.md").exists()
    assert (tmp_path / "fisor_throughput_cpu_quick.png").exists()


def test_bench_offline_quick_and_merge(tmp_path):
    bench = load("bench_offline")
    bench.main(["--quick", "--out", str(tmp_path), "--rows-only", "--prefix", "p1"])
    report = bench.main(["--merge", str(tmp_path / "p1_rows.json"), "--out", str(tmp_path),
                         "--prefix", "m"])  # fmt: skip
    assert "| quick-hopper |" in report and "FISOR's published results" in report
    assert "Budget: FISOR 5 iterations" in report and "Methods bc_all, bc_safe" in report
    assert (tmp_path / "m_scatter.png").exists()
