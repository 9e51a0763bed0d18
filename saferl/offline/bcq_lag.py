"""BCQ-Lag: batch-constrained Q-learning with a PID Lagrangian cost penalty.

Fujimoto, Meger & Precup, "Off-Policy Deep RL without Exploration" (BCQ, ICML 2019), made
cost-aware as in OSRL/DSRL (Liu et al., 2023): a conditional VAE models the behaviour actions,
a perturbation actor moves a decoded action by at most ``Φ`` to maximise ``Q_r − λ Q_c``, and
``λ`` follows a PID controller on ``Q_c`` against the per-step threshold
``κ(1 − γ^L)/((1 − γ)L)``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from saferl.common.lagrangian import PIDLagrangian, PIDLagrangianConfig
from saferl.common.runtime import seeded
from saferl.data.dsrl import DatasetMetadata, validate_data
from saferl.offline.buffer import TransitionBuffer
from saferl.offline.networks import (
    MLP,
    EnsembleMLP,
    ema_update,
    per_step_cost_threshold,
)
from saferl.offline.trainer import AgentBase, fit


@dataclass
class BCQLagConfig:
    """BCQ-Lag hyperparameters; defaults are OSRL's."""

    steps: int = 100_000
    """Gradient steps."""
    batch_size: int = 512
    """Transitions per step."""
    actor_lr: float = 1e-3
    """Adam learning rate of the perturbation actor."""
    critic_lr: float = 1e-3
    """Adam learning rate of Q_r and Q_c."""
    vae_lr: float = 1e-3
    """Adam learning rate of the VAE."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of actor and critics."""
    vae_hidden: tuple[int, ...] = (750, 750)
    """Hidden widths of the VAE encoder and decoder."""
    phi: float = 0.05
    """Largest perturbation Φ of a decoded action."""
    lmbda: float = 0.75
    """Soft clipped double-Q weight of the target (min vs max of the ensemble)."""
    kl_weight: float = 0.5
    """Weight of the VAE's KL term."""
    num_samples: int = 10
    """Decoded actions per next state in the critic target."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate of the targets."""
    cost_limit: float = 10.0
    """Episode cost budget κ."""
    pid: tuple[float, float, float] = (0.1, 0.003, 0.001)
    """PID gains (k_p, k_i, k_d) of the Lagrange multiplier."""
    seed: int = 0
    """Seeds initialisation, minibatches and VAE noise."""
    log_every: int = 1000
    """Steps between logged statistics."""

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.num_samples, self.log_every) < 1:
            raise ValueError(f"steps, batch_size, num_samples, log_every must be >= 1: {self}")
        if not 0.0 < self.gamma < 1.0 or self.cost_limit < 0 or self.phi < 0:
            raise ValueError(f"need 0 < gamma < 1, cost_limit >= 0, phi >= 0: {self}")
        self.hidden, self.vae_hidden, self.pid = (
            tuple(self.hidden),
            tuple(self.vae_hidden),
            tuple(self.pid),
        )


class VAE(nn.Module):
    """Conditional VAE of behaviour actions: ``(s, a) -> z`` and ``(s, z) -> a`` (tanh)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.latent = 2 * act_dim
        self.encoder = MLP(obs_dim + act_dim, 2 * self.latent, hidden)
        self.decoder = MLP(obs_dim + self.latent, act_dim, hidden, squash=True)

    def forward(self, s: torch.Tensor, a: torch.Tensor, noise: torch.Tensor):
        """Reconstruction, mean and std; ``noise`` (B, latent) is the reparameterisation draw."""
        mean, log_std = self.encoder(s, a).chunk(2, dim=-1)
        std = log_std.clamp(-4.0, 15.0).exp()
        return self.decoder(s, mean + std * noise), mean, std

    def decode(self, s: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Decode ``z`` (default: the prior mode, 0) into actions ``(B, act_dim)``."""
        if z is None:
            z = torch.zeros(s.shape[0], self.latent, device=s.device)
        return self.decoder(s, z)


class Perturbation(nn.Module):
    """``ξ_φ(s, a) = clip(a + Φ tanh(f(s, a)), −1, 1)``."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], phi: float) -> None:
        super().__init__()
        self.net = MLP(obs_dim + act_dim, act_dim, hidden, squash=True)
        self.phi = phi

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return (a + self.phi * self.net(s, a)).clamp(-1.0, 1.0)


class BCQLagNets(nn.Module):
    """VAE, perturbation actor, reward and cost critic ensembles and their targets."""

    def __init__(self, obs_dim: int, act_dim: int, config: BCQLagConfig) -> None:
        super().__init__()
        self.vae = VAE(obs_dim, act_dim, config.vae_hidden)
        self.actor = Perturbation(obs_dim, act_dim, config.hidden, config.phi)
        self.q_r = EnsembleMLP(obs_dim + act_dim, 1, config.hidden, 2)
        self.q_c = EnsembleMLP(obs_dim + act_dim, 1, config.hidden, 2)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.q_r_target = copy.deepcopy(self.q_r).requires_grad_(False)
        self.q_c_target = copy.deepcopy(self.q_c).requires_grad_(False)


def vae_loss(
    batch: Mapping[str, torch.Tensor], nets: BCQLagNets, noise: torch.Tensor, kl_weight: float
):
    """Reconstruction MSE + ``kl_weight`` · KL(N(μ, σ²) ‖ N(0, I)); returns ``(loss, stats)``."""
    recon, mean, std = nets.vae(batch["obs"], batch["act"], noise)
    rec = (recon - batch["act"]).square().mean()
    kl = -0.5 * (1 + torch.log(std.square()) - mean.square() - std.square()).mean()
    loss = rec + kl_weight * kl
    return loss, {"losses/vae": loss.detach()}


def soft_clipped(q: torch.Tensor, lmbda: float, pessimistic_high: bool = False) -> torch.Tensor:
    """BCQ's ``λ min_e q + (1 − λ) max_e q`` over ensemble dim 0 (swapped for costs)."""
    lo, hi = q.min(dim=0).values, q.max(dim=0).values
    return lmbda * hi + (1 - lmbda) * lo if pessimistic_high else lmbda * lo + (1 - lmbda) * hi


def critic_loss(
    batch: Mapping[str, torch.Tensor],
    nets: BCQLagNets,
    config: BCQLagConfig,
    generator: torch.Generator | None = None,
):
    """TD loss of both ensembles; the next action is the best (by target ``Q_r``) of
    ``num_samples`` perturbed VAE decodings, used for the reward and the cost target alike.
    ``generator`` draws the decoder's latents."""
    b, n = batch["obs"].shape[0], config.num_samples
    with torch.no_grad():
        s2 = batch["next_obs"].repeat_interleave(n, dim=0)
        z = torch.randn(b * n, nets.vae.latent, device=s2.device, generator=generator)
        z = z.clamp(-0.5, 0.5)
        a2 = nets.actor_target(s2, nets.vae.decode(s2, z))
        q_r2 = soft_clipped(nets.q_r_target(s2, a2), config.lmbda).reshape(b, n)
        q_c2 = soft_clipped(nets.q_c_target(s2, a2), config.lmbda, True).reshape(b, n)
        best = q_r2.argmax(dim=1)
        rows = torch.arange(b, device=s2.device)
        mask = config.gamma * (1.0 - batch["done"])
        target_r = batch["reward"] + mask * q_r2[rows, best]
        target_c = batch["cost"] + mask * q_c2[rows, best]
    q_r = nets.q_r(batch["obs"], batch["act"])
    q_c = nets.q_c(batch["obs"], batch["act"])
    loss_r = (q_r - target_r).square().mean(dim=1).sum()
    loss_c = (q_c - target_c).square().mean(dim=1).sum()
    return loss_r + loss_c, {"losses/q_r": loss_r.detach(), "losses/q_c": loss_c.detach()}


def actor_loss(batch: Mapping[str, torch.Tensor], nets: BCQLagNets, multiplier: float):
    """``−mean(Q_r(s, ξ(s, ã)) − λ Q_c(s, ξ(s, ã)))`` with ``ã`` the VAE's decoded action."""
    s = batch["obs"]
    with torch.no_grad():
        a_vae = nets.vae.decode(s)
    a = nets.actor(s, a_vae)
    q_r = nets.q_r(s, a).min(dim=0).values
    q_c = nets.q_c(s, a).max(dim=0).values
    loss = (-q_r + multiplier * q_c).mean()
    return loss, {"losses/actor": loss.detach(), "values/q_c_pi": q_c.mean().detach()}


class BCQLag(AgentBase):
    """BCQ-Lag agent owning networks, optimisers and the PID multiplier.

    Args:
        obs_dim, act_dim: widths (actions in [−1, 1]).
        config: :class:`BCQLagConfig`.
        horizon: episode length L of the per-step threshold.
        device: torch device; default "cuda" if available else "cpu".
    """

    kind = "bcq_lag"
    config_class = BCQLagConfig
    weights = "nets"

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        config: BCQLagConfig | None = None,
        horizon: int = 1000,
        device: str | torch.device | None = None,
    ) -> None:
        self._setup(obs_dim, act_dim, config, device)
        self.horizon = horizon
        with seeded(self.config.seed):  # initialisation, without reseeding the caller's RNG
            self.nets = BCQLagNets(obs_dim, act_dim, self.config).to(self.device)
        c, n = self.config, self.nets
        self.vae_opt = torch.optim.Adam(n.vae.parameters(), lr=c.vae_lr)
        self.actor_opt = torch.optim.Adam(n.actor.parameters(), lr=c.actor_lr)
        self.critic_opt = torch.optim.Adam(
            [*n.q_r.parameters(), *n.q_c.parameters()], lr=c.critic_lr
        )
        self.lagrangian = PIDLagrangian(PIDLagrangianConfig.plain(*c.pid))
        self.cost_threshold = per_step_cost_threshold(c.cost_limit, c.gamma, horizon)

    def update(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One step of VAE, critics, actor; then the PID multiplier and the targets."""
        c, n = self.config, self.nets
        noise = torch.randn(
            batch["obs"].shape[0], n.vae.latent, device=self.device, generator=self.generator
        )
        stats = {}
        for opt, (loss, s) in (
            (self.vae_opt, vae_loss(batch, n, noise, c.kl_weight)),
            (self.critic_opt, critic_loss(batch, n, c, self.generator)),
        ):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            stats.update(s)
        loss, s = actor_loss(batch, n, self.lagrangian.multiplier)
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        stats.update(s)
        q_c = float(s["values/q_c_pi"])
        if not math.isfinite(q_c):
            raise FloatingPointError(
                f"BCQ-Lag training diverged: the cost value is {q_c} "
                "(rescale rewards/costs or lower the learning rates)"
            )
        self.lagrangian.update(q_c, self.cost_threshold)
        stats["values/lambda"] = torch.tensor(self.lagrangian.multiplier)
        for target, online in (
            (n.q_r_target, n.q_r),
            (n.q_c_target, n.q_c),
            (n.actor_target, n.actor),
        ):
            ema_update(target, online, c.tau)
        return stats

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """``(B, obs_dim) -> (B, act_dim)``: the perturbed VAE mode."""
        obs = np.asarray(obs, dtype=np.float32)
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs must have shape (B, {self.obs_dim}), got {obs.shape}")
        s = torch.as_tensor(obs, device=self.device)
        return self.nets.actor(s, self.nets.vae.decode(s)).cpu().numpy()

    def init_args(self) -> dict[str, Any]:
        return {"horizon": self.horizon}


def train_bcq_lag(
    data: Mapping[str, np.ndarray],
    metadata: DatasetMetadata,
    config: BCQLagConfig | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    writer: Any = None,
) -> tuple[BCQLag, list[dict[str, float]]]:
    """Train BCQ-Lag on a DSRL dict (episode length from ``metadata.max_episode_steps``)."""
    config = config or BCQLagConfig()
    validate_data(data, strict_dtype=False, extra_keys=True)
    obs_dim, act_dim = data["observations"].shape[1], data["actions"].shape[1]
    agent = BCQLag(obs_dim, act_dim, config, metadata.max_episode_steps, device)
    buffer = TransitionBuffer(data, agent.device)

    def batches():
        return (buffer.sample(config.batch_size, agent.generator),)

    return agent, fit(agent, batches, config.steps, config.log_every, "BCQ-Lag", progress, writer)
