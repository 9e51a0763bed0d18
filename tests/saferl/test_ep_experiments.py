"""The EP experiment scripts' --quick modes, the ``saferl ep`` command and checkpoints."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from saferl.data import unsafe_within
from saferl.ep import EPNetConfig, EPNetwork
from saferl.ep.checkpoint import load_network, save_network

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matmuls: one thread avoids OpenMP spinning on a shared CPU (restored afterwards)."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_cauchy_bias_quick(tmp_path):
    summary = load("ep_cauchy_bias").main(["--quick", "--out", str(tmp_path)])
    assert (
        summary["0.5/4"]["rel_error"]
        < summary["0.5/2"]["rel_error"]
        < summary["0.5/1"]["rel_error"]
    )
    assert summary["0.05/2"]["rel_error"] < summary["0.5/2"]["rel_error"]
    assert (tmp_path / "ep_cauchy_bias_quick.png").is_file()


def test_alignment_quick(tmp_path):
    rows = load("ep_alignment").main(["--quick", "--out", str(tmp_path)])
    by_angle = {r["angle"]: r for r in rows}
    assert by_angle[0.0]["init"]["cos_exact"] > 0.99
    assert by_angle[90.0]["init"]["cos_exact"] < 0.5
    assert (tmp_path / "ep_alignment_quick.png").is_file()
    saved = json.loads((tmp_path / "ep_alignment_quick.json").read_text())
    assert len(saved["rows"]) == 2


def test_accuracy_quick(tmp_path):
    rows = load("ep_accuracy").main(["--quick", "--out", str(tmp_path), "--dataset", "digits"])
    methods = {r["method"] for r in rows}
    assert {"BP (RBP)", "hEP N=2", "hEP N=2 + homeostasis"} <= methods
    assert all(0.0 <= r["acc_mean"] <= 1.0 and r["evaluated"] == 360 for r in rows)
    assert (tmp_path / "ep_accuracy_quick.png").is_file()


def test_throughput_quick(tmp_path):
    rows = load("ep_throughput").main(["--quick", "--out", str(tmp_path)])
    assert rows["BP (RBP)"]["ratio_vs_bp_cpu"] == pytest.approx(1.0)
    assert all(r["samples_per_s_cpu"] > 0 for r in rows.values())


def test_cli_trains_and_saves(tmp_path):
    from saferl.cli import main

    out = tmp_path / "ckpt"
    args = ["ep", "--epochs", "1", "--hidden", "8", "--t1", "10", "--t2", "3", "--device", "cpu"]
    assert main([*args, "--out", str(out)]) == 0
    net = load_network(out)
    assert net.config.hidden == (8,)
    assert json.loads((out / "config.json").read_text())["final"]["epoch"] == 1


def test_checkpoint_round_trip_and_bad_folder(tmp_path):
    net = EPNetwork(EPNetConfig(in_dim=5, hidden=(4,), n_classes=3, angle_deg=30), device="cpu")
    save_network(net, tmp_path / "n")
    back = load_network(tmp_path / "n")
    for a, b in zip(net.state_dict().values(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_network(tmp_path / "missing")


def test_unsafe_within_labels_respect_episodes():
    import numpy as np

    costs = np.array([0, 0, 1, 0, 0, 1, 0], dtype=float)
    episodes = np.array([0, 0, 0, 1, 1, 1, 1])
    assert unsafe_within(costs, episodes, 2).tolist() == [0, 1, 1, 0, 1, 1, 0]
    assert unsafe_within(costs, episodes, 1).tolist() == [0, 0, 1, 0, 0, 1, 0]
    with pytest.raises(ValueError, match="k"):
        unsafe_within(costs, episodes, 0)


def test_safety_split_from_rollouts():
    from saferl.ep import load_safety_split

    s = load_safety_split(n_steps=300, horizon=3, seed=0)
    assert s.n_classes == 2 and s.x_train.shape[1] == s.x_test.shape[1]
    assert set(s.y_train.unique().tolist()) <= {0, 1}
    assert len(s.x_train) + len(s.x_test) == 300
    assert torch.isfinite(s.x_train).all()
    torch.testing.assert_close(
        s.x_train.double().mean(0),
        torch.zeros(s.x_train.shape[1], dtype=torch.float64),
        atol=1e-4,
        rtol=0,
    )
    with pytest.raises(ValueError, match="test_fraction"):
        load_safety_split(n_steps=10, test_fraction=1.5)
