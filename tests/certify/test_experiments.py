"""The certify experiment scripts run end to end in their --quick modes (in-process)."""

from __future__ import annotations

import json
import os

import pytest


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


def test_bench_autolirpa_quick(experiment, tmp_path, capsys) -> None:
    """Side by side with auto_LiRPA (its source folder in AUTO_LIRPA_SRC, or installed)."""
    bench = experiment("bench_autolirpa")
    src = os.environ.get("AUTO_LIRPA_SRC")
    try:
        bench.load_autolirpa(src)
    except bench.AutoLirpaMissing as err:
        pytest.skip(f"needs auto_LiRPA (set AUTO_LIRPA_SRC to its source folder): {err}")
    args = ["--quick", "--out", str(tmp_path)] + (["--autolirpa", src] if src else [])
    assert bench.main(args) == 0
    assert "auto_LiRPA / ours" in capsys.readouterr().out
    res = json.loads((tmp_path / "bench_autolirpa_quick.json").read_text())
    assert {r["method"] for r in res["rows"]} == {"ibp", "crown", "crown-ibp"}
    for r in res["rows"]:
        assert r["width_ratio"] <= 1 + 1e-4, r
        # same relaxations and screen: inside auto_LiRPA's bounds up to rounding (our default
        # CROWN screen is tighter, which can flip an adaptive slope, so it is checked on average)
        assert (r["ibp_screen"] if r["method"] == "crown" else r)["inside"], r
    assert (tmp_path / "bench_autolirpa_quick.md").exists()
