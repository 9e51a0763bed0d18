"""The certify experiment scripts run end to end in their --quick modes (in-process)."""

from __future__ import annotations

import json


def test_bench_bounds_quick(experiment, tmp_path, capsys) -> None:
    assert (
        experiment("bench_bounds").main(["--quick", "--out", str(tmp_path), "--device", "cpu"]) == 0
    )
    out = capsys.readouterr().out
    assert "dense/fast" in out and "IBP/forward" in out
    res = json.loads((tmp_path / "bounds_quick.json").read_text())
    assert res["rows"][0]["max_abs_diff"] <= 1e-5


def test_tightness_quick(experiment, tmp_path, capsys) -> None:
    assert experiment("tightness").main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "width" in out and (tmp_path / "tightness.png").exists()
    res = json.loads((tmp_path / "tightness_quick.json").read_text())
    widths = sorted(res["init"]["width"], key=int)
    assert res["init"]["width"][widths[0]] > res["init"]["width"][widths[-1]]
