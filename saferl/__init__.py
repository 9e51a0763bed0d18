"""saferl: safe and certified learning for control and RL.

Subpackages: ``saferl.policies`` (SET and baselines, online training), ``saferl.data``
(DSRL-format datasets), ``saferl.offline`` (FISOR and baselines), ``saferl.ep``
(equilibrium propagation). Environments live in ``envs``, bounds and conformal prediction in
``certify``.
"""

__version__ = "0.1.0"
