"""The SET experiment scripts run end to end in their --quick mode."""

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


def test_set_suite_quick(tmp_path, capsys) -> None:
    assert load("set_suite").main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for kind in ("set", "transformer", "mlp"):
        assert f"| {kind} |" in out
        assert (tmp_path / f"{kind}_seed0" / "model.zip").exists()
    assert "hopper_4b" in out
    assert (tmp_path / "set_suite_curves.png").stat().st_size > 0


def test_set_throughput_quick(capsys) -> None:
    assert load("set_throughput").main(["--quick", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "| set |" in out and "SET/MLP time ratio" in out


def test_set_audit_quick(tmp_path, capsys) -> None:
    out_png = tmp_path / "audit.png"
    assert load("set_audit").main(["--quick", "--out", str(out_png)]) == 0
    out = capsys.readouterr().out
    assert out_png.exists() and (tmp_path / "audit_return.png").exists()
    line = next(row for row in out.splitlines() if row.startswith("| set"))
    assert float(line.split("|")[2]) <= 1e-5  # SET's action orbit is flat
