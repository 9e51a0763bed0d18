"""ℓ2-robust conformal prediction by randomized smoothing, with Monte-Carlo error accounted for.

RSCP (Gendler et al., ICLR 2022): for a score s(x, y) ∈ [0, 1] the smoothed score
S̃(x, y) = E_{η~N(0, σ²I)} s(x + η, y) makes Φ⁻¹∘S̃ 1/σ-Lipschitz in x (Salman et al. 2019,
Lemma 2), so ‖x̃ − x‖₂ ≤ ε ⇒ Φ⁻¹(S̃(x̃, y)) ≤ Φ⁻¹(S̃(x, y)) + ε/σ.

RSCP+ (Yan et al., ICLR 2024) showed that plugging in a Monte-Carlo estimate Ŝ breaks the
guarantee unless its error is bounded. We use one-sided Hoeffding margins
b = √(ln(1/β) / (2N)) (N noise samples, failure probability β per estimate):

  calibrate:  τ̂ = q̂_{α−2β} of the MC scores Ŝ(x_i, y_i)            (exchangeable, so valid)
  include y:  Ŝ(x̃, y) − b ≤ Φ(Φ⁻¹(τ̂ + b) + ε/σ)

Chain: Ŝ(x) ≤ τ̂ (prob ≥ 1 − α + 2β) ⇒ S̃(x) ≤ τ̂ + b (fails w.p. ≤ β) ⇒ Lipschitz ⇒
S̃(x̃) ≤ Φ(Φ⁻¹(τ̂ + b) + ε/σ) ⇒ Ŝ(x̃) − b ≤ that (fails w.p. ≤ β). Hence P(Y ∈ C(x̃)) ≥ 1 − α
for every ‖x̃ − x‖₂ ≤ ε. Equivalently: y ∈ C(x̃) ⟺ Φ(Φ⁻¹(Ŝ(x̃, y) − b) − ε/σ) − b ≤ τ̂, the
"effective test score" used below.

The same tools bound a smoothed probability p̃(x) = E σ(f(x + η)) ∈ [0, 1] under an ℓ2 attack
(two-sided), as COLEP needs for its sensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real

import torch
from scipy import stats
from torch import Tensor

from certify.conformal import (
    SplitConformalClassifier,
    check_alpha,
    check_int,
    check_labels,
    check_real,
    conformal_quantile,
)


@dataclass
class SmoothingConfig:
    """Randomized-smoothing settings (RSCP+ uses σ = 0.25–0.5 and N in the hundreds)."""

    sigma: float = 0.25
    """Standard deviation of the Gaussian noise."""
    n_samples: int = 256
    """Monte-Carlo samples per input."""
    beta: float = 0.001
    """Failure probability of each Monte-Carlo confidence bound."""
    batch_size: int = 4096
    """Noisy inputs per forward pass."""

    def __post_init__(self) -> None:
        check_smoothing_config(self)


def _check_beta(beta: float) -> float:
    if isinstance(beta, bool) or not isinstance(beta, Real) or not (0 < beta < 1):
        raise ValueError(f"beta must be a number in (0, 1), got {beta!r}")
    return float(beta)


def check_smoothing_config(cfg: SmoothingConfig) -> None:
    """σ finite > 0, N an integer ≥ 1, β ∈ (0, 1), batch_size an integer ≥ 1."""
    check_real(cfg.sigma, "sigma", 0.0, open_low=True)
    check_int(cfg.n_samples, "n_samples", 1)
    _check_beta(cfg.beta)
    check_int(cfg.batch_size, "batch_size", 1)


def check_smoothing(cfg: SmoothingConfig, eps: float) -> None:
    """The config's fields and ε finite ≥ 0."""
    check_smoothing_config(cfg)
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number ≥ 0, got {eps!r}")


def hoeffding_margin(n_samples: int, beta: float) -> float:
    """One-sided Hoeffding radius for a mean of N values in [0, 1]: √(ln(1/β)/(2N))."""
    n_samples, beta = check_int(n_samples, "n_samples", 1), _check_beta(beta)
    return math.sqrt(math.log(1.0 / beta) / (2.0 * n_samples))


def clopper_pearson(successes: Tensor, n: int, beta: float) -> tuple[Tensor, Tensor]:
    """Two-sided Clopper-Pearson interval at level 1 − β for binomial counts; each like input."""
    n, beta = check_int(n, "n (trials)", 1), _check_beta(beta)
    k = successes.detach().cpu().double().numpy()
    if not ((k >= 0) & (k <= n)).all():
        raise ValueError(f"successes must be counts in [0, {n}] (no NaN)")
    lo = stats.beta.ppf(beta / 2, k, n - k + 1)
    hi = stats.beta.isf(beta / 2, k + 1, n - k)
    lo = torch.as_tensor(lo).nan_to_num(0.0)
    hi = torch.as_tensor(hi).nan_to_num(1.0)
    return (
        lo.to(successes.device, torch.get_default_dtype()),
        hi.to(successes.device, torch.get_default_dtype()),
    )


def monte_carlo_mean(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    cfg: SmoothingConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Ŝ(x) = (1/N) Σ fn(x + η_k), η_k ~ N(0, σ²I); x (n, d) -> fn's output shape (n, ...)."""
    check_smoothing_config(cfg)
    n = x.shape[0]
    total = None
    per = max(1, cfg.batch_size // max(n, 1))
    done = 0
    while done < cfg.n_samples:
        m = min(per, cfg.n_samples - done)
        noise = torch.randn((m, *x.shape), generator=generator, dtype=x.dtype).to(x.device)
        with torch.no_grad():
            out = fn((x.unsqueeze(0) + cfg.sigma * noise).reshape(m * n, *x.shape[1:]))
        out = out.reshape(m, n, *out.shape[1:]).sum(0)
        total = out if total is None else total + out
        done += m
    return total / cfg.n_samples


def smoothed_prob_bounds(p_hat: Tensor, eps: float, cfg: SmoothingConfig) -> tuple[Tensor, Tensor]:
    """Bounds valid for the MC estimate at any clean point within ℓ2 distance ε of x̃.

    p_hat: MC means at x̃ in [0, 1]. Each side fails with probability ≤ 2β (one Hoeffding
    event at x̃ and one at the clean point): [Φ(Φ⁻¹(p̂ − b) − ε/σ) − b, Φ(Φ⁻¹(p̂ + b) + ε/σ) + b].
    """
    check_smoothing(cfg, eps)
    b = hoeffding_margin(cfg.n_samples, cfg.beta)
    shift = eps / cfg.sigma
    nd, ndtri = torch.special.ndtr, torch.special.ndtri
    lo = nd(ndtri((p_hat - b).clamp(0.0, 1.0)) - shift) - b
    hi = nd(ndtri((p_hat + b).clamp(0.0, 1.0)) + shift) + b
    return lo.clamp(0.0, 1.0), hi.clamp(0.0, 1.0)


class SmoothedConformalClassifier:
    """RSCP+: ℓ2-robust split CP with a smoothed score and Monte-Carlo margins.

    Args:
        prob_fn: maps inputs (m, d) to class probabilities (m, K) (e.g. softmax of a network).
        eps: ℓ2 attack radius the sets must withstand.
        score: "lac" or "aps" (scores in [0, 1]; RAPS is unbounded and not supported).
        alpha: target miscoverage; calibration runs at α − 2β.
        cfg: ``SmoothingConfig``; generator: seeds noise and APS randomisation.

    Guarantee: P(Y ∈ C(x̃)) ≥ 1 − α for every ‖x̃ − x‖₂ ≤ ε (over data, noise and calibration).
    """

    def __init__(
        self,
        prob_fn: Callable[[Tensor], Tensor],
        eps: float,
        score: str = "lac",
        alpha: float = 0.1,
        cfg: SmoothingConfig | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if score not in ("lac", "aps"):
            raise ValueError(f"smoothing needs a score in [0, 1]: 'lac' or 'aps', got {score!r}")
        self.cfg = cfg or SmoothingConfig()
        check_smoothing(self.cfg, eps)
        self.alpha = check_alpha(alpha)
        if self.alpha <= 2 * self.cfg.beta:
            raise ValueError(f"alpha ({alpha}) must exceed 2·beta ({2 * self.cfg.beta})")
        self.prob_fn, self.eps, self.generator = prob_fn, float(eps), generator
        self.base = SplitConformalClassifier(score, alpha, generator=generator)
        self.tau: Tensor | None = None
        self.num_classes: int | None = None

    def smoothed_scores(self, x: Tensor) -> Tensor:
        """Ŝ(x, ·): MC mean over noise (and APS's u) of the base scores; (n, K)."""
        return monte_carlo_mean(
            lambda z: self.base.scores(self.prob_fn(z)), x, self.cfg, self.generator
        )

    def effective_scores(self, s_hat: Tensor) -> Tensor:
        """Φ(Φ⁻¹(Ŝ − b) − ε/σ) − b: include y iff this ≤ τ̂ (the RSCP+ rule, rearranged)."""
        b = hoeffding_margin(self.cfg.n_samples, self.cfg.beta)
        z = torch.special.ndtri((s_hat - b).clamp(0.0, 1.0)) - self.eps / self.cfg.sigma
        return torch.special.ndtr(z) - b

    def calibrate(self, x: Tensor, labels: Tensor) -> SmoothedConformalClassifier:
        """τ̂ from clean calibration inputs (n, d) and labels (n,); returns self."""
        if x.shape[0] < 1:
            raise ValueError("the calibration set is empty; expected at least one example")
        s = self.smoothed_scores(x)
        labels = check_labels(labels, x.shape[0], s.shape[1]).to(s.device)
        self.tau = conformal_quantile(
            s.gather(1, labels[:, None]).squeeze(1), self.alpha - 2 * self.cfg.beta
        )
        self.num_classes = s.shape[1]
        return self

    def predict(self, x: Tensor) -> Tensor:
        """(n, K) bool sets at (possibly ℓ2-attacked) inputs."""
        if self.tau is None:
            raise RuntimeError("call calibrate(x, labels) before predict")
        return self.effective_scores(self.smoothed_scores(x)) <= self.tau


def smoothed_calibration_alpha(alpha: float, n_sensors: int, beta: float) -> float:
    """Level to calibrate COLEP at when its S sensor boxes come from ``smoothed_prob_bounds``.

    Each box holds for the clean point's MC estimate unless one of four one-sided Hoeffding
    events fails (prob ≤ 4β per sensor), so calibrating at α − 4Sβ keeps coverage ≥ 1 − α.
    """
    alpha, beta = check_alpha(alpha), _check_beta(beta)
    n_sensors = check_int(n_sensors, "n_sensors", 1)
    out = alpha - 4 * n_sensors * beta
    if out <= 0:
        raise ValueError(f"alpha ({alpha}) must exceed 4·n_sensors·beta ({4 * n_sensors * beta})")
    return out
