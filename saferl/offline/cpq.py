"""CPQ: constraints penalized Q-learning.

Xu, Zhan & Zhu, "Constraints Penalized Q-Learning for Safe Offline Reinforcement Learning"
(AAAI 2022), as OSRL implements it (``osrl/algorithms/cpq.py`` with the defaults of
``examples/configs/cpq_configs.py``; Liu et al., "Datasets and Benchmarks for Offline Safe RL",
2023):

* cost critic (CPQ Sec. 4, the cost critic's objective): TD regression on
  ``c + γ·Q_c'(s', a')``, ``a' ~ π(s')`` (no done mask, as OSRL), minus
  ``α·(E_{a ~ ν} Q_c(s, a) − l_ood)``, where ``ν`` are the policy's actions that a conditional VAE
  of the data finds out of distribution: of ``num_samples`` policy draws per state, those whose
  latent KL ``KL(q(z | s, a) ‖ N(0, I))`` is in the top quarter of the batch (≥ its 0.75-quantile);
  ``α = exp(log α)`` rises while that OOD cost is below ``l_ood = qc_scalar · l``;
* reward critic (CPQ's constraints-penalized Bellman operator):
  ``r + γ(1 − d)·1[Q_c'(s', a') ≤ l]·Q_r'(s', a')`` — the value past an action judged unsafe is cut;
* actor: a tanh-squashed Gaussian maximising ``E[1[Q_c(s, a) ≤ l]·Q_r(s, a)]``, no entropy term;
  acting takes ``tanh`` of its mean;
* ``l = κ(1 − γ^L)/((1 − γ)L)``; rewards × ``reward_scale`` = 0.1; ``num_q`` = 2 members per
  critic, each critic's value the min over its members.

**OSRL's OOD term carries no gradient.** OSRL computes the OOD cost under ``torch.no_grad()`` and
from the *target* cost critic, on actions drawn from the Gaussian *before* tanh, so the
``−α·(...)`` term is a constant in the cost critic's loss: it moves only α, which nothing else
reads. ``ood_gradient=False`` (default) reproduces that, hence the baseline numbers published
with OSRL/DSRL and in FISOR's table. ``ood_gradient=True`` is the paper's update: the online cost
critic, evaluated at squashed policy actions, is pushed up on the OOD ones.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from saferl.common.runtime import seeded
from saferl.data.dsrl import DatasetMetadata, validate_data
from saferl.offline.buffer import TransitionBuffer
from saferl.offline.networks import (
    VAE,
    EnsembleMLP,
    ema_update,
    kl_to_standard_normal,
    mlp,
    per_step_cost_threshold,
)
from saferl.offline.trainer import AgentBase, fit


@dataclass
class CPQConfig:
    """CPQ hyperparameters; defaults are OSRL's (``examples/configs/cpq_configs.py``)."""

    steps: int = 100_000
    """Gradient steps (OSRL ``update_steps``)."""
    batch_size: int = 512
    """Transitions per step."""
    actor_lr: float = 1e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 1e-3
    """Adam learning rate of Q_r and Q_c."""
    alpha_lr: float = 1e-4
    """Step size of the log α update."""
    vae_lr: float = 1e-3
    """Adam learning rate of the VAE."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of actor and critics."""
    vae_hidden: tuple[int, ...] = (400, 400)
    """Hidden widths of the VAE encoder and decoder."""
    kl_weight: float = 0.5
    """Weight β of the VAE's KL term."""
    num_samples: int = 10
    """Policy actions per state for the OOD cost."""
    ood_quantile: float = 0.75
    """Actions with latent KL at or above this quantile of the batch count as OOD."""
    num_q: int = 2
    """Members of the reward and of the cost critic ensemble (each value: their min)."""
    qc_scalar: float = 1.5
    """The OOD cost target is ``qc_scalar`` × the per-step threshold."""
    log_alpha_init: float = 0.0
    """Initial log α."""
    log_alpha_bound: float = 5.0
    """log α is clipped to [−bound, bound] after each update."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate of the target critics."""
    reward_scale: float = 0.1
    """Rewards are multiplied by this before training (OSRL's ``reward_scale``)."""
    cost_limit: float = 10.0
    """Episode cost budget κ."""
    ood_gradient: bool = False
    """True: the paper's cost critic update (gradient through the online Q_c at squashed OOD
    policy actions); False: OSRL's (the OOD term only moves α)."""
    seed: int = 0
    """Seeds initialisation, minibatches and policy noise."""
    log_every: int = 1000
    """Steps between logged statistics."""

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.num_samples, self.num_q, self.log_every) < 1:
            raise ValueError(f"steps, batch_size, num_samples, num_q, log_every must be >= 1: "
                             f"{self}")  # fmt: skip
        if not 0.0 < self.gamma < 1.0 or self.cost_limit < 0 or self.reward_scale <= 0:
            raise ValueError(f"need 0 < gamma < 1, cost_limit >= 0, reward_scale > 0: {self}")
        if not 0.0 <= self.ood_quantile <= 1.0 or self.log_alpha_bound <= 0:
            raise ValueError(f"need ood_quantile in [0, 1] and log_alpha_bound > 0: {self}")
        self.hidden, self.vae_hidden = tuple(self.hidden), tuple(self.vae_hidden)


class SquashedGaussianActor(nn.Module):
    """``a = tanh(u)``, ``u ~ N(μ(s), σ(s)²)``, ``log σ`` clamped to [−20, 2]; a ReLU MLP body
    with a mean and a log-std head (OSRL's ``SquashedGaussianMLPActor``)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.body = nn.Sequential(mlp((obs_dim, *hidden)), nn.ReLU())
        self.head = nn.Linear(hidden[-1], 2 * act_dim)

    def distribution(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the Gaussian before tanh, ``(B, act_dim)`` each."""
        mean, log_std = self.head(self.body(s)).chunk(2, dim=-1)
        return mean, log_std.clamp(-20.0, 2.0).exp()

    def forward(
        self, s: torch.Tensor, generator: torch.Generator | None = None, deterministic=False
    ) -> torch.Tensor:
        """A reparameterised draw ``tanh(μ + σ ε)`` (``tanh μ`` if ``deterministic``), (B, A)."""
        mean, std = self.distribution(s)
        if deterministic:
            return torch.tanh(mean)
        eps = torch.randn(mean.shape, device=mean.device, generator=generator)
        return torch.tanh(mean + std * eps)


class CPQNets(nn.Module):
    """Actor, VAE, reward and cost critic ensembles, their targets and ``log α`` (a buffer)."""

    def __init__(self, obs_dim: int, act_dim: int, config: CPQConfig) -> None:
        super().__init__()
        self.actor = SquashedGaussianActor(obs_dim, act_dim, config.hidden)
        self.vae = VAE(obs_dim, act_dim, config.vae_hidden)
        self.q_r = EnsembleMLP(obs_dim + act_dim, 1, config.hidden, config.num_q)
        self.q_c = EnsembleMLP(obs_dim + act_dim, 1, config.hidden, config.num_q)
        self.q_r_target = copy.deepcopy(self.q_r).requires_grad_(False)
        self.q_c_target = copy.deepcopy(self.q_c).requires_grad_(False)
        self.register_buffer("log_alpha", torch.tensor(float(config.log_alpha_init)))


def vae_loss(batch: Mapping[str, torch.Tensor], nets: CPQNets, noise: torch.Tensor, beta: float):
    """Reconstruction MSE + ``beta`` · mean KL(N(μ, σ²) ‖ N(0, I)); returns ``(loss, stats)``."""
    recon, mean, std = nets.vae(batch["obs"], batch["act"], noise)
    loss = (recon - batch["act"]).square().mean() + beta * kl_to_standard_normal(mean, std).mean()
    return loss, {"losses/vae": loss.detach()}


@torch.no_grad()
def reward_target(
    batch: Mapping[str, torch.Tensor],
    nets: CPQNets,
    config: CPQConfig,
    threshold: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """CPQ's penalized backup ``r + γ(1 − d)·1[min_e Q_c'(s', a') ≤ l]·min_e Q_r'(s', a')``,
    ``a' ~ π(s')``; (B,). The batch's rewards are already scaled."""
    s2 = batch["next_obs"]
    a2 = nets.actor(s2, generator)
    q_next = nets.q_r_target(s2, a2).min(dim=0).values
    safe_next = (nets.q_c_target(s2, a2).min(dim=0).values <= threshold).float()
    return batch["reward"] + config.gamma * (1.0 - batch["done"]) * safe_next * q_next


@torch.no_grad()
def cost_target(
    batch: Mapping[str, torch.Tensor],
    nets: CPQNets,
    config: CPQConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``c + γ·min_e Q_c'(s', a')``, ``a' ~ π(s')`` (no done mask, as OSRL); (B,)."""
    s2 = batch["next_obs"]
    a2 = nets.actor(s2, generator)
    return batch["cost"] + config.gamma * nets.q_c_target(s2, a2).min(dim=0).values


def reward_critic_loss(
    batch: Mapping[str, torch.Tensor],
    nets: CPQNets,
    config: CPQConfig,
    threshold: float,
    generator: torch.Generator | None = None,
):
    """Σ_e MSE of the Q_r members to :func:`reward_target`; returns ``(loss, stats)``."""
    target = reward_target(batch, nets, config, threshold, generator)
    q = nets.q_r(batch["obs"], batch["act"])
    loss = (q - target).square().mean(dim=1).sum()
    return loss, {"losses/q_r": loss.detach()}


def ood_mask(obs: torch.Tensor, actions: torch.Tensor, vae: VAE, quantile: float) -> torch.Tensor:
    """Which of ``actions (N, B, A)`` at ``obs (B, obs_dim)`` are OOD: latent KL (mean over the
    latent dims) at or above its ``quantile`` over all N·B pairs; float mask (N, B)."""
    n, b = actions.shape[:2]
    s = obs.expand(n, b, obs.shape[-1]).reshape(n * b, -1)
    mean, std = vae.encode(s, actions.reshape(n * b, -1))
    kl = kl_to_standard_normal(mean, std).mean(dim=-1).reshape(n, b)
    return (kl >= torch.quantile(kl, quantile)).float()


def ood_cost(
    batch: Mapping[str, torch.Tensor],
    nets: CPQNets,
    config: CPQConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``mean_j 1[OOD]·Q_c(s, a_j)`` over ``num_samples`` policy draws per state, (B,).

    OSRL (``ood_gradient=False``): draws ``u`` before tanh, the target cost critic, no gradient.
    Paper (``ood_gradient=True``): squashed draws, the online cost critic, differentiable in it.
    """
    obs, n = batch["obs"], config.num_samples
    with torch.no_grad():
        mean, std = nets.actor.distribution(obs)
        eps = torch.randn((n, *mean.shape), device=obs.device, generator=generator)
        actions = mean + std * eps  # (N, B, A)
        if config.ood_gradient:
            actions = torch.tanh(actions)
        mask = ood_mask(obs, actions, nets.vae, config.ood_quantile)
    critic = nets.q_c if config.ood_gradient else nets.q_c_target
    with torch.set_grad_enabled(config.ood_gradient and torch.is_grad_enabled()):
        s = obs.expand(n, *obs.shape).reshape(n * obs.shape[0], -1)
        q_c = critic(s, actions.reshape(s.shape[0], -1)).min(dim=0).values.reshape(mask.shape)
    return (mask * q_c).mean(dim=0)


def cost_critic_loss(
    batch: Mapping[str, torch.Tensor],
    nets: CPQNets,
    config: CPQConfig,
    ood_threshold: float,
    generator: torch.Generator | None = None,
):
    """Σ_e MSE(Q_c^e, c + γ·min_e Q_c'(s', a')) − α·(mean OOD cost − l_ood) (CPQ Sec. 4; no done
    mask on the cost backup, as OSRL). ``stats["values/qc_ood"]`` feeds the α update."""
    target = cost_target(batch, nets, config, generator)
    q = nets.q_c(batch["obs"], batch["act"])
    td = (q - target).square().mean(dim=1).sum()
    qc_ood = ood_cost(batch, nets, config, generator).mean()
    loss = td - nets.log_alpha.exp() * (qc_ood - ood_threshold)
    return loss, {"losses/q_c": td.detach(), "values/qc_ood": qc_ood.detach()}


def actor_loss(
    batch: Mapping[str, torch.Tensor],
    nets: CPQNets,
    threshold: float,
    generator: torch.Generator | None = None,
):
    """``−mean 1[Q_c(s, a) ≤ l]·Q_r(s, a)``, ``a ~ π(s)`` reparameterised; ``(loss, stats)``."""
    s = batch["obs"]
    a = nets.actor(s, generator)
    q_r = nets.q_r(s, a).min(dim=0).values
    q_c = nets.q_c(s, a).min(dim=0).values
    safe = (q_c <= threshold).float()
    loss = -(safe * q_r).mean()
    return loss, {
        "losses/actor": loss.detach(),
        "values/q_c_pi": q_c.mean().detach(),
        "values/safe_fraction": safe.mean().detach(),
    }


@torch.no_grad()
def alpha_step(nets: CPQNets, qc_ood: torch.Tensor, ood_threshold: float, config: CPQConfig):
    """``log α += alpha_lr·α·(l_ood − OOD cost)``, clipped to ±``log_alpha_bound`` (OSRL)."""
    la = nets.log_alpha
    la.add_(config.alpha_lr * la.exp() * (ood_threshold - qc_ood))
    la.clamp_(-config.log_alpha_bound, config.log_alpha_bound)


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor, stats: dict) -> dict:
    """One optimiser step on ``loss``; returns ``stats``."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return stats


class CPQ(AgentBase):
    """CPQ agent owning networks, optimisers and α.

    Args:
        obs_dim, act_dim: widths (actions in [−1, 1]).
        config: :class:`CPQConfig`.
        horizon: episode length L of the per-step cost threshold.
        device: torch device; default "cuda" if available else "cpu".
    """

    kind = "cpq"
    config_class = CPQConfig
    weights = "nets"

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        config: CPQConfig | None = None,
        horizon: int = 1000,
        device: str | torch.device | None = None,
    ) -> None:
        self._setup(obs_dim, act_dim, config, device)
        self.horizon = horizon
        with seeded(self.config.seed):  # initialisation, without reseeding the caller's RNG
            self.nets = CPQNets(obs_dim, act_dim, self.config).to(self.device)
        c, n = self.config, self.nets
        self.vae_opt = torch.optim.Adam(n.vae.parameters(), lr=c.vae_lr)
        self.actor_opt = torch.optim.Adam(n.actor.parameters(), lr=c.actor_lr)
        self.reward_opt = torch.optim.Adam(n.q_r.parameters(), lr=c.critic_lr)
        self.cost_opt = torch.optim.Adam(n.q_c.parameters(), lr=c.critic_lr)
        self.cost_threshold = per_step_cost_threshold(c.cost_limit, c.gamma, horizon)
        self.ood_threshold = c.qc_scalar * self.cost_threshold

    def update(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """VAE, reward critic, cost critic (then α), actor, targets: OSRL's order."""
        c, n, g = self.config, self.nets, self.generator
        noise = torch.randn(batch["obs"].shape[0], n.vae.latent, device=self.device, generator=g)
        stats = _step(self.vae_opt, *vae_loss(batch, n, noise, c.kl_weight))
        stats |= _step(self.reward_opt, *reward_critic_loss(batch, n, c, self.cost_threshold, g))
        stats |= _step(self.cost_opt, *cost_critic_loss(batch, n, c, self.ood_threshold, g))
        alpha_step(n, stats["values/qc_ood"], self.ood_threshold, c)
        stats["values/alpha"] = n.log_alpha.exp().detach().clone()
        stats |= _step(self.actor_opt, *actor_loss(batch, n, self.cost_threshold, g))
        ema_update(n.q_r_target, n.q_r, c.tau)
        ema_update(n.q_c_target, n.q_c, c.tau)
        return stats

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """``(B, obs_dim) -> (B, act_dim)``: ``tanh`` of the policy mean (OSRL's evaluation)."""
        obs = np.asarray(obs, dtype=np.float32)
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs must have shape (B, {self.obs_dim}), got {obs.shape}")
        s = torch.as_tensor(obs, device=self.device)
        return self.nets.actor(s, deterministic=True).cpu().numpy()

    def init_args(self) -> dict[str, Any]:
        return {"horizon": self.horizon}


def train_cpq(
    data: Mapping[str, np.ndarray],
    metadata: DatasetMetadata,
    config: CPQConfig | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    writer: Any = None,
) -> tuple[CPQ, list[dict[str, float]]]:
    """Train CPQ on a DSRL dict (episode length from ``metadata.max_episode_steps``; rewards ×
    ``config.reward_scale``)."""
    config = config or CPQConfig()
    validate_data(data, strict_dtype=False, extra_keys=True)
    obs_dim, act_dim = data["observations"].shape[1], data["actions"].shape[1]
    agent = CPQ(obs_dim, act_dim, config, metadata.max_episode_steps, device)
    buffer = TransitionBuffer(data, agent.device, reward_scale=config.reward_scale)

    def batches():
        return (buffer.sample(config.batch_size, agent.generator),)

    return agent, fit(agent, batches, config.steps, config.log_every, "CPQ", progress, writer)
