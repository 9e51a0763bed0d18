"""certify: sound bounds (IBP, CROWN, CROWN-IBP), certified training, tightness and certificates
for policies and critics. Pure torch on any ``nn.Module``; imports nothing from saferl or envs."""

from certify.backends import auto_lirpa_available
from certify.bounds import METHODS, CrownStats, compute_bounds, get_graph, trace
from certify.policy import (
    ConcatCritic,
    FeasibilityCertificate,
    action_bounds,
    as_actor_module,
    certified_deviation,
    feasibility_certificate,
    fraction_certified,
)
from certify.tightness import local_linearisation, tightness
from certify.training import (
    CertifiedTrainingConfig,
    LinearScheduler,
    SmoothedScheduler,
    beta_at,
    certified_loss,
    ibp_init_,
    kappa_at,
    margin_spec,
    robust_classification_loss,
    robust_regression_loss,
    worst_case_deviation,
)

# Conformal prediction (split, robust, COLEP, smoothing) lives in modules of its own; its public
# names are re-exported lazily so that the bound engine imports without them.
_LAZY = {
    "ConformalConfig": "certify.conformal",
    "SplitConformalClassifier": "certify.conformal",
    "SplitConformalRegressor": "certify.conformal",
    "RobustConformalClassifier": "certify.conformal",
    "conformal_quantile": "certify.conformal",
    "COLEP": "certify.colep",
    "COLEPConfig": "certify.colep",
    "SmoothingConfig": "certify.smoothing",
    "SmoothedConformalClassifier": "certify.smoothing",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'certify' has no attribute {name!r}")


__all__ = [
    *_LAZY,
    "METHODS",
    "CertifiedTrainingConfig",
    "ConcatCritic",
    "CrownStats",
    "FeasibilityCertificate",
    "LinearScheduler",
    "SmoothedScheduler",
    "action_bounds",
    "as_actor_module",
    "auto_lirpa_available",
    "beta_at",
    "certified_deviation",
    "certified_loss",
    "compute_bounds",
    "feasibility_certificate",
    "fraction_certified",
    "get_graph",
    "ibp_init_",
    "kappa_at",
    "local_linearisation",
    "margin_spec",
    "robust_classification_loss",
    "robust_regression_loss",
    "tightness",
    "trace",
    "worst_case_deviation",
]
