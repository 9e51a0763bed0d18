"""Hostile parameters for conformal prediction, smoothing and COLEP: every bad value (NaN,
out of range, wrong type) raises naming the parameter before any work, instead of silently
giving empty or full sets."""

from __future__ import annotations

import math

import pytest
import torch
from certify_nets import mlp
from torch import nn

from certify import (
    COLEP,
    COLEPConfig,
    ConformalConfig,
    RobustConformalClassifier,
    SmoothedConformalClassifier,
    SmoothingConfig,
    SplitConformalClassifier,
    check_coverage,
    clopper_pearson,
    colep_coverage_over_splits,
    conformal_quantile,
    coverage_over_splits,
    hoeffding_margin,
    monte_carlo_mean,
    score_bounds,
    sets_over_splits,
    smoothed_prob_bounds,
)
from certify.colep import ProbabilisticCircuit, sensor_thresholds
from certify.smoothing import smoothed_calibration_alpha

NAN = float("nan")


@pytest.fixture
def net() -> nn.Sequential:
    torch.manual_seed(0)
    return mlp([4, 8, 2], ["relu"])


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"penalty": NAN}, "penalty"),
        ({"penalty": math.inf}, "penalty"),
        ({"penalty": -0.1}, "penalty"),
        ({"kreg": -1}, "kreg"),
        ({"kreg": NAN}, "kreg"),
        ({"kreg": 1.5}, "kreg"),
        ({"alpha": NAN}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": 0.0}, "alpha"),
    ],
)
def test_raps_bad_parameters_raise(kw, name) -> None:
    with pytest.raises((ValueError, TypeError), match=name):
        SplitConformalClassifier(score="raps", **kw)
    with pytest.raises((ValueError, TypeError), match=name):
        ConformalConfig(score="raps", **kw)


def test_raps_config_checked_where_used() -> None:
    """A config mutated after construction is still checked before scoring."""
    cfg = ConformalConfig(score="raps")
    cfg.penalty = NAN
    p = torch.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="penalty"):
        score_bounds(p, p, cfg)
    with pytest.raises(ValueError, match="score"):
        ConformalConfig(score="bogus")


def test_robust_conformal_checks_method_up_front(net) -> None:
    with pytest.raises(ValueError, match="method"):
        RobustConformalClassifier(net, 0.1, method="zonotope")
    with pytest.raises(ValueError, match="eps"):
        RobustConformalClassifier(net, NAN)


def test_split_helpers_check_parameters() -> None:
    s = torch.rand(50)
    with pytest.raises(ValueError, match="n_splits"):
        coverage_over_splits(s, 20, 0.1, n_splits=0)
    with pytest.raises(ValueError, match="alpha"):
        coverage_over_splits(s, 20, NAN)
    with pytest.raises(ValueError, match="n_splits"):
        sets_over_splits(s, torch.rand(50, 3), torch.zeros(50, dtype=torch.long), 20, 0.1, 0)
    with pytest.raises(ValueError, match="alpha"):
        check_coverage(torch.rand(10), NAN, 20)
    with pytest.raises(ValueError, match="n_cal"):
        check_coverage(torch.rand(10), 0.1, 0)
    with pytest.raises(ValueError, match="z"):
        check_coverage(torch.rand(10), 0.1, 20, z=NAN)
    with pytest.raises(ValueError, match="NaN"):
        conformal_quantile(torch.tensor([0.1, NAN, 0.3]), 0.1)


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"sigma": NAN}, "sigma"),
        ({"n_samples": NAN}, "n_samples"),
        ({"n_samples": 2.5}, "n_samples"),
        ({"n_samples": 0}, "n_samples"),
        ({"beta": NAN}, "beta"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_smoothing_bad_parameters_raise(kw, name) -> None:
    with pytest.raises((ValueError, TypeError), match=name):
        SmoothingConfig(**kw)


def test_smoothing_functions_check_parameters() -> None:
    with pytest.raises(ValueError, match="n_samples"):
        hoeffding_margin(0, 0.1)
    with pytest.raises(ValueError, match="beta"):
        hoeffding_margin(10, NAN)
    with pytest.raises(ValueError, match="beta"):
        clopper_pearson(torch.tensor([3.0]), 10, NAN)
    with pytest.raises(ValueError, match="n "):
        clopper_pearson(torch.tensor([3.0]), 0, 0.1)
    with pytest.raises(ValueError, match="eps"):
        smoothed_prob_bounds(torch.rand(3), NAN, SmoothingConfig())
    with pytest.raises(ValueError, match="beta"):
        smoothed_calibration_alpha(0.1, 3, NAN)
    with pytest.raises(ValueError, match="n_sensors"):
        smoothed_calibration_alpha(0.1, -1, 0.001)
    cfg = SmoothingConfig()
    cfg.n_samples = 0  # mutated after construction: still checked where used
    with pytest.raises(ValueError, match="n_samples"):
        monte_carlo_mean(lambda z: z, torch.rand(2, 3), cfg)
    with pytest.raises(ValueError, match="alpha"):
        SmoothedConformalClassifier(lambda z: z, 0.1, alpha=NAN)


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"init_weight": NAN}, "init_weight"),
        ({"init_weight": -1.0}, "init_weight"),
        ({"lr": NAN}, "lr"),
        ({"lr": 0.0}, "lr"),
        ({"fit_steps": -1}, "fit_steps"),
        ({"raw_weight": NAN}, "raw_weight"),
        ({"alpha": NAN}, "alpha"),
        ({"calibration": "bogus"}, "calibration"),
        ({"max_attributes": -1}, "max_attributes"),
    ],
)
def test_colep_bad_parameters_raise(kw, name) -> None:
    with pytest.raises((ValueError, TypeError), match=name):
        COLEPConfig(**kw)


def test_colep_functions_check_parameters() -> None:
    with pytest.raises(ValueError, match="init_weight"):
        ProbabilisticCircuit(torch.ones(2, 2, dtype=torch.long), init_weight=NAN)
    cfg = COLEPConfig()
    cfg.calibration = "bogus"  # mutated after construction: still checked where used
    pi, labels = torch.rand(1, 10, 3), torch.zeros(1, 10, dtype=torch.long)
    with pytest.raises(ValueError, match="calibration"):
        sensor_thresholds(pi, labels, cfg)
    with pytest.raises(ValueError, match="n_splits"):
        colep_coverage_over_splits(pi[0], pi[0], labels[0], 5, COLEPConfig(), n_splits=0)
    mutated = COLEPConfig()
    mutated.alpha = 2.0
    with pytest.raises(ValueError, match="alpha"):
        COLEP(torch.ones(3, 2), cfg=mutated)
