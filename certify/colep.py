"""COLEP: certifiably robust conformal prediction with learning-reasoning components.

Kang, Li, ... & Li, "COLEP: Certifiably Robust Learning-Reasoning Conformal Prediction via
Probabilistic Circuits", ICLR 2024.

Learning: binary "sensors" give probabilities p_k (x is class k; K label sensors) and q_j
(x has attribute j; A attribute sensors). Reasoning: a probabilistic circuit over the Boolean
variables (λ_1..λ_K, a_1..a_A) encodes weighted implication rules λ_i ⇒ a_j (polarity +1) or
λ_i ⇒ ¬a_j (polarity −1) with learnable weights w_ij ≥ 0. An assignment μ has weight

    P(μ) F(μ),  P(μ) = Π_v π_v^{μ_v}(1 − π_v)^{1 − μ_v},  F(μ) = exp(Σ_{ij} w_ij 1[μ ⊨ rule_ij])

and the corrected marginal is π̂_k = Z_1/(Z_0 + Z_1) with Z_b the total weight of assignments with
λ_k = b (COLEP, Eq. 4–5). Rules only link one label to the attributes, so summing out the labels
factorises given the attributes: with e_i(a) = Σ_j w_ij 1[a ⊨ rule_ij] and W_i = Σ_j w_ij,

    Z = Σ_a P(a) Π_i g_i(a),   g_i(a) = (1 − p_i) e^{W_i} + p_i e^{e_i(a)},

a smooth, decomposable circuit (sum over a, products over sensors) evaluated exactly in
O(2^A·K). Several circuits (attribute groups) are averaged, optionally mixed with the raw label
probability by ``raw_weight``.

Conformal sets: for each label sensor k a split-CP threshold q_k on the score 1 − π̂_k; the set
is {k : 1 − π̂_k ≤ q_k}. ``calibration="union"`` calibrates every sensor on all examples
(binary target 1[y = k]) at α/K and bounds the miss probability by the union bound (the
COLEP split of α); ``"classwise"`` calibrates q_k on the examples of class k only at α
(Mondrian CP: P(Y ∈ C) = Σ_k P(Y = k)·P(covered | Y = k) ≥ 1 − α).

Certification (COLEP, Thm. 2): given sound boxes [lo, hi] for every sensor probability under the
attack, each circuit term is a product of non-negative factors each linear in one sensor
probability, so bounding every factor at the box ends bounds every term, and
π̂_k ≥ 1/(1 + Z_0,max/Z_1,min), π̂_k ≤ 1/(1 + Z_0,min/Z_1,max). The robust set
{k : 1 − π̂_k,max ≤ q_k} contains the clean set of any input in the ball ⇒ coverage ≥ 1 − α.
By default we use a bound that is never looser: Z_0 and Z_1 share the weights
w(a) = P(a)·Π_{i≠k} g_i(a), so π̂_k = σ(logit p_k − W_k + log M_k) with M_k the w-weighted mean of
e^{e_k(a)}; the mean is bounded exactly over the boxes of the w(a) (``method="ratio"``; the
Thm. 2 form is ``method="terms"``).
Sensor boxes come from ``certify.compute_bounds`` (ℓ∞) or from randomized smoothing (ℓ2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from certify.conformal import (
    check_alpha,
    check_int,
    check_labels,
    check_real,
    check_splits,
    conformal_quantile,
)

CALIBRATIONS = ("classwise", "union")


@dataclass
class COLEPConfig:
    """COLEP settings (reference defaults)."""

    alpha: float = 0.1
    """Miscoverage level α ∈ (0, 1)."""
    calibration: str = "classwise"
    """"classwise" (Mondrian, α per class) or "union" (α/K per sensor, union bound)."""
    init_weight: float = 1.0
    """Initial rule weight w_ij (learned afterwards by ``fit``)."""
    raw_weight: float = 0.0
    """Mix of the raw label-sensor probability into the corrected one (0: circuits only)."""
    fit_steps: int = 300
    """Adam steps to learn the rule weights."""
    lr: float = 0.05
    """Adam learning rate for the rule weights."""
    max_attributes: int = 14
    """Largest attribute group per circuit (exact inference enumerates 2^A assignments)."""

    def __post_init__(self) -> None:
        check_colep_config(self)


def check_colep_config(cfg: COLEPConfig) -> None:
    """α ∈ (0, 1), a known calibration, weights finite (rule ≥ 0, raw in [0, 1]), steps and
    group size integers ≥ 0, learning rate finite > 0."""
    check_alpha(cfg.alpha)
    if cfg.calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {cfg.calibration!r}")
    check_real(cfg.init_weight, "init_weight", 0.0)
    check_real(cfg.raw_weight, "raw_weight", 0.0, 1.0)
    check_int(cfg.fit_steps, "fit_steps", 0)
    check_real(cfg.lr, "lr", 0.0, open_low=True)
    check_int(cfg.max_attributes, "max_attributes", 0)


PROB_CLIP = 1e-6
"""Sensor probabilities enter the circuits clipped to [1e-6, 1 − 1e-6] (finite logs and
gradients); clipping is monotone, so bounds on clipped inputs stay sound for the same function."""


def _clip(x: Tensor) -> Tensor:
    return x.clamp(PROB_CLIP, 1.0 - PROB_CLIP)


def _log(x: Tensor) -> Tensor:
    return torch.log(x.clamp(min=0.0))


def _log1m(x: Tensor) -> Tensor:
    return torch.log((1.0 - x).clamp(min=0.0))


class ProbabilisticCircuit(nn.Module):
    """One circuit: rules (K, A) in {−1, 0, +1} between labels and one group of attributes.

    ``forward(p (n, K), q (n, A)) -> (n, K)`` corrected label marginals (exact);
    ``bounds(p_lo, p_hi, q_lo, q_hi) -> (lo, hi)`` sound bounds over the sensor boxes.
    """

    def __init__(self, rules: Tensor, init_weight: float = 1.0) -> None:
        super().__init__()
        if rules.dim() != 2 or not torch.isin(rules, torch.tensor([-1, 0, 1])).all():
            raise ValueError("rules must be a (K, A) tensor with entries in {-1, 0, 1}")
        init_weight = check_real(init_weight, "init_weight", 0.0)
        k, a = rules.shape
        self.register_buffer("pos", (rules == 1).float())
        self.register_buffer("neg", (rules == -1).float())
        grid = torch.cartesian_prod(*[torch.tensor([0.0, 1.0])] * a) if a else torch.zeros(1, 0)
        self.register_buffer("assign", grid.reshape(2**a, a))  # (2^A, A)
        raw = math.log(math.expm1(init_weight)) if init_weight > 0 else -10.0
        self.raw_w = nn.Parameter(torch.full((k, a), raw))

    @property
    def weights(self) -> Tensor:
        """w_ij ≥ 0 on the rules that exist, 0 elsewhere; (K, A)."""
        return nn.functional.softplus(self.raw_w) * (self.pos + self.neg)

    def _exponents(self) -> tuple[Tensor, Tensor]:
        """e_i(a) (2^A, K): weight of satisfied rules when λ_i = 1; W_i (K,): all rules."""
        w = self.weights
        e = self.assign @ (w * self.pos).T + (1 - self.assign) @ (w * self.neg).T
        return e, w.sum(1)

    def _attr_log(self, q_one: Tensor, q_zero: Tensor) -> Tensor:
        """log Π_j (a_j ? q_one_j : q_zero_j) for every assignment; (n, 2^A)."""
        a = self.assign.to(torch.bool)
        f = torch.where(a.unsqueeze(0), q_one.unsqueeze(1), q_zero.unsqueeze(1))
        return torch.log(f.clamp(min=0.0)).sum(-1)

    def _log_g(self, p: Tensor, e: Tensor, w_tot: Tensor) -> Tensor:
        """log g_i(a) = log((1 − p_i) e^{W_i} + p_i e^{e_i(a)}); (n, 2^A, K)."""
        return torch.logaddexp(
            (_log1m(p) + w_tot).unsqueeze(1), _log(p).unsqueeze(1) + e.unsqueeze(0)
        )

    @staticmethod
    def _log_z(log_pa: Tensor, log_g_rest: Tensor, log_lam: Tensor, lam_exp: Tensor) -> Tensor:
        """log Σ_a P(a)·(λ_k factor)·Π_{i≠k} g_i(a); (n, K)."""
        terms = log_pa.unsqueeze(2) + log_lam.unsqueeze(1) + lam_exp + log_g_rest
        return torch.logsumexp(terms, dim=1)

    def forward(self, p: Tensor, q: Tensor) -> Tensor:
        e, w_tot = self._exponents()
        log_pa = self._attr_log(q, 1.0 - q)
        log_g = self._log_g(p, e, w_tot)
        rest = log_g.sum(2, keepdim=True) - log_g  # Π_{i≠k} g_i(a)
        z1 = self._log_z(log_pa, rest, _log(p), e.unsqueeze(0))
        z0 = self._log_z(log_pa, rest, _log1m(p), w_tot.view(1, 1, -1))
        return torch.sigmoid(z1 - z0)

    def bounds(
        self, p_lo: Tensor, p_hi: Tensor, q_lo: Tensor, q_hi: Tensor, method: str = "ratio"
    ) -> tuple[Tensor, Tensor]:
        """Sound (lo, hi) on the corrected marginals for sensors anywhere in their boxes.

        ``method="terms"``: COLEP's Thm. 2 form, 1/(1 + Z_0,max/Z_1,min) and 1/(1 + Z_0,min/Z_1,max)
        with every term bounded factor by factor. ``method="ratio"`` (default, never looser):
        π̂_k = σ(logit p_k − W_k + log M_k) with M_k = Σ_a w(a) e^{e_k(a)} / Σ_a w(a),
        w(a) = P(a) Π_{i≠k} g_i(a) shared by Z_0 and Z_1; M_k is a weighted mean, bounded exactly
        over the weight boxes by the threshold solution of the linear-fractional program.
        """
        e, w_tot = self._exponents()
        pa_min = self._attr_log(q_lo, 1.0 - q_hi)
        pa_max = self._attr_log(q_hi, 1.0 - q_lo)
        g_a, g_b = self._log_g(p_lo, e, w_tot), self._log_g(p_hi, e, w_tot)
        g_min, g_max = torch.minimum(g_a, g_b), torch.maximum(g_a, g_b)
        rest_min = g_min.sum(2, keepdim=True) - g_min
        rest_max = g_max.sum(2, keepdim=True) - g_max
        if method == "ratio":
            w_lo, w_hi = pa_min.unsqueeze(2) + rest_min, pa_max.unsqueeze(2) + rest_max
            m_lo, m_hi = _weighted_mean_bounds(w_lo, w_hi, e)
            logit_lo = _log(p_lo) - _log1m(p_lo) - w_tot
            logit_hi = _log(p_hi) - _log1m(p_hi) - w_tot
            return torch.sigmoid(logit_lo + m_lo), torch.sigmoid(logit_hi + m_hi)
        if method != "terms":
            raise ValueError(f"method must be 'ratio' or 'terms', got {method!r}")
        e1, e0 = e.unsqueeze(0), w_tot.view(1, 1, -1)
        z1_min = self._log_z(pa_min, rest_min, _log(p_lo), e1)
        z1_max = self._log_z(pa_max, rest_max, _log(p_hi), e1)
        z0_min = self._log_z(pa_min, rest_min, _log1m(p_hi), e0)
        z0_max = self._log_z(pa_max, rest_max, _log1m(p_lo), e0)
        return torch.sigmoid(z1_min - z0_max), torch.sigmoid(z1_max - z0_min)


def _weighted_mean_bounds(log_w_lo: Tensor, log_w_hi: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """log of min / max of Σ_a w_a e^{v_a} / Σ_a w_a over w_lo ≤ w ≤ w_hi; (n, K) each.

    log_w_*: (n, M, K); v: (M, K). The extremes put the upper weights on the smallest (min) or
    largest (max) values and the lower weights on the rest, at one of M + 1 thresholds.
    """
    order = v.argsort(dim=0)  # ascending values per label
    vs = v.gather(0, order).unsqueeze(0)
    idx = order.unsqueeze(0).expand_as(log_w_lo)
    lo, hi = log_w_lo.gather(1, idx), log_w_hi.gather(1, idx)

    def prefix(x: Tensor) -> Tensor:  # (n, M+1, K): log Σ of the first j entries
        pad = torch.full_like(x[:, :1], -math.inf)
        return torch.cat([pad, torch.logcumsumexp(x, dim=1)], dim=1)

    def suffix(x: Tensor) -> Tensor:  # (n, M+1, K): log Σ of the entries from j on
        return prefix(x.flip(1)).flip(1)

    min_ratio = torch.logaddexp(prefix(hi + vs), suffix(lo + vs)) - torch.logaddexp(
        prefix(hi), suffix(lo)
    )
    max_ratio = torch.logaddexp(prefix(lo + vs), suffix(hi + vs)) - torch.logaddexp(
        prefix(lo), suffix(hi)
    )
    return min_ratio.amin(dim=1), max_ratio.amax(dim=1)


class COLEP(nn.Module):
    """COLEP reasoning + conformal sets over K labels with A attributes.

    Args:
        rules: (K, A) tensor in {−1, 0, +1}: +1 means "label i ⇒ attribute j", −1 means
            "label i ⇒ not attribute j", 0 no rule.
        groups: attribute index lists, one circuit each (default: one circuit, all attributes).
        cfg: ``COLEPConfig``.

    Inputs everywhere: p (n, K) label-sensor probabilities, q (n, A) attribute-sensor ones.
    """

    def __init__(
        self,
        rules: Tensor,
        groups: Sequence[Sequence[int]] | None = None,
        cfg: COLEPConfig | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg or COLEPConfig()
        check_colep_config(self.cfg)
        rules = torch.as_tensor(rules)
        self.num_labels, self.num_attributes = rules.shape
        groups = [list(range(self.num_attributes))] if groups is None else [list(g) for g in groups]
        for g in groups:
            if len(g) > self.cfg.max_attributes or any(not 0 <= j < rules.shape[1] for j in g):
                raise ValueError(
                    f"each group must list ≤ {self.cfg.max_attributes} attribute indices in "
                    f"[0, {rules.shape[1]}), got {g}"
                )
        self.groups = groups
        self.circuits = nn.ModuleList(
            ProbabilisticCircuit(rules[:, g].long(), self.cfg.init_weight) for g in groups
        )
        self.register_buffer("q_hat", torch.full((self.num_labels,), math.nan))

    def _check(self, p: Tensor, q: Tensor) -> None:
        n = p.shape[0]
        if p.shape != (n, self.num_labels) or q.shape != (n, self.num_attributes):
            raise ValueError(
                f"expected label probabilities (n, {self.num_labels}) and attribute "
                f"probabilities (n, {self.num_attributes}); got {tuple(p.shape)}, {tuple(q.shape)}"
            )
        for t in (p, q):
            if not torch.isfinite(t).all() or (t < 0).any() or (t > 1).any():
                raise ValueError("sensor probabilities must be finite and lie in [0, 1]")

    def forward(self, p: Tensor, q: Tensor) -> Tensor:
        """Corrected label probabilities π̂ (n, K)."""
        self._check(p, q)
        pc, qc = _clip(p), _clip(q)
        pairs = zip(self.circuits, self.groups, strict=True)
        corr = torch.stack([c(pc, qc[:, g]) for c, g in pairs]).mean(0)
        return self.cfg.raw_weight * p + (1 - self.cfg.raw_weight) * corr

    def bounds(
        self, p_lo: Tensor, p_hi: Tensor, q_lo: Tensor, q_hi: Tensor, method: str = "ratio"
    ) -> tuple[Tensor, Tensor]:
        """Sound bounds (n, K) each on π̂ for any sensor values inside the boxes (see
        ``ProbabilisticCircuit.bounds`` for ``method``)."""
        self._check(p_lo, q_lo)
        self._check(p_hi, q_hi)
        cp_lo, cp_hi, cq_lo, cq_hi = _clip(p_lo), _clip(p_hi), _clip(q_lo), _clip(q_hi)
        b = [
            c.bounds(cp_lo, cp_hi, cq_lo[:, g], cq_hi[:, g], method)
            for c, g in zip(self.circuits, self.groups, strict=True)
        ]
        lo = torch.stack([x[0] for x in b]).mean(0)
        hi = torch.stack([x[1] for x in b]).mean(0)
        r = self.cfg.raw_weight
        return r * p_lo + (1 - r) * lo, r * p_hi + (1 - r) * hi

    def fit(self, p: Tensor, q: Tensor, labels: Tensor) -> list[float]:
        """Learn the rule weights by binary cross-entropy of π̂_k vs 1[y = k]; returns losses.

        Use data held out from calibration (the conformal guarantee needs the weights fixed
        before calibrating).
        """
        check_colep_config(self.cfg)
        labels = check_labels(labels, p.shape[0], self.num_labels).to(p.device)
        target = nn.functional.one_hot(labels, self.num_labels).to(p.dtype)
        opt = torch.optim.Adam(self.parameters(), lr=self.cfg.lr)
        losses = []
        for _ in range(self.cfg.fit_steps):
            opt.zero_grad()
            pi = self(p, q).clamp(1e-6, 1 - 1e-6)
            loss = nn.functional.binary_cross_entropy(pi, target)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    # ---------------------------------------------------------------- conformal calibration

    def calibrate(self, p: Tensor, q: Tensor, labels: Tensor) -> COLEP:
        """Per-sensor thresholds q̂_k (K,) from clean calibration sensor outputs; returns self."""
        if p.shape[0] < 1:
            raise ValueError("the calibration set is empty; expected at least one example")
        labels = check_labels(labels, p.shape[0], self.num_labels).to(p.device)
        with torch.no_grad():
            pi = self(p, q)
        self.q_hat = sensor_thresholds(pi.unsqueeze(0), labels.unsqueeze(0), self.cfg)[0]
        return self

    def _require(self) -> Tensor:
        if torch.isnan(self.q_hat).any():
            raise RuntimeError("call calibrate(p, q, labels) before predict")
        return self.q_hat

    def predict(self, p: Tensor, q: Tensor) -> Tensor:
        """(n, K) bool label sets {k : 1 − π̂_k ≤ q̂_k}."""
        q_hat = self._require()
        with torch.no_grad():
            return 1.0 - self(p, q) <= q_hat

    def predict_from_bounds(self, p_lo: Tensor, p_hi: Tensor, q_lo: Tensor, q_hi: Tensor) -> Tensor:
        """Certified sets {k : 1 − π̂_k,max ≤ q̂_k} from sensor boxes (coverage ≥ 1 − α)."""
        q_hat = self._require()
        with torch.no_grad():
            _, hi = self.bounds(p_lo, p_hi, q_lo, q_hi)
        return 1.0 - hi <= q_hat


def sensor_thresholds(pi: Tensor, labels: Tensor, cfg: COLEPConfig) -> Tensor:
    """Thresholds q̂ (S, K) from S calibration sets at once: pi (S, n, K), labels (S, n).

    "union": q̂_k over scores 1 − π̂_k (y = k) or π̂_k (y ≠ k) of all n examples at α/K.
    "classwise": q̂_k over 1 − π̂_k of the n_k examples with y = k at α (+∞ if n_k is too small).
    """
    check_colep_config(cfg)
    alpha = cfg.alpha
    k = pi.shape[-1]
    onehot = nn.functional.one_hot(labels, k).bool()  # (S, n, K)
    if cfg.calibration == "union":
        scores = torch.where(onehot, 1.0 - pi, pi).transpose(1, 2)  # (S, K, n)
        return conformal_quantile(scores, alpha / k)
    scores = torch.where(onehot, 1.0 - pi, math.inf).transpose(1, 2)  # other classes at +∞
    sorted_s, _ = scores.sort(dim=-1)
    n_k = onehot.sum(1)  # (S, K)
    rank = torch.ceil((n_k + 1) * (1.0 - alpha) - 1e-9).long()  # conformal_rank, batched
    idx = (rank - 1).clamp(min=0, max=sorted_s.shape[-1] - 1)
    q = sorted_s.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    return torch.where(rank <= n_k, q, torch.full_like(q, math.inf))


def coverage_over_splits(
    pi_clean: Tensor,
    pi_test_hi: Tensor,
    labels: Tensor,
    n_cal: int,
    cfg: COLEPConfig,
    n_splits: int = 200,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Coverage and mean set size of COLEP sets on random calibration/test splits; (S,) each.

    pi_clean (N, K): corrected probabilities on clean inputs (calibration side); pi_test_hi (N, K):
    what the test side uses (the clean values again, or certified upper bounds at attacked inputs).
    """
    n = pi_clean.shape[0]
    check_splits(n, n_cal, n_splits)
    check_colep_config(cfg)
    perm = torch.rand(n_splits, n, generator=generator).argsort(dim=1).to(pi_clean.device)
    cal, test = perm[:, :n_cal], perm[:, n_cal:]
    q = sensor_thresholds(pi_clean[cal], labels[cal], cfg)  # (S, K)
    sets = 1.0 - pi_test_hi[test] <= q.unsqueeze(1)  # (S, m, K)
    covered = sets.gather(2, labels[test].unsqueeze(2)).squeeze(2)
    return covered.float().mean(1), sets.float().sum(2).mean(1)


# ------------------------------------------------------------------------------------- sensors


SensorModels = nn.Module | Sequence[nn.Module]


def _as_list(sensors: SensorModels) -> list[nn.Module]:
    return list(sensors) if isinstance(sensors, Sequence | nn.ModuleList) else [sensors]


def sensor_logits(sensors: SensorModels, x: Tensor) -> Tensor:
    """Concatenated sensor logits (n, S): each model outputs (n, s_i) independent binary logits."""
    with torch.no_grad():
        return torch.cat([m(x).reshape(x.shape[0], -1) for m in _as_list(sensors)], dim=1)


def sensor_probs(sensors: SensorModels, x: Tensor) -> Tensor:
    """Sensor probabilities σ(logits), (n, S)."""
    return torch.sigmoid(sensor_logits(sensors, x))


def sensor_bounds_linf(
    sensors: SensorModels,
    x: Tensor,
    eps: float,
    method: str = "crown",
    bound_fn: Callable | None = None,
    **kwargs,
) -> tuple[Tensor, Tensor]:
    """Sound sensor-probability boxes over the ℓ∞ ball (σ is monotone); (n, S) each."""
    from certify.conformal import logit_bounds

    lows, highs = [], []
    with torch.no_grad():
        for m in _as_list(sensors):
            lo, hi = logit_bounds(m, x, eps, method, bound_fn=bound_fn, **kwargs)
            lows.append(lo.reshape(x.shape[0], -1))
            highs.append(hi.reshape(x.shape[0], -1))
    return torch.sigmoid(torch.cat(lows, 1)), torch.sigmoid(torch.cat(highs, 1))
