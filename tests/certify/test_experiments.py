"""The certify experiment scripts run end to end in their --quick modes (in-process)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_bench_bounds_quick(tmp_path, capsys) -> None:
    assert _load("bench_bounds").main(["--quick", "--out", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "dense/fast" in out and "IBP/forward" in out
    res = json.loads((tmp_path / "bounds_quick.json").read_text())
    assert res["rows"][0]["max_abs_diff"] <= 1e-5


def test_tightness_quick(tmp_path, capsys) -> None:
    assert _load("tightness").main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "width" in out and (tmp_path / "tightness.png").exists()
    res = json.loads((tmp_path / "tightness_quick.json").read_text())
    widths = sorted(res["init"]["width"], key=int)
    assert res["init"]["width"][widths[0]] > res["init"]["width"][widths[-1]]
