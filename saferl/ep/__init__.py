"""Equilibrium-propagation learners: generalised EP, holomorphic EP, Jacobian homeostasis.

Public API:

* :class:`EPNetwork`, :class:`EPNetConfig` — layered recurrent network (W forward + bias,
  B feedback, dense readout), batched fixed-point relaxation, asymmetry angle.
* :func:`ep_error` (N = 0 exact / 1 one-sided / >= 2 holomorphic Cauchy), :func:`rbp_error`,
  :func:`dynamics_gradients`, :func:`readout_gradients`, :func:`cosine`, :func:`layer_cosines`.
* :func:`homeostasis_loss`, :func:`homeostasis_exact`, :func:`asymmetry_penalty`.
* :class:`EPTrainer`, :class:`EPTrainerConfig` — EP or recurrent-backprop (BP) training.
* :func:`load_digits_split`, :func:`load_safety_split` — datasets.
"""

from saferl.ep.data import Split, load_digits_split, load_safety_split
from saferl.ep.estimators import (
    cauchy_points,
    check_estimator,
    cosine,
    dynamics_gradients,
    ep_error,
    exact_error,
    layer_cosines,
    rbp_error,
    readout_gradients,
)
from saferl.ep.homeostasis import (
    asymmetry_penalty,
    homeostasis_exact,
    homeostasis_loss,
    whitened_jacobian,
    whitened_jvp,
)
from saferl.ep.network import (
    ACTIVATIONS,
    Activation,
    EPNetConfig,
    EPNetwork,
    RelaxStats,
    get_activation,
)
from saferl.ep.trainer import EpochLog, EPTrainer, EPTrainerConfig

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "EPNetConfig",
    "EPNetwork",
    "EPTrainer",
    "EPTrainerConfig",
    "EpochLog",
    "RelaxStats",
    "Split",
    "asymmetry_penalty",
    "cauchy_points",
    "check_estimator",
    "cosine",
    "dynamics_gradients",
    "ep_error",
    "exact_error",
    "get_activation",
    "homeostasis_exact",
    "homeostasis_loss",
    "layer_cosines",
    "load_digits_split",
    "load_safety_split",
    "rbp_error",
    "readout_gradients",
    "whitened_jacobian",
    "whitened_jvp",
]
