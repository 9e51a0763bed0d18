"""The SET experiment scripts run end to end in their --quick mode."""

from __future__ import annotations


def test_set_suite_quick(experiment, tmp_path, capsys) -> None:
    assert experiment("set_suite").main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for kind in ("set", "transformer", "mlp"):
        assert f"| {kind} |" in out
        assert (tmp_path / f"{kind}_seed0" / "model.safetensors").exists()
    assert "hopper_4b" in out
    assert (tmp_path / "set_suite_curves.png").stat().st_size > 0


def test_set_throughput_quick(experiment, capsys) -> None:
    assert experiment("set_throughput").main(["--quick", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "| set |" in out and "SET/MLP time ratio" in out


def test_set_audit_quick(experiment, tmp_path, capsys) -> None:
    out_png = tmp_path / "audit.png"
    assert experiment("set_audit").main(["--quick", "--out", str(out_png)]) == 0
    out = capsys.readouterr().out
    assert out_png.exists() and (tmp_path / "audit_return.png").exists()
    line = next(row for row in out.splitlines() if row.startswith("| set"))
    assert float(line.split("|")[2]) <= 1e-5  # SET's action orbit is flat
