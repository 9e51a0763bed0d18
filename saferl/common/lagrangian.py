"""PID Lagrangian multiplier for a cost constraint: the one controller of the toolkit.

Reference: Stooke, Achiam & Abbeel 2020, "Responsive Safety in Reinforcement Learning by PID
Lagrangian Methods" (Algorithm 2); gains as OSRL's defaults (K_P, K_I, K_D) = (0.1, 0.003, 0.001).
The multiplier λ ≥ 0 weighs the cost in the shaped reward r − λ·c; it grows while the measured
episode cost J_c exceeds the limit d and shrinks (never below 0) while J_c < d.

Used by the behaviour policies of dataset collection (EMA smoothing, λ ≤ 10) and by BCQ-Lag
(``PIDLagrangianConfig.osrl``: OSRL's ``LagrangianPIDController`` — no smoothing, no cap, the
proportional term on max(0, J_c − d) and the first rise measured from J_c = d).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class PIDLagrangianConfig:
    """Gains and limits of the PID Lagrangian (reference defaults: OSRL)."""

    kp: float = 0.1
    """Proportional gain K_P on the (smoothed) violation J_c − d."""
    ki: float = 0.003
    """Integral gain K_I: the integral term accumulates K_I·(J_c − d), clipped at 0."""
    kd: float = 0.001
    """Derivative gain K_D on the rise of the (smoothed) cost, counted only when positive."""
    p_ema: float = 0.95
    """EMA factor smoothing the violation for the P term (0: no smoothing)."""
    d_ema: float = 0.9
    """EMA factor smoothing the cost for the D term (0: no smoothing)."""
    lambda_init: float = 0.0
    """Initial multiplier (it is the initial integral term)."""
    lambda_max: float = 10.0
    """Upper clip of λ (``math.inf``: no clip)."""
    cost_init: float | None = None
    """Cost taken as the one before the first update, for the D term (None: the first measured
    cost itself, so the first step shows no rise)."""
    p_relu: bool = False
    """Proportional term on max(0, violation) (OSRL, ``osrl/common/net.py``
    ``LagrangianPIDController``: ``KP·relu(error)``) instead of the signed violation (Stooke et
    al.): a satisfied constraint then lowers λ only through the integral term."""

    def __post_init__(self) -> None:
        for name in ("kp", "ki", "kd", "lambda_init", "lambda_max"):
            value = getattr(self, name)
            if math.isnan(value) or value < 0 or (name != "lambda_max" and math.isinf(value)):
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        if self.cost_init is not None and not math.isfinite(self.cost_init):
            raise ValueError(f"cost_init must be finite or None, got {self.cost_init!r}")
        for name in ("p_ema", "d_ema"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {value!r}")

    @classmethod
    def plain(cls, kp: float = 0.1, ki: float = 0.003, kd: float = 0.001) -> PIDLagrangianConfig:
        """The unsmoothed, uncapped controller: λ = max(0, K_P·e + I + K_D·max(0, J − J_prev)),
        with J_prev = 0 before the first update (BCQ-Lag)."""
        return cls(kp, ki, kd, p_ema=0.0, d_ema=0.0, lambda_max=math.inf, cost_init=0.0)

    @classmethod
    def osrl(
        cls, cost_limit: float, kp: float = 0.1, ki: float = 0.003, kd: float = 0.001
    ) -> PIDLagrangianConfig:
        """OSRL's ``LagrangianPIDController`` for a fixed limit d = ``cost_limit``:
        λ = max(0, K_P·max(0, e) + I + K_D·max(0, e − e_prev)), e = J − d, I = max(0, I + K_I·e),
        e_prev = 0 before the first update (so J_prev = d). BCQ-Lag's controller."""
        return cls(kp, ki, kd, p_ema=0.0, d_ema=0.0, lambda_max=math.inf,
                   cost_init=float(cost_limit), p_relu=True)  # fmt: skip


class PIDLagrangian:
    """λ_k = clip(K_P·Δ̄_k + I_k + K_D·max(0, J̄_k − J̄_{k−1}), 0, λ_max) (Stooke et al. Alg. 2).

    Δ_k = J_c,k − d_k; I_k = max(0, I_{k−1} + K_I·Δ_k); bars are exponential moving averages.
    With ``p_relu`` the proportional term is K_P·max(0, Δ̄_k) (OSRL).
    """

    def __init__(self, config: PIDLagrangianConfig | None = None) -> None:
        self.config = config or PIDLagrangianConfig()
        self.integral = self.config.lambda_init
        self.smoothed_violation = 0.0
        self.smoothed_cost: float | None = self.config.cost_init
        self.multiplier = min(self.config.lambda_init, self.config.lambda_max)

    def update(self, episode_cost: float, cost_limit: float) -> float:
        """One controller step on a measured episode cost J_c against limit d; returns λ."""
        if not math.isfinite(episode_cost) or not math.isfinite(cost_limit):
            raise ValueError(f"episode_cost and cost_limit must be finite, got "
                             f"{episode_cost!r}, {cost_limit!r}")  # fmt: skip
        c = self.config
        violation = episode_cost - cost_limit
        self.integral = max(0.0, self.integral + c.ki * violation)
        self.smoothed_violation = c.p_ema * self.smoothed_violation + (1 - c.p_ema) * violation
        previous = episode_cost if self.smoothed_cost is None else self.smoothed_cost
        self.smoothed_cost = c.d_ema * previous + (1 - c.d_ema) * episode_cost
        rise = max(0.0, self.smoothed_cost - previous)
        p = max(0.0, self.smoothed_violation) if c.p_relu else self.smoothed_violation
        raw = c.kp * p + self.integral + c.kd * rise
        self.multiplier = min(max(0.0, raw), c.lambda_max)
        return self.multiplier


def annealed_limit(progress: float, start: float, end: float, anneal_fraction: float) -> float:
    """Cost limit at training progress p ∈ [0, 1]: linear from ``start`` to ``end`` over the first
    ``anneal_fraction`` of training, then ``end`` (DSRL anneals e.g. 250 → 10 on Hopper)."""
    if not 0.0 < anneal_fraction <= 1.0:
        raise ValueError(f"anneal_fraction must lie in (0, 1], got {anneal_fraction!r}")
    t = min(max(progress / anneal_fraction, 0.0), 1.0)
    return start + (end - start) * t
