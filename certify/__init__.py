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

__all__ = [
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
