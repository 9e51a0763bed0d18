"""The conformal/COLEP experiment scripts run end to end in their --quick mode."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).parents[2] / "experiments"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_conformal_split_quick(tmp_path):
    assert _load("conformal_split").main(["--quick", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "conformal_split.md").read_text()
    assert "digits LAC" in table and "diabetes cqr" in table
    # the broken calibration is flagged, the correct ones pass
    assert "broken (no n+1) | 10 |" in table and "**FLAGGED**" in table
    assert table.count("| pass |") >= 4
    assert (tmp_path / "conformal_split.png").stat().st_size > 1000


@pytest.mark.parametrize("name", ["colep_digits", "colep_hopper"])
def test_colep_quick(tmp_path, name):
    assert _load(name).main(["--quick", "--out", str(tmp_path)]) == 0
    table = (tmp_path / f"{name}.md").read_text()
    assert "robust CP (single model, CROWN margins)" in table and "COLEP-union (certified" in table
    assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_conformal_smoothing_quick(tmp_path):
    assert _load("conformal_smoothing").main(["--quick", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "conformal_smoothing.md").read_text()
    assert "RSCP+ (single model)" in table and "COLEP-union (smoothed sensors)" in table
