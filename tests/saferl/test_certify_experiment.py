"""experiments/certify_policies.py runs end to end in its --quick mode."""

from __future__ import annotations

import json


def test_certify_policies_quick(experiment, tmp_path, capsys) -> None:
    assert experiment("certify_policies").main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "certify_policies_quick.json").read_text())
    assert res["missing_online_runs"] == ["set_seed0"]  # reported, not silently skipped
    rows = {(r["policy"], r["method"]): r for r in res["rows"]}
    assert set(rows) == {("mlp", "ibp"), ("mlp", "crown"), ("fisor", "ibp"), ("fisor", "crown")}
    for policy in ("mlp", "fisor"):  # CROWN no looser than IBP on the same states
        assert rows[policy, "crown"]["deviation_max"] <= rows[policy, "ibp"]["deviation_max"]
    assert 0.0 <= rows["fisor", "crown"]["fraction_feasible"] <= 1.0
    for row in res["rows"]:  # sampled perturbed observations stay inside the bounds
        assert row["samples_checked"] > 0 and row["sampled_violations"] == 0
    assert "| fisor |" in out and "| mlp |" in out
    assert (tmp_path / "certify_policies_quick.md").read_text().startswith("| policy |")
