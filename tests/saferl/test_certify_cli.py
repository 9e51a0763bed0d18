"""``saferl certify RUN_DIR`` on fresh tiny runs of ``train-online`` and ``train-offline fisor``:
the figures printed and written, zero radius giving zero deviation, CROWN no looser than IBP,
and bad input refused in one line with exit status 2 before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from saferl.cli import main

PLANAR = "SaferlPlanar-HopperVelocity-v1"
TINY_ONLINE = ["--suite", "Hopper++", "--agents", "hopper_3", "--policy", "mlp", "--steps", "20",
               "--learning-starts", "10", "--batch-size", "8", "--buffer-size", "50",
               "--eval-episodes", "1", "--eval-max-steps", "5", "--device", "cpu"]  # fmt: skip


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny dataset, a FISOR run trained on it (2 steps) and a TD3 + MLP run (20 steps)."""
    from saferl.data import infer_metadata, save_dataset

    root = tmp_path_factory.mktemp("certify")
    rng = np.random.default_rng(0)
    n = 40
    data = {
        "observations": rng.normal(size=(n, 11)).astype(np.float32),
        "next_observations": rng.normal(size=(n, 11)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 3)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "costs": (rng.uniform(size=n) < 0.2).astype(np.float32),
        "terminals": np.zeros(n, np.float32),
        "timeouts": np.zeros(n, np.float32),
    }
    data["timeouts"][[19, 39]] = 1.0
    save_dataset(root / "tiny.hdf5", data, infer_metadata(data, env_id=PLANAR,
                                                          cost_thresholds=[3.0]))  # fmt: skip
    assert main(["train-offline", "fisor", str(root / "tiny.hdf5"), "--out", str(root / "fisor"),
                 "--steps", "2", "--episodes", "0", "--device", "cpu"]) == 0  # fmt: skip
    assert main(["train-online", *TINY_ONLINE, "--out", str(root / "online")]) == 0
    assert main(["train-offline", "bc_all", str(root / "tiny.hdf5"), "--out", str(root / "bc"),
                 "--steps", "3", "--episodes", "0", "--device", "cpu"]) == 0  # fmt: skip
    return {"data": root / "tiny.hdf5", "fisor": root / "fisor", "online": root / "online",
            "bc": root / "bc"}  # fmt: skip


def test_certify_fisor_run_prints_and_writes_feasibility(capsys, runs, tmp_path):
    out = tmp_path / "c.json"
    code, text, err = run(capsys, "certify", runs["fisor"], "--method", "ibp", "--states", "6",
                          "--eps", "0.001", "--out", out, "--check-samples", "4")  # fmt: skip
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["kind"] == "fisor" and res["states"] == 6 and res["candidates"] == 16
    for key in ("fraction_within_delta", "fraction_feasible", "fraction_feasible_set",
                "fraction_feasible_nominal"):  # fmt: skip
        assert 0.0 <= res[key] <= 1.0
    assert res["fraction_feasible"] <= res["fraction_feasible_nominal"]
    assert res["fraction_feasible_set"] <= res["fraction_feasible"]
    assert 0.0 <= res["deviation_mean"] <= res["deviation_max"] <= 2.0
    assert "feasibility" in text and "certified action deviation" in text
    assert res["samples_checked"] == 24 and res["sampled_violations"] == 0
    # zero radius: the bounds collapse onto the nominal action and its Q_h
    code, _, err = run(capsys, "certify", runs["fisor"], "--method", "ibp", "--states", "6",
                       "--eps", "0", "--out", out)  # fmt: skip
    res = json.loads(out.read_text())
    assert code == 0, err
    assert res["deviation_max"] < 1e-4
    assert res["fraction_feasible"] == res["fraction_feasible_nominal"]
    assert res["surviving_candidates_mean"] < 16


def test_certify_fisor_crown_warns_when_expected_slow(capsys, runs, tmp_path, monkeypatch):
    """One warning line on stderr, before the work, when FISOR's CROWN certificate is expected
    to be slow (here: pretending a state costs ~3 h); none for IBP; the run still completes."""
    import saferl.certification as sc

    monkeypatch.setitem(sc.FISOR_CROWN_SECONDS, True, 1e4)
    out = tmp_path / "c.json"
    common = ["--stepwise", "--states", "1", "--eps", "0.001", "--out", out, "--device", "cpu"]
    code, _, err = run(capsys, "certify", runs["fisor"], "--method", "ibp", *common)
    assert code == 0, err
    assert "warning" not in err
    code, _, err = run(capsys, "certify", runs["fisor"], "--method", "crown", *common)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "crown" in warnings[0], err
    res = json.loads(out.read_text())
    assert res["method"] == "crown" and res["stepwise"] and res["states"] == 1


def test_certify_online_run_from_fresh_rollouts(capsys, runs):
    figures = {}
    for method in ("ibp", "crown"):
        code, text, err = run(capsys, "certify", runs["online"], "--method", method, "--states",
                              "12", "--eps", "0.01", "--check-samples", "8")  # fmt: skip
        assert code == 0, err
        figures[method] = json.loads((runs["online"] / "certify.json").read_text())
        assert "fresh rollouts" in text
        assert figures[method]["sampled_violations"] == 0
    assert figures["crown"]["kind"] == "online" and figures["crown"]["policy"] == "mlp"
    assert figures["crown"]["states"] == 12
    assert figures["crown"]["deviation_mean"] <= figures["ibp"]["deviation_mean"] + 1e-6
    assert "fraction_feasible" not in figures["crown"]


def test_certify_bc_run_on_its_dataset(capsys, runs, tmp_path):
    out = tmp_path / "bc.json"
    code, text, err = run(capsys, "certify", runs["bc"], "--states", "10", "--eps", "0.01",
                          "--check-samples", "8", "--out", out)  # fmt: skip
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["kind"] == "bc" and res["states"] == 10 and res["sampled_violations"] == 0
    assert "dataset" in res["source"] and 0.0 <= res["deviation_mean"] <= 2.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}"], "does not exist"),
        (["{fisor}", "--eps", "-0.1"], "--eps"),
        (["{fisor}", "--method", "pgd"], "--method"),
        (["{data}"], "does not exist"),  # a file, not a run folder
        (["{empty}"], "not a saved run"),
        (["{fisor}", "--dataset", "{missing}"], "does not exist"),
        (["{fisor}", "--device", "cuda:99"], "cuda"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, runs, tmp_path, args, message, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "empty").mkdir()
    paths = {**{k: str(v) for k, v in runs.items()}, "missing": str(tmp_path / "nope"),
             "empty": str(tmp_path / "empty")}  # fmt: skip
    argv = [a.format(**paths) for a in args]
    code, out, err = run(capsys, "certify", *argv, "--out", tmp_path / "c.json")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message.lower() in err.lower()
    assert not (tmp_path / "c.json").exists()
