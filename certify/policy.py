"""Certificates for deterministic policies under l_inf observation perturbations.

* Action bounds [a_lo, a_hi] for every state and action coordinate, certified deviation
  max_i max |pi(s')_i - pi(s)_i| over the ball, and the fraction of states certified within delta
  (cf. the per-state action robustness of CROP, Wu et al. ICLR 2022, here deterministic via bounds).
* Feasibility certificate: a cost critic Q_h(s, a) (e.g. FISOR's feasibility value) bounded over the
  observation ball x the certified action box; Q_h upper bound <= threshold (0) means the policy's
  action is certified feasible under every perturbation within eps.

Stable-Baselines3 actors are supported through :func:`as_actor_module` (TD3/DDPG ``policy.actor``:
features extractor + ``mu`` ending in Tanh; SAC: features extractor + ``latent_pi`` + ``mu`` + tanh
squashing of the deterministic mean). Actions live in the squashed [-1, 1] space unless
``action_low``/``action_high`` are given (SB3's affine rescaling is monotone, so bounds map).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from certify.bounds import compute_bounds
from certify.bounds.structured import HOOK


def as_actor_module(actor: nn.Module) -> nn.Module:
    """A deterministic ``obs -> action`` module for bounding (SB3 actors adapted; others as-is).

    An SB3 actor whose ``mu`` is a whole policy network on flattened observations (one that
    implements the structure protocol of :mod:`certify.bounds.structured`, and whose output is
    the deterministic action) is bounded as that network."""
    has = lambda *names: all(hasattr(actor, n) for n in names)  # noqa: E731
    if has("features_extractor", "mu") and _flattens(actor.features_extractor):
        if hasattr(actor.mu, HOOK):
            return actor.mu
    if has("features_extractor", "latent_pi", "mu", "action_dist"):  # SB3 SAC actor
        return nn.Sequential(actor.features_extractor, actor.latent_pi, actor.mu, nn.Tanh())
    if has("features_extractor", "mu") and isinstance(actor.mu, nn.Sequential):  # SB3 TD3/DDPG
        return nn.Sequential(actor.features_extractor, actor.mu)
    return actor


def _flattens(extractor: nn.Module) -> bool:
    """An SB3 features extractor that only flattens (``FlattenExtractor``, ``nn.Flatten``)."""
    if isinstance(extractor, nn.Flatten):
        return True
    children = list(extractor.children())
    return len(children) == 1 and isinstance(children[0], nn.Flatten)


def _action_range(low, high, like: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(action_low, action_high)`` as tensors like ``like`` (None: the squashed [-1, 1])."""
    if low is None and high is None:
        return None
    if low is None or high is None:
        raise ValueError("give both action_low and action_high (or neither)")
    low_t = torch.as_tensor(low, dtype=like.dtype, device=like.device)
    high_t = torch.as_tensor(high, dtype=like.dtype, device=like.device)
    if not (torch.isfinite(low_t).all() and torch.isfinite(high_t).all()):
        raise ValueError("action_low and action_high must be finite (got NaN or inf)")
    if (high_t < low_t).any():
        raise ValueError("action_high must be >= action_low")
    return low_t, high_t


def _rescale(lo: Tensor, hi: Tensor, rng: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    if rng is None:
        return lo, hi
    low_t, high_t = rng
    scale = (high_t - low_t) / 2
    return low_t + (lo + 1) * scale, low_t + (hi + 1) * scale


def action_bounds(
    actor: nn.Module,
    obs: Tensor,
    eps: float | Tensor,
    method: str = "crown",
    x_min=None,
    x_max=None,
    action_low=None,
    action_high=None,
) -> tuple[Tensor, Tensor]:
    """Bounds (B, act_dim) on the action for every observation in the l_inf ball of radius eps."""
    rng = _action_range(action_low, action_high, obs)
    net = as_actor_module(actor)
    with torch.no_grad():
        lo, hi = compute_bounds(net, obs, eps, method=method, x_min=x_min, x_max=x_max)
    return _rescale(lo, hi, rng)


def nominal_action(actor: nn.Module, obs: Tensor, action_low=None, action_high=None) -> Tensor:
    rng = _action_range(action_low, action_high, obs)
    net = as_actor_module(actor)
    with torch.no_grad():
        a = net(obs)
    return _rescale(a, a, rng)[0]


def certified_deviation(actor: nn.Module, obs: Tensor, eps, method: str = "crown", **kw) -> Tensor:
    """(B,) upper bound on max_i |pi(s')_i - pi(s)_i| over the ball (sound)."""
    lo, hi = action_bounds(actor, obs, eps, method, **kw)
    a = nominal_action(actor, obs, kw.get("action_low"), kw.get("action_high"))
    return torch.maximum(hi - a, a - lo).amax(-1)


def fraction_certified(
    actor: nn.Module, obs: Tensor, eps, delta: float, method: str = "crown", **kw
) -> float:
    """Fraction of states whose certified deviation is at most ``delta``."""
    if not (delta >= 0 and math.isfinite(delta)):
        raise ValueError(f"delta must be a finite number >= 0, got {delta!r}")
    return float((certified_deviation(actor, obs, eps, method, **kw) <= delta).float().mean())


class ConcatCritic(nn.Module):
    """``z = [obs, action] -> Q`` from a critic on the concatenation; SB3 critics use q-net 0."""

    def __init__(self, critic: nn.Module, obs_dim: int, index: int = 0) -> None:
        super().__init__()
        q_networks = getattr(critic, "q_networks", None)
        self.net = q_networks[index] if q_networks is not None else critic
        self.obs_dim = obs_dim

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)

    def certify_structure(self, lo: Tensor, hi: Tensor):
        """The wrapped critic's structure protocol (:mod:`certify.bounds.structured`), if any."""
        hook = getattr(self.net, HOOK, None)
        return None if hook is None else hook(lo, hi)


@dataclass
class FeasibilityCertificate:
    """Per-state results: Q_h bounds over ball x action box and the certified flag."""

    q_lower: Tensor
    q_upper: Tensor
    action_lower: Tensor
    action_upper: Tensor
    certified: Tensor

    @property
    def fraction(self) -> float:
        return float(self.certified.float().mean())


def feasibility_certificate(
    critic: nn.Module,
    actor: nn.Module,
    obs: Tensor,
    eps: float | Tensor,
    method: str = "crown",
    threshold: float = 0.0,
    x_min=None,
    x_max=None,
) -> FeasibilityCertificate:
    """Bound ``critic([s', a'])`` over s' in the ball, a' in the certified action box.

    ``critic`` maps the concatenation (B, obs_dim + act_dim) to (B, 1) (wrap an SB3 critic or a
    two-input critic with :class:`ConcatCritic`). certified = q_upper <= threshold.
    """
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    a_lo, a_hi = action_bounds(actor, obs, eps, method, x_min, x_max)
    with torch.no_grad():
        o = obs.reshape(obs.shape[0], -1)
        e = torch.broadcast_to(torch.as_tensor(eps, dtype=o.dtype, device=o.device), obs.shape)
        o_lo, o_hi = o - e.reshape(o.shape), o + e.reshape(o.shape)
        if x_min is not None:
            o_lo = torch.maximum(o_lo, torch.as_tensor(x_min, dtype=o.dtype, device=o.device))
        if x_max is not None:
            o_hi = torch.minimum(o_hi, torch.as_tensor(x_max, dtype=o.dtype, device=o.device))
        z_lo, z_hi = torch.cat([o_lo, a_lo], 1), torch.cat([o_hi, a_hi], 1)
        q_lo, q_hi = compute_bounds(critic, (z_lo, z_hi), method=method)
    return FeasibilityCertificate(q_lo[:, 0], q_hi[:, 0], a_lo, a_hi, q_hi[:, 0] <= threshold)
