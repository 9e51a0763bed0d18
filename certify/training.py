"""Certified training: IBP and CROWN-IBP losses, epsilon schedules, kappa mix, IBP initialisation.

References:
* Gowal et al., "On the Effectiveness of Interval Bound Propagation ...", 2018: robust loss on the
  IBP worst case, natural/robust mix ``kappa * L_nat + (1 - kappa) * L_rob`` with kappa 1 -> 0.5.
* Zhang et al., "Towards Stable and Efficient Training of Verifiably Robust Neural Networks"
  (CROWN-IBP), ICLR 2020: margin lower bound ``lb = beta * lb_CROWN-IBP + (1 - beta) * lb_IBP``
  with beta 1 -> 0 as eps ramps up.
* Shi et al., "Fast and Stable Interval Bounds Propagation for Training Verifiably Robust
  Models", NeurIPS 2021: IBP initialisation w ~ N(0, sigma^2), sigma = sqrt(2 pi) / n_in, and a
  short exponential-then-linear ("smoothed") eps warm-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from certify.bounds import compute_bounds


@dataclass
class CertifiedTrainingConfig:
    """Reference defaults for certified training (CROWN-IBP / Shi et al. style)."""

    eps: float = 0.1
    """Target perturbation radius (l_inf)."""
    method: str = "crown-ibp"
    """Bound for the robust loss: 'ibp' or 'crown-ibp' (mixed with IBP by beta)."""
    schedule: str = "smoothed"
    """Eps schedule: 'linear' or 'smoothed' (exponential then linear)."""
    start: int = 0
    """Step at which eps starts growing from 0."""
    length: int = 1000
    """Number of steps over which eps reaches its target."""
    mid: float = 0.25
    """Smoothed schedule: fraction of the ramp spent in the exponential phase."""
    beta: float = 4.0
    """Smoothed schedule: exponent of the first phase."""
    kappa_end: float = 0.5
    """Natural-loss weight at the end of the ramp (starts at 1)."""


class LinearScheduler:
    """eps_t = eps * clip((t - start) / length, 0, 1)."""

    def __init__(self, eps: float, start: int, length: int) -> None:
        if eps < 0 or length <= 0 or start < 0:
            raise ValueError("need eps >= 0, length > 0 and start >= 0")
        self.eps, self.start, self.length = eps, start, length

    def progress(self, t: int) -> float:
        return min(max((t - self.start) / self.length, 0.0), 1.0)

    def __call__(self, t: int) -> float:
        return self.eps * self.progress(t)


class SmoothedScheduler(LinearScheduler):
    """Polynomial growth ``(p / mid)^beta`` up to ``mid``, then linear; value and slope continuous.

    With p the ramp progress in [0, 1] and a = mid / (beta (1 - mid) + mid):
    eps_t = eps * a * (p / mid)^beta for p < mid, else eps * (a + (1 - a)(p - mid)/(1 - mid)).
    """

    def __init__(self, eps: float, start: int, length: int, mid: float = 0.25, beta: float = 4.0):
        super().__init__(eps, start, length)
        if not 0 < mid < 1 or beta < 1:
            raise ValueError("need 0 < mid < 1 and beta >= 1")
        self.mid, self.beta = mid, beta
        self.a = mid / (beta * (1 - mid) + mid)

    def __call__(self, t: int) -> float:
        p = self.progress(t)
        if p < self.mid:
            return self.eps * self.a * (p / self.mid) ** self.beta
        return self.eps * (self.a + (1 - self.a) * (p - self.mid) / (1 - self.mid))


def make_scheduler(cfg: CertifiedTrainingConfig) -> LinearScheduler:
    if cfg.schedule == "linear":
        return LinearScheduler(cfg.eps, cfg.start, cfg.length)
    if cfg.schedule == "smoothed":
        return SmoothedScheduler(cfg.eps, cfg.start, cfg.length, cfg.mid, cfg.beta)
    raise ValueError(f"schedule must be 'linear' or 'smoothed', got {cfg.schedule!r}")


def kappa_at(eps_t: float, eps: float, kappa_end: float = 0.5) -> float:
    """Natural-loss weight: 1 at eps_t = 0 down to ``kappa_end`` at the target eps."""
    frac = 0.0 if eps == 0 else min(eps_t / eps, 1.0)
    return 1.0 - (1.0 - kappa_end) * frac


def beta_at(eps_t: float, eps: float) -> float:
    """CROWN-IBP mixing weight: 1 at eps_t = 0 down to 0 at the target eps."""
    return 1.0 - (0.0 if eps == 0 else min(eps_t / eps, 1.0))


def ibp_init_(model: nn.Module) -> nn.Module:
    """IBP initialisation (Shi et al. 2021): Linear weights ~ N(0, 2 pi / n_in^2), zero bias.

    Keeps the expected IBP box radius roughly constant across ReLU layers at initialisation.
    """
    for m in model.modules():
        if isinstance(m, nn.Linear):
            std = math.sqrt(2 * math.pi) / m.in_features
            with torch.no_grad():
                m.weight.normal_(0.0, std)
                if m.bias is not None:
                    m.bias.zero_()
    return model


def margin_spec(y: Tensor, n_classes: int) -> Tensor:
    """C (B, K, K) with row j = e_y - e_j, so C f = f_y - f_j (row y is zero)."""
    eye = torch.eye(n_classes, device=y.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def _mixed_lower(model, x, eps_t, C, method, beta) -> Tensor:
    """lb = beta * lb_CROWN-IBP + (1 - beta) * lb_IBP (eq. of CROWN-IBP); IBP alone if beta = 0."""
    lb_ibp, _ = compute_bounds(model, x, eps_t, method="ibp", C=C)
    if method == "ibp" or beta <= 0:
        return lb_ibp
    lb_cibp, _ = compute_bounds(model, x, eps_t, method="crown-ibp", C=C)
    return beta * lb_cibp + (1 - beta) * lb_ibp


def robust_classification_loss(
    model: nn.Module, x: Tensor, y: Tensor, eps_t: float, method: str = "ibp", beta: float = 0.0
) -> tuple[Tensor, dict]:
    """Cross-entropy on the worst-case margins: CE(-lb, y) with lb the margin lower bounds."""
    logits = model(x)
    C = margin_spec(y, logits.shape[-1])
    lb = _mixed_lower(model, x, eps_t, C, method, beta)
    loss = F.cross_entropy(-lb, y)
    verified = (lb.masked_fill(C.abs().sum(-1) == 0, float("inf")).amin(-1) > 0).float().mean()
    return loss, {"robust_loss": float(loss.detach()), "verified_acc": float(verified)}


def worst_case_deviation(lower: Tensor, upper: Tensor, ref: Tensor) -> Tensor:
    """max |f(x') - ref| over the certified box, per coordinate: max(u - ref, ref - l) (B, m)."""
    return torch.maximum(upper - ref, ref - lower).clamp(min=0)


def robust_regression_loss(
    model: nn.Module,
    x: Tensor,
    eps_t: float,
    target: Tensor | None = None,
    method: str = "ibp",
    beta: float = 0.0,
) -> tuple[Tensor, dict]:
    """Worst-case loss for regressors and policies.

    With ``target``: worst-case squared error max((u - t)^2, (l - t)^2). Without: the worst-case
    squared deviation from the (detached) clean output, i.e. a smoothness loss for policies.
    """
    out = model(x)
    ref = out.detach() if target is None else target
    lo_i, up_i = compute_bounds(model, x, eps_t, method="ibp")
    if method == "crown-ibp" and beta > 0:
        lo_c, up_c = compute_bounds(model, x, eps_t, method="crown-ibp")
        lo_i, up_i = beta * lo_c + (1 - beta) * lo_i, beta * up_c + (1 - beta) * up_i
    dev = worst_case_deviation(lo_i, up_i, ref)
    loss = (dev**2).mean()
    return loss, {"robust_loss": float(loss.detach()), "max_deviation": float(dev.detach().max())}


def certified_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None,
    step: int,
    cfg: CertifiedTrainingConfig,
    task: str = "classification",
) -> tuple[Tensor, dict]:
    """kappa * natural + (1 - kappa) * robust at the scheduled eps (pure function of its inputs)."""
    eps_t = make_scheduler(cfg)(step)
    kappa = kappa_at(eps_t, cfg.eps, cfg.kappa_end)
    beta = beta_at(eps_t, cfg.eps) if cfg.method == "crown-ibp" else 0.0
    if task == "classification":
        natural = F.cross_entropy(model(x), y)
        robust, stats = robust_classification_loss(model, x, y, eps_t, cfg.method, beta)
    elif task == "regression":
        natural = F.mse_loss(model(x), y) if y is not None else x.new_zeros(())
        robust, stats = robust_regression_loss(model, x, eps_t, y, cfg.method, beta)
    else:
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    loss = kappa * natural + (1 - kappa) * robust
    stats.update(
        {"eps": eps_t, "kappa": kappa, "beta": beta, "natural_loss": float(natural.detach())}
    )
    return loss, stats
