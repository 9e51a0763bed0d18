"""BCQ-Lag: batch-constrained Q-learning with a PID Lagrangian cost penalty.

Fujimoto, Meger & Precup, "Off-Policy Deep RL without Exploration" (BCQ, ICML 2019), made
cost-aware as in OSRL/DSRL (Liu et al., "Datasets and Benchmarks for Offline Safe RL", 2023;
``osrl/algorithms/bcql.py``): a conditional VAE models the behaviour actions, a perturbation
actor moves a decoded action by at most ``Φ`` to maximise ``Q_r − λ (Q_c − d)``, and ``λ``
follows OSRL's PID controller on ``Q_c`` against the per-step threshold
``d = κ(1 − γ^L)/((1 − γ)L)``.

Every point follows OSRL's ``bcql.py`` with the defaults of its ``bcql_configs.py``:

* rewards multiplied by ``reward_scale`` = 0.1 before training (OSRL's ``TransitionDataset``);
* ``num_q`` = 2 reward and 2 cost "double critics", i.e. 4 networks each: members
  ``[0, num_q)`` form ``Q1`` and ``[num_q, 2 num_q)`` form ``Q2``, each the min over its members;
* targets by BCQ's soft clipped double Q-learning (Sec. 4),
  ``λ_b·min(Q1, Q2) + (1 − λ_b)·max(Q1, Q2)`` with λ_b = 0.75, at ``num_samples`` = 10
  perturbed VAE decodings of the next state, maximised over the samples — computed separately
  for the reward and the cost critic, each on its own decodings; the cost backup has no
  ``(1 − done)`` factor (OSRL);
* VAE 400-400, latent ``z ~ N(0, I)`` clamped to [−0.5, 0.5] whenever it decodes (targets,
  actor loss and acting, so acting is stochastic); perturbation actor with Tanh hidden layers;
* actor and PID see ``min`` over all 4 cost networks; the PID multiplier is computed from this
  step's ``Q_c`` of the current actor and used at once, its proportional term
  ``K_P·max(0, e)`` (:meth:`~saferl.common.lagrangian.PIDLagrangianConfig.osrl`).

``deterministic_act`` (off by default) decodes the prior mode ``z = 0`` when acting instead, for
a deterministic policy (e.g. certificates); it is the only switch away from OSRL.
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
from saferl.offline.bounded import FlatPerturbation, one_group
from saferl.offline.buffer import TransitionBuffer
from saferl.offline.networks import (
    MLP,
    VAE,
    EnsembleMLP,
    ema_update,
    kl_to_standard_normal,
    per_step_cost_threshold,
)
from saferl.offline.trainer import AgentBase, fit


@dataclass
class BCQLagConfig:
    """BCQ-Lag hyperparameters; defaults are OSRL's (``examples/configs/bcql_configs.py``)."""

    steps: int = 100_000
    """Gradient steps (OSRL ``update_steps``)."""
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
    vae_hidden: tuple[int, ...] = (400, 400)
    """Hidden widths of the VAE encoder and decoder."""
    latent_clip: float = 0.5
    """Prior latents are clamped to [−latent_clip, latent_clip] when decoding."""
    phi: float = 0.05
    """Largest perturbation Φ of a decoded action."""
    lmbda: float = 0.75
    """Soft clipped double-Q weight λ_b of the targets (BCQ Sec. 4)."""
    kl_weight: float = 0.5
    """Weight β of the VAE's KL term."""
    num_samples: int = 10
    """Decoded actions per next state in the critic targets."""
    num_q: int = 2
    """Members of each half (Q1, Q2) of the reward and of the cost double critic."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate of the targets."""
    reward_scale: float = 0.1
    """Rewards are multiplied by this before training (OSRL's ``reward_scale``)."""
    cost_limit: float = 10.0
    """Episode cost budget κ."""
    pid: tuple[float, float, float] = (0.1, 0.003, 0.001)
    """PID gains (k_p, k_i, k_d) of the Lagrange multiplier."""
    deterministic_act: bool = False
    """Act with the VAE's prior mode z = 0 (False: a clamped latent draw per call, as OSRL)."""
    seed: int = 0
    """Seeds initialisation, minibatches and VAE noise."""
    log_every: int = 1000
    """Steps between logged statistics."""

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.num_samples, self.num_q, self.log_every) < 1:
            raise ValueError(f"steps, batch_size, num_samples, num_q, log_every must be >= 1: "
                             f"{self}")  # fmt: skip
        if not 0.0 < self.gamma < 1.0 or self.cost_limit < 0 or self.phi < 0:
            raise ValueError(f"need 0 < gamma < 1, cost_limit >= 0, phi >= 0: {self}")
        if self.reward_scale <= 0 or self.latent_clip <= 0:
            raise ValueError(f"reward_scale and latent_clip must be > 0: {self}")
        self.hidden, self.vae_hidden, self.pid = (
            tuple(self.hidden),
            tuple(self.vae_hidden),
            tuple(self.pid),
        )


class Perturbation(nn.Module):
    """``ξ_φ(s, a) = clip(a + Φ tanh(f(s, a)), −1, 1)``, ``f`` an MLP with Tanh hidden layers
    (OSRL's ``MLPGaussianPerturbationActor`` as BCQL builds it)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], phi: float) -> None:
        super().__init__()
        self.net = MLP(obs_dim + act_dim, act_dim, hidden, squash=True, activation=nn.Tanh)
        self.phi = phi

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return (a + self.phi * self.net(s, a)).clamp(-1.0, 1.0)

    def certify_structure(self, lo: torch.Tensor, hi: torch.Tensor) -> list:
        """certify's structure protocol: bounded on ``[s, a]`` (:mod:`saferl.offline.bounded`)."""
        return one_group(lo, FlatPerturbation(self))


class BCQLagNets(nn.Module):
    """VAE, perturbation actor, reward and cost double critics (``2·num_q`` members each) and
    their targets."""

    def __init__(self, obs_dim: int, act_dim: int, config: BCQLagConfig) -> None:
        super().__init__()
        members = 2 * config.num_q
        self.vae = VAE(obs_dim, act_dim, config.vae_hidden, config.latent_clip)
        self.actor = Perturbation(obs_dim, act_dim, config.hidden, config.phi)
        self.q_r = EnsembleMLP(obs_dim + act_dim, 1, config.hidden, members)
        self.q_c = EnsembleMLP(obs_dim + act_dim, 1, config.hidden, members)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.q_r_target = copy.deepcopy(self.q_r).requires_grad_(False)
        self.q_c_target = copy.deepcopy(self.q_c).requires_grad_(False)


def vae_loss(
    batch: Mapping[str, torch.Tensor], nets: BCQLagNets, noise: torch.Tensor, kl_weight: float
):
    """Reconstruction MSE + ``kl_weight`` · mean KL(N(μ, σ²) ‖ N(0, I)) (BCQ Sec. 4); returns
    ``(loss, stats)``."""
    recon, mean, std = nets.vae(batch["obs"], batch["act"], noise)
    rec = (recon - batch["act"]).square().mean()
    loss = rec + kl_weight * kl_to_standard_normal(mean, std).mean()
    return loss, {"losses/vae": loss.detach()}


def double_q(q: torch.Tensor, num_q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two halves of a double critic's members ``q (2·num_q, B)``, each its min: (Q1, Q2)."""
    return q[:num_q].min(dim=0).values, q[num_q:].min(dim=0).values


def soft_clipped(q: torch.Tensor, num_q: int, lmbda: float) -> torch.Tensor:
    """BCQ's soft clipped double Q (Sec. 4), ``λ_b·min(Q1, Q2) + (1 − λ_b)·max(Q1, Q2)``, of
    the members ``q (2·num_q, B)``; (B,)."""
    q1, q2 = double_q(q, num_q)
    return lmbda * torch.minimum(q1, q2) + (1 - lmbda) * torch.maximum(q1, q2)


def next_value(
    next_obs: torch.Tensor,
    nets: BCQLagNets,
    q_target: EnsembleMLP,
    config: BCQLagConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``max_i soft_clipped(Q'(s', ξ'(s', a_i)))`` over ``num_samples`` decodings ``a_i`` of each
    next state (drawn here, from ``generator``); shape (B,)."""
    b, n = next_obs.shape[0], config.num_samples
    s2 = next_obs.repeat_interleave(n, dim=0)
    a2 = nets.actor_target(s2, nets.vae.decode(s2, generator=generator))
    return soft_clipped(q_target(s2, a2), config.num_q, config.lmbda).reshape(b, n).max(1).values


@torch.no_grad()
def critic_targets(
    batch: Mapping[str, torch.Tensor],
    nets: BCQLagNets,
    config: BCQLagConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y_r, y_c)``, each (B,): ``y_r = r + γ(1 − d)·V_r(s')`` and ``y_c = c + γ·V_c(s')``
    (no done mask on the cost, as OSRL) with :func:`next_value` on separate decodings. The batch's
    rewards are already scaled (:func:`transitions`)."""
    v_r = next_value(batch["next_obs"], nets, nets.q_r_target, config, generator)
    v_c = next_value(batch["next_obs"], nets, nets.q_c_target, config, generator)
    y_r = batch["reward"] + config.gamma * (1.0 - batch["done"]) * v_r
    return y_r, batch["cost"] + config.gamma * v_c


def critic_loss(
    batch: Mapping[str, torch.Tensor],
    nets: BCQLagNets,
    config: BCQLagConfig,
    generator: torch.Generator | None = None,
):
    """Sum over all members of both double critics of the MSE to :func:`critic_targets`."""
    y_r, y_c = critic_targets(batch, nets, config, generator)
    q_r = nets.q_r(batch["obs"], batch["act"])
    q_c = nets.q_c(batch["obs"], batch["act"])
    loss_r = (q_r - y_r).square().mean(dim=1).sum()
    loss_c = (q_c - y_c).square().mean(dim=1).sum()
    return loss_r + loss_c, {"losses/q_r": loss_r.detach(), "losses/q_c": loss_c.detach()}


def actor_values(
    batch: Mapping[str, torch.Tensor],
    nets: BCQLagNets,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q_r, Q_c)`` at the actor's action ``ξ(s, ã)``, ``ã`` a clamped-latent VAE decoding:
    each the min over all members, (B,), differentiable in the actor."""
    s = batch["obs"]
    with torch.no_grad():
        a_vae = nets.vae.decode(s, generator=generator)
    a = nets.actor(s, a_vae)
    return nets.q_r(s, a).min(dim=0).values, nets.q_c(s, a).min(dim=0).values


def actor_loss(q_r: torch.Tensor, q_c: torch.Tensor, multiplier: float, threshold: float):
    """``−mean Q_r + λ·mean(Q_c − d)`` (OSRL's BCQL actor loss); returns ``(loss, stats)``."""
    penalty = (multiplier * (q_c - threshold)).mean()
    loss = -q_r.mean() + penalty
    return loss, {
        "losses/actor": loss.detach(),
        "losses/qc_penalty": penalty.detach(),
        "values/q_c_pi": q_c.mean().detach(),
    }


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor, stats: dict) -> dict:
    """One optimiser step on ``loss``; returns ``stats``."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return stats


class BCQLag(AgentBase):
    """BCQ-Lag agent owning networks, optimisers and the PID multiplier.

    Args:
        obs_dim, act_dim: widths (actions in [−1, 1]).
        config: :class:`BCQLagConfig`.
        horizon: episode length L of the per-step cost threshold.
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
        self.cost_threshold = per_step_cost_threshold(c.cost_limit, c.gamma, horizon)
        self.lagrangian = PIDLagrangian(PIDLagrangianConfig.osrl(self.cost_threshold, *c.pid))
        # acting draws its latents from a stream of its own, so training leaves it alone
        self.act_generator = torch.Generator(device=self.device).manual_seed(c.seed + 1)

    def update(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One step of VAE, critics, PID multiplier and actor, then the targets (OSRL's order)."""
        c, n = self.config, self.nets
        noise = torch.randn(
            batch["obs"].shape[0], n.vae.latent, device=self.device, generator=self.generator
        )
        stats = _step(self.vae_opt, *vae_loss(batch, n, noise, c.kl_weight))
        stats |= _step(self.critic_opt, *critic_loss(batch, n, c, self.generator))
        q_r, q_c = actor_values(batch, n, self.generator)
        q_c_mean = float(q_c.detach().mean())
        if not math.isfinite(q_c_mean):
            raise FloatingPointError(
                f"BCQ-Lag training diverged: the cost value is {q_c_mean} "
                "(rescale rewards/costs or lower the learning rates)"
            )
        multiplier = self.lagrangian.update(q_c_mean, self.cost_threshold)  # this step's λ
        stats |= _step(self.actor_opt, *actor_loss(q_r, q_c, multiplier, self.cost_threshold))
        stats["values/lambda"] = torch.tensor(multiplier)
        for target, online in (
            (n.q_r_target, n.q_r),
            (n.q_c_target, n.q_c),
            (n.actor_target, n.actor),
        ):
            ema_update(target, online, c.tau)
        return stats

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """``(B, obs_dim) -> (B, act_dim)``: the perturbed VAE decoding of a clamped latent draw
        (OSRL; from :attr:`act_generator`), or of ``z = 0`` with ``deterministic_act``."""
        obs = np.asarray(obs, dtype=np.float32)
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs must have shape (B, {self.obs_dim}), got {obs.shape}")
        s = torch.as_tensor(obs, device=self.device)
        vae = self.nets.vae
        z = None
        if self.config.deterministic_act:
            z = torch.zeros(s.shape[0], vae.latent, device=self.device)
        a = vae.decode(s, z, generator=self.act_generator)
        return self.nets.actor(s, a).cpu().numpy()

    def init_args(self) -> dict[str, Any]:
        return {"horizon": self.horizon}


def transitions(
    data: Mapping[str, np.ndarray], config: BCQLagConfig, device: str | torch.device
) -> TransitionBuffer:
    """The training data as OSRL feeds it: rewards × ``config.reward_scale``, costs as they are."""
    return TransitionBuffer(data, device, reward_scale=config.reward_scale)


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
    buffer = transitions(data, config, agent.device)

    def batches():
        return (buffer.sample(config.batch_size, agent.generator),)

    return agent, fit(agent, batches, config.steps, config.log_every, "BCQ-Lag", progress, writer)
