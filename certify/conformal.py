"""Split conformal prediction, and its ℓ∞-robust version built on bound propagation.

Split CP (Vovk et al. 2005; Lei et al. 2018; tutorial: Angelopoulos & Bates 2021): with n
calibration scores s_1..s_n of the true labels, the threshold

    q̂ = the ⌈(n+1)(1−α)⌉-th smallest s_i           (+∞ when ⌈(n+1)(1−α)⌉ > n)

gives sets C(x) = {y : s(x, y) ≤ q̂} with P(Y ∈ C(X)) ≥ 1 − α for an exchangeable test point, and
≤ 1 − α + 1/(n+1) when the scores are almost surely distinct.

Scores (classification, probabilities p ∈ Δ^K):
- LAC / THR (Sadinle et al. 2019):  s(x, y) = 1 − p_y.
- APS (Romano et al. 2020), randomised:  s(x, y) = Σ_{j: p_j > p_y} p_j + u·p_y,  u ~ U(0, 1).
- RAPS (Angelopoulos et al. 2021):  APS + λ·(o(y) − k_reg)⁺,  o(y) = 1 + #{j : p_j > p_y}.
Scores (regression): absolute residual |y − ŷ|; CQR (Romano et al. 2019)
max(q̂_lo(x) − y, y − q̂_hi(x)).

Robust CP from bounds (cf. VRCP, Jeary et al., NeurIPS 2024, "inference-time" variant): calibrate
on clean data; at a test input x̃ include y when the *lowest* score over the ε-ball around x̃ is
≤ q̂. The clean input x lies in that ball, so y ∈ C(x) ⇒ y ∈ C_rob(x̃): coverage ≥ 1 − α under
any perturbation ‖x̃ − x‖∞ ≤ ε. Score bounds come from probability bounds, which come from logit
bounds given by ``certify.compute_bounds`` (IBP / CROWN / CROWN-IBP).

All functions work on torch tensors on any device and are batched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral, Real

import torch
from torch import Tensor, nn

from certify.bounds import METHODS

SCORES = ("lac", "aps", "raps")
REGRESSION_SCORES = ("absolute", "cqr")


@dataclass
class ConformalConfig:
    """Split conformal classification settings (reference defaults)."""

    alpha: float = 0.1
    """Miscoverage level α ∈ (0, 1): sets cover with probability ≥ 1 − α."""
    score: str = "lac"
    """Non-conformity score: "lac", "aps" or "raps"."""
    randomized: bool = True
    """APS/RAPS: randomise the own-label mass by u ~ U(0, 1) (Romano et al. 2020)."""
    penalty: float = 0.01
    """RAPS λ (Angelopoulos et al. 2021 use 0.01–0.1 on ImageNet)."""
    kreg: int = 1
    """RAPS k_reg: ranks above it are penalised."""

    def __post_init__(self) -> None:
        check_conformal_config(self)


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def check_real(
    value: float, name: str, low: float = -math.inf, high: float = math.inf, open_low: bool = False
) -> float:
    """A finite real number (not a bool) in [low, high] (``(low, high]`` with ``open_low``)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not (math.isfinite(v) and (v > low if open_low else v >= low) and v <= high):
        if high == math.inf:
            where = f"{'>' if open_low else '≥'} {low:g}"
        else:
            where = f"in {'(' if open_low else '['}{low:g}, {high:g}]"
        raise ValueError(f"{name} must be a finite number {where}, got {value!r}")
    return v


def check_int(value: int, name: str, low: int = 0) -> int:
    """An integer (not a bool) ≥ ``low``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer ≥ {low}, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")
    return int(value)


def check_alpha(alpha: float) -> float:
    """α must be a real number strictly inside (0, 1)."""
    if isinstance(alpha, bool) or not isinstance(alpha, Real):
        raise TypeError(f"alpha must be a float in (0, 1), got {type(alpha).__name__}")
    if not (0.0 < float(alpha) < 1.0):
        raise ValueError(f"alpha must lie strictly inside (0, 1), got {alpha!r}")
    return float(alpha)


def check_conformal_config(cfg: ConformalConfig) -> None:
    """α ∈ (0, 1), a known score, RAPS λ finite ≥ 0 and k_reg an integer ≥ 0."""
    check_alpha(cfg.alpha)
    if cfg.score not in SCORES:
        raise ValueError(f"unknown score {cfg.score!r}; expected one of {SCORES}")
    check_real(cfg.penalty, "RAPS penalty", 0.0)
    check_int(cfg.kreg, "RAPS kreg", 0)


def check_splits(n: int, n_cal: int, n_splits: int) -> None:
    """1 ≤ n_cal < n (calibration and test parts both non-empty) and n_splits ≥ 1."""
    check_int(n_splits, "n_splits", 1)
    if isinstance(n_cal, bool) or not isinstance(n_cal, Integral) or not (1 <= n_cal < n):
        raise ValueError(f"n_cal must be an integer in [1, {n - 1}], got {n_cal!r}")


def check_probs(probs: Tensor, name: str = "probs") -> Tensor:
    """(n, K) finite probabilities in [0, 1]; n ≥ 1 is checked by the callers that need it."""
    if not isinstance(probs, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, K), got {type(probs)}")
    if probs.dim() != 2 or probs.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n, K), got {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {probs.dtype}")
    if not torch.isfinite(probs).all():
        raise ValueError(f"{name} contains NaN or Inf; expected probabilities in [0, 1]")
    if (probs < 0).any() or (probs > 1 + 1e-6).any():
        raise ValueError(f"{name} must lie in [0, 1] (pass softmax outputs, not logits)")
    return probs


def check_labels(labels: Tensor, n: int, num_classes: int) -> Tensor:
    """(n,) integer labels in [0, num_classes)."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of shape ({n},), got {type(labels)}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return labels.long()


def _check_nonempty(n: int, what: str = "calibration set") -> None:
    if n < 1:
        raise ValueError(f"the {what} is empty; expected at least one example")


# --------------------------------------------------------------------------------------------
# The conformal quantile
# --------------------------------------------------------------------------------------------


def conformal_rank(n: int, alpha: float) -> int:
    """k = ⌈(n+1)(1−α)⌉: the rank (1-based) of the calibration score used as threshold."""
    # a tiny slack guards against (n+1)(1-α) landing a hair above an integer in floating point
    return int(math.ceil((n + 1) * (1.0 - alpha) - 1e-9))


def conformal_quantile(scores: Tensor, alpha: float) -> Tensor:
    """q̂ over the last dim: (..., n) scores -> (...) thresholds.

    The ⌈(n+1)(1−α)⌉-th smallest score, +∞ when that rank exceeds n (the set is then every label).
    Guarantee: P(s_{n+1} ≤ q̂) ≥ 1 − α for exchangeable s_1..s_{n+1}.
    """
    alpha = check_alpha(alpha)
    n = scores.shape[-1]
    _check_nonempty(n)
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; expected real non-conformity scores")
    k = conformal_rank(n, alpha)
    if k > n:
        return torch.full(scores.shape[:-1], math.inf, dtype=scores.dtype, device=scores.device)
    return torch.kthvalue(scores, max(k, 1), dim=-1).values


# --------------------------------------------------------------------------------------------
# Classification scores and their bounds
# --------------------------------------------------------------------------------------------


def _mass_above(probs: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
    """Per (i, y): Σ_j probs_ij·1[probs_ij > ref_iy] and #{j : probs_ij > ref_iy}; (n, K) each."""
    sorted_p, _ = probs.sort(dim=1)
    csum = sorted_p.cumsum(dim=1)
    n_le = torch.searchsorted(sorted_p.contiguous(), ref.contiguous(), right=True)  # (n, K)
    below = torch.where(
        n_le > 0,
        csum.gather(1, (n_le - 1).clamp(min=0)),
        torch.zeros_like(ref),
    )
    return csum[:, -1:] - below, (probs.shape[1] - n_le).to(probs.dtype)


def lac_scores(probs: Tensor) -> Tensor:
    """LAC: s(x, y) = 1 − p_y for every label; (n, K) -> (n, K)."""
    return 1.0 - probs


def aps_scores(probs: Tensor, u: Tensor | None = None) -> Tensor:
    """APS: s(x, y) = Σ_{p_j > p_y} p_j + u·p_y for every label; u (n, 1) or None (u = 1)."""
    above, _ = _mass_above(probs, probs)
    return above + (probs if u is None else u * probs)


def raps_scores(probs: Tensor, u: Tensor | None, penalty: float, kreg: int) -> Tensor:
    """RAPS: APS + λ·(o(y) − k_reg)⁺ with o(y) = 1 + #{j : p_j > p_y}."""
    above, n_above = _mass_above(probs, probs)
    own = probs if u is None else u * probs
    return above + own + penalty * (n_above + 1 - kreg).clamp(min=0)


def score_bounds(
    prob_lo: Tensor, prob_hi: Tensor, cfg: ConformalConfig, u: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Sound bounds (s_lo, s_hi), each (n, K), on the score for any p with prob_lo ≤ p ≤ prob_hi.

    LAC: [1 − hi_y, 1 − lo_y]. APS/RAPS: the labels ranked strictly above y are at least those
    with lo_j > hi_y and at most those j ≠ y with hi_j > lo_y; masses and ranks bounded alike.
    """
    check_conformal_config(cfg)
    if cfg.score == "lac":
        return 1.0 - prob_hi, 1.0 - prob_lo
    uu = torch.ones_like(prob_lo[:, :1]) if (u is None or not cfg.randomized) else u
    above_lo, n_above_lo = _mass_above(prob_lo, prob_hi)
    above_hi, n_above_hi = _mass_above(prob_hi, prob_lo)
    self_counted = (prob_hi > prob_lo).to(prob_lo.dtype)  # j = y counted in the upper sums
    above_hi = above_hi - self_counted * prob_hi
    n_above_hi = n_above_hi - self_counted
    s_lo = above_lo + uu * prob_lo
    s_hi = (above_hi + uu * prob_hi).clamp(max=1.0)
    if cfg.score == "raps":
        s_lo = s_lo + cfg.penalty * (n_above_lo + 1 - cfg.kreg).clamp(min=0)
        s_hi = s_hi + cfg.penalty * (n_above_hi + 1 - cfg.kreg).clamp(min=0)
    return s_lo, s_hi


def softmax_bounds(logit_lo: Tensor, logit_hi: Tensor) -> tuple[Tensor, Tensor]:
    """Sound softmax bounds from logit bounds; (n, K) each.

    p_y ≥ e^{l_y} / (e^{l_y} + Σ_{j≠y} e^{u_j}),  p_y ≤ e^{u_y} / (e^{u_y} + Σ_{j≠y} e^{l_j}).
    """
    if logit_lo.shape != logit_hi.shape or logit_lo.dim() != 2:
        raise ValueError("logit bounds must both have shape (n, K)")
    k = logit_lo.shape[1]
    eye = torch.eye(k, dtype=torch.bool, device=logit_lo.device)
    # lower: denominators use the own lower logit and the others' upper logits
    mix_lo = torch.where(eye, logit_lo.unsqueeze(1), logit_hi.unsqueeze(1))  # (n, y, j)
    mix_hi = torch.where(eye, logit_hi.unsqueeze(1), logit_lo.unsqueeze(1))
    p_lo = torch.exp(logit_lo - torch.logsumexp(mix_lo, dim=2))
    p_hi = torch.exp(logit_hi - torch.logsumexp(mix_hi, dim=2))
    return p_lo, p_hi


def margin_softmax_bounds(margin_hi: Tensor, margin_lo: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax bounds from bounds on the margins d_{yj} = z_j − z_y; (n, K, K) -> (n, K) each.

    p_y = 1 / Σ_j e^{d_yj} (d_yy = 0), so p_y ≥ 1/Σ_j e^{hi(d_yj)} and p_y ≤ 1/Σ_j e^{lo(d_yj)}.
    Tighter than ``softmax_bounds`` when the margins are bounded directly (CROWN with a C matrix).
    """
    k = margin_hi.shape[-1]
    eye = torch.eye(k, dtype=torch.bool, device=margin_hi.device)
    p_lo = torch.exp(-torch.logsumexp(margin_hi.masked_fill(eye, 0.0), dim=2))
    p_hi = torch.exp(-torch.logsumexp(margin_lo.masked_fill(eye, 0.0), dim=2))
    return p_lo, p_hi


# --------------------------------------------------------------------------------------------
# Split conformal classification
# --------------------------------------------------------------------------------------------


class SplitConformalClassifier:
    """Split conformal classifier on probabilities (API in the spirit of TorchCP/MAPIE).

    Args:
        score: "lac", "aps" (randomised) or "raps".
        alpha: miscoverage level in (0, 1).
        randomized: APS/RAPS randomisation (u ~ U(0, 1) per example).
        penalty, kreg: RAPS λ and k_reg.
        generator: torch.Generator for the randomisation (seeded runs are reproducible).

    ``calibrate(probs (n, K), labels (n,))`` sets q̂; ``predict(probs (m, K))`` returns an (m, K)
    bool mask with P(Y ∈ set) ≥ 1 − α for exchangeable data.
    """

    def __init__(
        self,
        score: str = "lac",
        alpha: float = 0.1,
        randomized: bool = True,
        penalty: float = 0.01,
        kreg: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        self.cfg = ConformalConfig(alpha, score, randomized, penalty, kreg)  # checks every field
        self.generator = generator
        self.q_hat: Tensor | None = None
        self.num_classes: int | None = None

    @property
    def alpha(self) -> float:
        return self.cfg.alpha

    def draw_u(self, n: int, like: Tensor) -> Tensor | None:
        """The (n, 1) randomisation u ~ U(0, 1) (None for LAC or a non-randomised score)."""
        if self.cfg.score == "lac" or not self.cfg.randomized:
            return None
        u = torch.rand(n, 1, generator=self.generator, dtype=like.dtype)
        return u.to(like.device)

    def scores(self, probs: Tensor, u: Tensor | None = None) -> Tensor:
        """Scores of every label, (n, K); u as from ``draw_u`` (drawn when None)."""
        check_conformal_config(self.cfg)
        check_probs(probs)
        if u is None:
            u = self.draw_u(probs.shape[0], probs)
        if self.cfg.score == "lac":
            return lac_scores(probs)
        if self.cfg.score == "aps":
            return aps_scores(probs, u)
        return raps_scores(probs, u, self.cfg.penalty, self.cfg.kreg)

    def calibrate(self, probs: Tensor, labels: Tensor) -> SplitConformalClassifier:
        """Compute q̂ from the true-label scores of a calibration set; returns self."""
        check_probs(probs)
        _check_nonempty(probs.shape[0])
        labels = check_labels(labels, probs.shape[0], probs.shape[1])
        true = self.scores(probs).gather(1, labels.to(probs.device)[:, None]).squeeze(1)
        self.q_hat = conformal_quantile(true, self.cfg.alpha)
        self.num_classes = probs.shape[1]
        return self

    def _require_calibrated(self, k: int) -> Tensor:
        if self.q_hat is None:
            raise RuntimeError("call calibrate(probs, labels) before predict")
        if k != self.num_classes:
            raise ValueError(f"expected probs with {self.num_classes} classes, got {k}")
        return self.q_hat

    def predict(self, probs: Tensor) -> Tensor:
        """(m, K) bool set mask {y : s(x, y) ≤ q̂}."""
        check_probs(probs)
        q = self._require_calibrated(probs.shape[1])
        return self.scores(probs) <= q

    def predict_from_bounds(self, prob_lo: Tensor, prob_hi: Tensor) -> Tensor:
        """Robust set {y : lower score bound ≤ q̂}: covers whenever any p in the box would."""
        check_probs(prob_lo, "prob_lo")
        check_probs(prob_hi, "prob_hi")
        q = self._require_calibrated(prob_lo.shape[1])
        s_lo, _ = score_bounds(prob_lo, prob_hi, self.cfg, self.draw_u(prob_lo.shape[0], prob_lo))
        return s_lo <= q


def evaluate_sets(sets: Tensor, labels: Tensor) -> dict[str, float]:
    """Empirical coverage and mean set size of an (n, K) bool mask against (n,) labels."""
    labels = check_labels(labels, sets.shape[0], sets.shape[1]).to(sets.device)
    covered = sets.gather(1, labels[:, None]).squeeze(1)
    return {
        "coverage": covered.float().mean().item(),
        "size": sets.float().sum(1).mean().item(),
    }


# --------------------------------------------------------------------------------------------
# Split conformal regression
# --------------------------------------------------------------------------------------------


class SplitConformalRegressor:
    """Split conformal regression: absolute residual or CQR (Romano et al. 2019).

    ``score="absolute"``: predictions (n,) or (n, d); interval ŷ ± q̂ (per output dimension).
    ``score="cqr"``: predictions (n, 2) = (lower, upper) quantile regressions of a scalar target;
    interval [lo − q̂, hi + q̂]. Coverage ≥ 1 − α per output dimension.
    """

    def __init__(self, alpha: float = 0.1, score: str = "absolute") -> None:
        if score not in REGRESSION_SCORES:
            raise ValueError(f"unknown score {score!r}; expected one of {REGRESSION_SCORES}")
        self.alpha = check_alpha(alpha)
        self.score = score
        self.q_hat: Tensor | None = None

    def _check(self, predictions: Tensor, targets: Tensor | None = None) -> None:
        if not isinstance(predictions, Tensor) or not predictions.is_floating_point():
            raise TypeError("predictions must be a floating torch.Tensor")
        if not torch.isfinite(predictions).all():
            raise ValueError("predictions contain NaN or Inf")
        if self.score == "cqr" and (predictions.dim() != 2 or predictions.shape[1] != 2):
            raise ValueError(f"CQR predictions must be (n, 2), got {tuple(predictions.shape)}")
        if self.score == "absolute" and predictions.dim() not in (1, 2):
            raise ValueError(f"predictions must be (n,) or (n, d), got {tuple(predictions.shape)}")
        if targets is None:
            return
        want = predictions.shape[:1] if self.score == "cqr" else predictions.shape
        if not isinstance(targets, Tensor) or targets.shape != want:
            raise ValueError(f"targets must have shape {tuple(want)}")
        if not torch.isfinite(targets).all():
            raise ValueError("targets contain NaN or Inf")

    def scores(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """Non-conformity scores, same shape as targets."""
        if self.score == "cqr":
            return torch.maximum(predictions[:, 0] - targets, targets - predictions[:, 1])
        return (targets - predictions).abs()

    def calibrate(self, predictions: Tensor, targets: Tensor) -> SplitConformalRegressor:
        """q̂ from calibration residuals (per output dimension); returns self."""
        self._check(predictions, targets)
        _check_nonempty(predictions.shape[0])
        s = self.scores(predictions, targets)
        self.q_hat = conformal_quantile(s.T if s.dim() == 2 else s, self.alpha)
        return self

    def predict(self, predictions: Tensor) -> tuple[Tensor, Tensor]:
        """(lower, upper) interval bounds, each shaped like the targets."""
        if self.q_hat is None:
            raise RuntimeError("call calibrate(predictions, targets) before predict")
        self._check(predictions)
        if self.score == "cqr":
            return predictions[:, 0] - self.q_hat, predictions[:, 1] + self.q_hat
        return predictions - self.q_hat, predictions + self.q_hat


# --------------------------------------------------------------------------------------------
# Robust (ℓ∞) conformal classification via the bound engine
# --------------------------------------------------------------------------------------------

BoundFn = Callable[[nn.Module, Tensor, float], tuple[Tensor, Tensor]]


def logit_bounds(
    model: nn.Module,
    x: Tensor,
    eps: float,
    method: str = "crown",
    bound_fn: BoundFn | None = None,
    x_min: float | Tensor | None = None,
    x_max: float | Tensor | None = None,
    C: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Bounds on model(x') (or C·model(x')) for every ‖x' − x‖∞ ≤ ε within [x_min, x_max].

    Uses ``certify.compute_bounds`` unless ``bound_fn(model, x, eps) -> (lo, hi)`` is given.
    Returns (n, K) each, or (n, m) for a C of m rows.
    """
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number ≥ 0, got {eps!r}")
    if bound_fn is not None:
        return bound_fn(model, x, eps)
    return _engine()(model, x, eps, method=method, C=C, x_min=x_min, x_max=x_max)


def _engine() -> Callable:
    """``certify.compute_bounds`` (imported lazily: the bound engine is its own module)."""
    try:
        from certify import compute_bounds
    except ImportError:  # re-export not wired yet
        from certify.bounds import compute_bounds
    return compute_bounds


def all_margins_spec(num_classes: int, device: torch.device | str = "cpu") -> Tensor:
    """C (K·K, K) with row (y, j) = e_j − e_y, so C z lists every margin z_j − z_y."""
    eye = torch.eye(num_classes, device=device)
    return (eye.unsqueeze(0) - eye.unsqueeze(1)).reshape(num_classes * num_classes, num_classes)


def prob_bounds(
    model: nn.Module,
    x: Tensor,
    eps: float,
    method: str = "crown",
    margins: bool = False,
    **kwargs,
) -> tuple[Tensor, Tensor]:
    """Sound softmax-probability bounds over the ℓ∞ ball; (n, K) each.

    ``margins=True`` bounds every logit margin z_j − z_y directly (a C matrix for the engine),
    which CROWN makes much tighter than independent logit bounds, at K² specifications.
    """
    if not margins:
        lo, hi = logit_bounds(model, x, eps, method, **kwargs)
        return softmax_bounds(lo, hi)
    if kwargs.get("bound_fn") is not None:
        raise ValueError("margins=True needs the bound engine (a C matrix), not bound_fn")
    with torch.no_grad():
        k = model(x[:1]).shape[1]
    spec = all_margins_spec(k, x.device).to(x.dtype)
    kwargs.pop("bound_fn", None)
    lo, hi = logit_bounds(model, x, eps, method, C=spec, **kwargs)
    return margin_softmax_bounds(hi.reshape(-1, k, k), lo.reshape(-1, k, k))


class RobustConformalClassifier:
    """ℓ∞-robust split CP from bound propagation (VRCP-style, inference-time bounds).

    Calibrated on clean inputs exactly like ``SplitConformalClassifier``; ``predict(x̃)`` returns
    {y : min_{‖x'−x̃‖∞ ≤ ε} s(x', y) ≤ q̂} using sound score bounds. Guarantee: for any attack
    with ‖x̃ − x‖∞ ≤ ε, P(Y ∈ C(x̃)) ≥ 1 − α.

    Args:
        model: network mapping (n, d) inputs to (n, K) logits (a ``torch.nn.Sequential`` that the
            bound engine supports).
        eps: ℓ∞ radius. method: "ibp" | "crown" | "crown-ibp".
        bound_fn: optional replacement for ``certify.compute_bounds``: (model, x, eps) -> (lo, hi).
        x_min, x_max: input domain (the ball is clipped to it).
        margins: bound the logit margins (tighter with CROWN; K² specifications).
        Other arguments as ``SplitConformalClassifier``.
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        score: str = "lac",
        alpha: float = 0.1,
        method: str = "crown",
        bound_fn: BoundFn | None = None,
        x_min: float | Tensor | None = None,
        x_max: float | Tensor | None = None,
        margins: bool = False,
        **score_kwargs,
    ) -> None:
        if not (eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a finite number ≥ 0, got {eps!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.model, self.eps, self.method = model, float(eps), method
        self.bound_kwargs = {"bound_fn": bound_fn, "x_min": x_min, "x_max": x_max}
        self.bound_kwargs["margins"] = margins
        self.cp = SplitConformalClassifier(score=score, alpha=alpha, **score_kwargs)

    def probs(self, x: Tensor) -> Tensor:
        """Softmax of the model at x, (n, K)."""
        with torch.no_grad():
            return torch.softmax(self.model(x), dim=1)

    def calibrate(self, x: Tensor, labels: Tensor) -> RobustConformalClassifier:
        """q̂ from clean calibration inputs (n, d) and labels (n,); returns self."""
        self.cp.calibrate(self.probs(x), labels)
        return self

    def bounds(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Probability bounds over the ε-ball around x; (n, K) each."""
        with torch.no_grad():
            lo, hi = prob_bounds(self.model, x, self.eps, self.method, **self.bound_kwargs)
        return lo.clamp(0, 1), hi.clamp(0, 1)

    def predict(self, x: Tensor) -> Tensor:
        """Robust (n, K) set mask at (possibly attacked) inputs x."""
        lo, hi = self.bounds(x)
        return self.cp.predict_from_bounds(lo, hi)

    def predict_clean(self, x: Tensor) -> Tensor:
        """The plain (non-robust) split CP sets at x."""
        return self.cp.predict(self.probs(x))


# --------------------------------------------------------------------------------------------
# Coverage checks over many random calibration/test splits (vectorised)
# --------------------------------------------------------------------------------------------


def coverage_over_splits(
    cal_scores: Tensor,
    n_cal: int,
    alpha: float,
    n_splits: int = 200,
    test_scores: Tensor | None = None,
    generator: torch.Generator | None = None,
    quantile_fn: Callable[[Tensor, float], Tensor] = conformal_quantile,
) -> Tensor:
    """Test coverage of split CP on ``n_splits`` random calibration/test splits; (n_splits,).

    ``cal_scores`` (N,) are the true-label scores used when a point is in the calibration part;
    ``test_scores`` (N,) (default: the same) decide coverage when it is in the test part — e.g.
    worst-case scores of attacked inputs. y ∈ C(x) ⟺ test score ≤ q̂, so this is the exact
    coverage of the sets. All splits at once: (n_splits, N) permutations.
    """
    test_scores = cal_scores if test_scores is None else test_scores
    n = cal_scores.shape[0]
    check_splits(n, n_cal, n_splits)
    check_alpha(alpha)
    perm = torch.rand(n_splits, n, generator=generator).argsort(dim=1).to(cal_scores.device)
    q = quantile_fn(cal_scores[perm[:, :n_cal]], alpha)  # (n_splits,)
    return (test_scores[perm[:, n_cal:]] <= q[:, None]).float().mean(dim=1)


@dataclass
class CoverageCheck:
    """Outcome of ``check_coverage``: mean coverage, its standard error and the verdict."""

    mean: float
    std_err: float
    lower: float
    upper: float
    ok: bool


def check_coverage(
    coverages: Tensor, alpha: float, n_cal: int, z: float = 4.0, upper: bool = True
) -> CoverageCheck:
    """Is mean coverage within [1 − α − tol, 1 − α + 1/(n+1) + tol]?  tol = z·std/√S.

    The split randomisation makes the expected coverage exactly ≥ 1 − α (and ≤ 1 − α + 1/(n+1)
    for distinct scores); tol is z standard errors of the mean over S splits (z = 4: a correct
    method fails with probability < 1e-4 by the normal approximation). ``upper=False`` checks
    only the lower side (robust methods are conservative by design).
    """
    check_alpha(alpha)
    check_int(n_cal, "n_cal", 1)
    check_real(z, "z", 0.0)
    s = coverages.numel()
    mean = coverages.mean().item()
    se = coverages.std().item() / math.sqrt(s) if s > 1 else 0.0
    tol = z * se + 1e-12
    lo = 1 - alpha - tol
    hi = 1 - alpha + 1 / (n_cal + 1) + tol
    ok = mean >= lo and (mean <= hi or not upper)
    return CoverageCheck(mean, se, lo, hi, ok)


def sets_over_splits(
    cal_scores: Tensor,
    test_scores: Tensor,
    labels: Tensor,
    n_cal: int,
    alpha: float,
    n_splits: int = 200,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Coverage and mean set size on random splits; (n_splits,) each.

    cal_scores (N,): true-label scores used for calibration; test_scores (N, K): every label's
    score on the test side (e.g. lower score bounds at attacked inputs); labels (N,).
    """
    n, k = test_scores.shape
    labels = check_labels(labels, n, k).to(test_scores.device)
    check_splits(n, n_cal, n_splits)
    check_alpha(alpha)
    perm = torch.rand(n_splits, n, generator=generator).argsort(dim=1).to(cal_scores.device)
    q = conformal_quantile(cal_scores[perm[:, :n_cal]], alpha)  # (S,)
    test = perm[:, n_cal:]
    sets = test_scores[test] <= q[:, None, None]  # (S, m, K)
    covered = sets.gather(2, labels[test].unsqueeze(2)).squeeze(2)
    return covered.float().mean(1), sets.float().sum(2).mean(1)
