"""Soft invariance with learned strengths: which candidate symmetries does the data respect?

Beyond the reference (3D-SGRL builds exact subequivariance in). A model f (any policy or
regressor on flat observations) is trained on ``task + sum_k lambda_k d_k`` where, for each
candidate symmetry type k (rotations about the vertical axis, mirroring through the x-z plane),

    d_k = E_x E_{T in G_k} || f(T x) - f(x) ||^2            (non-invariance under G_k)

and the strengths lambda_k = exp(rho_k) are tuned during training by one-step hypergradients on
held-out data (Luketina et al., "Scalable gradient-based tuning of continuous regularization
hyperparameters", ICML 2016): after a step theta' = theta - eta grad(task + sum lambda d), the
held-out loss changes by d L_val / d lambda_k = -eta <grad L_val, grad d_k>, so rho_k moves
up when enforcing symmetry k also lowers the held-out loss and down when it conflicts. Exact
symmetries of the data end with large strengths; approximate ones (e.g. a safety constraint on
a world-fixed half-plane breaks rotations but not the x-z mirror) end with small ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saferl.policies.audit import rotation_z, transform_flat

MIRROR_Y = torch.diag(torch.tensor([1.0, -1.0, 1.0]))


def sample_rotation(batch: int, generator: torch.Generator | None = None) -> Tensor:
    """(batch, 3, 3) rotations about the vertical axis with uniform angles."""
    return rotation_z(2 * math.pi * torch.rand(batch, generator=generator, dtype=torch.float64))


def sample_mirror(batch: int, generator: torch.Generator | None = None) -> Tensor:
    """(batch, 3, 3) copies of the mirror through the x-z plane (y -> -y)."""
    return MIRROR_Y.expand(batch, 3, 3)


CANDIDATES: dict[str, Callable[[int, torch.Generator | None], Tensor]] = {
    "rotation_z": sample_rotation,
    "mirror_xz": sample_mirror,
}
"""Candidate symmetry types: name -> sampler of group elements acting on every limb vector."""


@dataclass
class SoftInvarianceConfig:
    """Strength tuning of the soft-invariance regulariser."""

    init_log_strength: float = 0.0
    """rho_k at the start (lambda_k = exp(rho_k) = 1)."""
    hyper_lr: float = 0.05
    """Step of rho_k per training step, times the smoothed alignment in [-1, 1]."""
    smoothing: float = 0.05
    """EMA coefficient of the gradient alignment cos(grad L_val, grad d_k)."""
    max_log_strength: float = 6.0
    """|rho_k| is clipped to this."""


def non_invariance(model: nn.Module, obs: Tensor, sampler: Callable, gen=None) -> Tensor:
    """d_k: mean squared change of ``model`` outputs when each observation of ``obs``
    (B, flat_dim) is transformed by its own sampled group element."""
    transformed = transform_flat(obs, sampler(obs.shape[0], gen))
    return (model(transformed) - model(obs)).square().flatten(1).sum(-1).mean()


class SoftInvariance:
    """Regulariser ``sum_k exp(rho_k) d_k`` over the candidates with hypergradient-tuned rho.

    Usage per training step (``task_loss`` a callable ``model -> scalar`` on a training batch,
    ``val_loss`` the same on a held-out batch): ``loss, stats = reg.step(model, opt, ...)``.
    """

    def __init__(self, cfg: SoftInvarianceConfig | None = None, candidates=None) -> None:
        self.cfg = cfg or SoftInvarianceConfig()
        self.candidates = dict(candidates or CANDIDATES)
        self.log_strength = {k: self.cfg.init_log_strength for k in self.candidates}
        self.alignment = {k: 0.0 for k in self.candidates}

    def strengths(self) -> dict[str, float]:
        """lambda_k per candidate."""
        return {k: math.exp(r) for k, r in self.log_strength.items()}

    def step(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        obs: Tensor,
        task_loss: Callable[[nn.Module], Tensor],
        val_loss: Callable[[nn.Module], Tensor],
        gen: torch.Generator | None = None,
    ) -> dict[str, float]:
        """One model step on ``task + sum lambda d`` and one hypergradient step on rho."""
        params = [p for p in model.parameters() if p.requires_grad]
        gaps = {k: non_invariance(model, obs, s, gen) for k, s in self.candidates.items()}
        grads_gap = {
            k: torch.autograd.grad(g, params, retain_graph=True, allow_unused=True)
            for k, g in gaps.items()
        }
        grad_val = torch.autograd.grad(val_loss(model), params, allow_unused=True)
        for k in self.candidates:  # sign of dL_val/drho_k = -lr lambda_k <grad L_val, grad d_k>
            pairs = [(a, b) for a, b in zip(grad_val, grads_gap[k], strict=True)
                     if a is not None and b is not None]  # fmt: skip
            dot = sum(float((a * b).sum()) for a, b in pairs)
            norms = math.sqrt(sum(float(a.square().sum()) for a, _ in pairs))
            norms *= math.sqrt(sum(float(b.square().sum()) for _, b in pairs))
            cosine = dot / max(norms, 1e-12)
            self.alignment[k] += self.cfg.smoothing * (cosine - self.alignment[k])
            rho = self.log_strength[k] + self.cfg.hyper_lr * self.alignment[k]
            bound = self.cfg.max_log_strength
            self.log_strength[k] = min(max(rho, -bound), bound)
        task = task_loss(model)
        reg = sum(math.exp(self.log_strength[k]) * g for k, g in gaps.items())
        optimizer.zero_grad()
        (task + reg).backward()
        optimizer.step()
        stats = {"task": float(task.detach())}
        stats.update({f"d/{k}": float(g.detach()) for k, g in gaps.items()})
        stats.update({f"lambda/{k}": v for k, v in self.strengths().items()})
        return stats
