"""Trainer: learning, determinism, residual reporting, and spec sanity check 5."""

from __future__ import annotations

import pytest

from saferl.ep import EPNetConfig, EPTrainer, EPTrainerConfig, load_digits_split


@pytest.fixture(scope="module")
def digits():
    return load_digits_split(seed=0)


def run(digits, method: str, angle: float, n_train: int, epochs: int, hidden=(32,), **kw):
    net_cfg = EPNetConfig(in_dim=64, hidden=hidden, n_classes=10, angle_deg=angle)
    cfg = EPTrainerConfig(
        method=method, n_points=2, beta=0.5, epochs=epochs, lr=0.2, t1=40, t2=10, rbp_steps=40, **kw
    )
    trainer = EPTrainer(net_cfg, cfg, device="cpu")
    logs = trainer.fit(
        digits.x_train[:n_train], digits.y_train[:n_train], digits.x_test, digits.y_test
    )
    return trainer, logs


def test_ep_learns_and_reports_fixed_point_statistics(digits):
    net_cfg = EPNetConfig(in_dim=64, hidden=(32,), n_classes=10, angle_deg=0.0)
    cfg = EPTrainerConfig(epochs=2, lr=0.2, t1=40, t2=10, homeostasis=1.0)
    trainer = EPTrainer(net_cfg, cfg, device="cpu")
    before = trainer.evaluate(digits.x_test, digits.y_test)["acc"]
    logs = trainer.fit(digits.x_train[:500], digits.y_train[:500], digits.x_test, digits.y_test)
    assert len(logs) == 2
    assert logs[-1].test_acc > before + 0.1, (before, logs[-1].test_acc)
    r = logs[-1].residual
    assert set(r) >= {"log10_residual_median", "n_not_converged", "n_oscillating", "n_samples"}
    assert r["n_samples"] == len(digits.y_test)
    assert logs[-1].homeostasis > 0


def test_two_seeded_runs_match_exactly(digits):
    _, a = run(digits, "ep", 90.0, 100, 1, homeostasis=0.5)
    _, b = run(digits, "ep", 90.0, 100, 1, homeostasis=0.5)
    assert a[0].test_acc == b[0].test_acc and a[0].train_loss == b[0].train_loss


def test_check5_gap_to_bp_grows_with_asymmetry_fast(digits):
    """Spec check 5 (fast): EP's accuracy gap to BP on the same network is larger at 180 degrees
    (B = -W^T) than at 0 degrees (B = W^T). 600 digits, 3 epochs, seed 0."""
    gaps = {}
    for angle in (0.0, 180.0):
        _, bp = run(digits, "bp", angle, 600, 3)
        _, ep = run(digits, "ep", angle, 600, 3)
        gaps[angle] = bp[-1].test_acc - ep[-1].test_acc
    assert gaps[180.0] > gaps[0.0] + 0.1, gaps


@pytest.mark.slow
def test_check5_gap_to_bp_grows_with_asymmetry_full(digits):
    """Spec check 5 (slow): gap at 0 < 90 < 180 degrees on all digits, 8 epochs, two layers."""
    gaps = {}
    for angle in (0.0, 90.0, 180.0):
        _, bp = run(digits, "bp", angle, 10_000, 8, hidden=(32, 32))
        _, ep = run(digits, "ep", angle, 10_000, 8, hidden=(32, 32))
        gaps[angle] = bp[-1].test_acc - ep[-1].test_acc
    assert gaps[0.0] < gaps[90.0] < gaps[180.0], gaps


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "sgd"},
        {"t1": 0},
        {"lr": -1.0},
        {"momentum": 1.0},
        {"homeostasis": -0.1},
        {"batch_size": 0},
    ],
)
def test_bad_trainer_config(kwargs):
    with pytest.raises(ValueError):
        EPTrainerConfig(**kwargs)


def test_trainer_rejects_bad_estimator_before_training():
    net_cfg = EPNetConfig(in_dim=64, hidden=(8,), n_classes=10, activation="relu")
    with pytest.raises(ValueError, match="holomorphic"):
        EPTrainer(net_cfg, EPTrainerConfig(n_points=2), device="cpu")
    with pytest.raises(ValueError, match="beta = 0"):
        EPTrainer(EPNetConfig(in_dim=64, hidden=(8,)), EPTrainerConfig(n_points=1, beta=0.0))
