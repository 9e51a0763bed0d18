"""FISOR: safe offline RL with a feasibility-guided diffusion model.

Zheng, Li, Yu, et al., "Safe Offline Reinforcement Learning with Feasibility-Guided Diffusion
Model", ICLR 2024. Three parts, trained together from one dataset:

1. Feasible value (Hamilton-Jacobi reachability, Sec. 3.2/4.1): ``Q_h`` (2-member ensemble,
   pessimistic max) regresses on ``(1−γ)h + γ max(h, V_h(s'))`` and ``V_h`` on ``Q_h`` by
   *reversed* expectile regression; ``{V_h ≤ 0}`` is the largest feasible region in the data.
2. Reward critic (IQL, Kostrikov et al. 2022): ``V_r`` by expectile regression on ``min Q_r``,
   ``Q_r`` on ``r + γ(1−d)V_r(s')``.
3. Policy extraction (Sec. 4.2, Eq. 11–13): a diffusion policy trained by weighted behaviour
   cloning — inside the feasible region the weight is ``exp(α_r (Q_r − V_r))`` (maximise reward),
   outside it ``exp(α_h (V_h − Q_h))`` (reduce the constraint violation fastest), zero on actions
   that leave the feasible region. At test time ``N`` candidates are sampled and the one with the
   smallest target-network ``Q_h`` is taken (the official code's ``eval_actions`` scores them with
   ``safe_target_critic``).

The diffusion model is DDPM with ``T = 5`` steps and the discrete VP schedule, run by diffusers'
``DDPMScheduler`` over our noise network :class:`~saferl.offline.networks.LNResNetNoise`.

Optimisers as the official code (``jaxrl5/agents/fisor/fisor.py``, ``configs/train_config.py``):
Adam for critics and values; AdamW with weight decay 0 for the actor, its learning rate on
``optax.cosine_decay_schedule(3e-4, decay_steps=3e6)`` counted in actor updates. The schedule
length is a fixed number of actor updates, not a fraction of the budget: the reference keeps
3e6 at its 1e6 iterations × 2 actor updates (ending at 0.25× the initial rate) and at its 1e5
iterations on PointRobot alike, so a short run here decays exactly as far as the reference's
first iterations do.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler
from torch import nn

from saferl.common.runtime import TorchRNG, seeded
from saferl.data.dsrl import DatasetMetadata, validate_data
from saferl.offline.buffer import TransitionBuffer
from saferl.offline.networks import MLP, EnsembleMLP, LNResNetNoise, ema_update
from saferl.offline.trainer import AgentBase, fit


@dataclass
class FISORConfig:
    """FISOR hyperparameters; defaults are the paper's / official code's reference values."""

    steps: int = 1_000_000
    """Training steps (each: one critic/value update and ``actor_splits`` actor updates)."""
    critic_batch_size: int = 256
    """Transitions per critic and value update."""
    actor_batch_size: int = 2048
    """Transitions per iteration for the actor, split into ``actor_splits`` updates."""
    actor_splits: int = 2
    """Number of actor updates the actor batch is split into (2 × 1024 in the paper)."""
    critic_lr: float = 3e-4
    """Adam learning rate of Q_r, V_r, Q_h and V_h."""
    actor_lr: float = 3e-4
    """AdamW learning rate of the noise network (cosine-decayed over ``actor_decay_steps``)."""
    actor_weight_decay: float = 0.0
    """AdamW weight decay of the noise network (reference: ``actor_weight_decay=None`` → 0)."""
    actor_decay_steps: int | None = 3_000_000
    """Actor updates over which the learning rate decays by a cosine to 0 and then stays 0; a
    fixed length whatever ``steps`` is (reference ``decay_steps=int(3e6)``); None: constant."""
    gamma: float = 0.99
    """Discount factor."""
    target_tau: float = 0.005
    """Polyak rate of the target critics."""
    reward_expectile: float = 0.9
    """Expectile τ of V_r (IQL)."""
    feasibility_expectile: float = 0.9
    """Expectile τ of the reversed expectile regression of V_h."""
    cost_scale: float = 25.0
    """h(s) = +cost_scale where cost > 0, else −1."""
    reward_temperature: float = 3.0
    """α_r in the feasible weight clip(exp(α_r (Q_r − V_r)), 0, feasible_weight_max)."""
    feasible_weight_max: float = 100.0
    """Upper clip of the feasible weight."""
    cost_temperature: float = 5.0
    """α_h in the infeasible weight clip(exp(α_h (V_h − Q_h)), 0, infeasible_weight_max)."""
    infeasible_weight_max: float = 150.0
    """Upper clip of the infeasible weight."""
    scale_rewards: bool = True
    """Rescale rewards by max_episode_steps / (R_max − R_min)."""
    diffusion_steps: int = 5
    """T, the number of DDPM steps."""
    beta_min: float = 0.1
    """b_min of the VP schedule."""
    beta_max: float = 10.0
    """b_max of the VP schedule."""
    actor_width: int = 256
    """Width of the LN-ResNet backbone."""
    actor_blocks: int = 3
    """Residual blocks of the LN-ResNet."""
    actor_dropout: float = 0.1
    """Dropout in each residual block."""
    time_dim: int = 64
    """Fourier features of the diffusion time."""
    critic_hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of every critic and value MLP."""
    ensemble: int = 2
    """Members of the Q_r and Q_h ensembles."""
    actor_ema: float = 0.001
    """EMA rate of the sampling actor."""
    num_candidates: int = 16
    """N, actions sampled per state at test time (the one with least Q_h is taken)."""
    seed: int = 0
    """Seeds torch for initialisation, minibatches and diffusion noise."""
    log_every: int = 1000
    """Steps between logged statistics."""

    def __post_init__(self) -> None:
        positive = (
            "steps",
            "critic_batch_size",
            "actor_batch_size",
            "actor_splits",
            "diffusion_steps",
            "ensemble",
            "num_candidates",
            "log_every",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"FISORConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.actor_decay_steps is not None and self.actor_decay_steps < 1:
            raise ValueError(f"FISORConfig.actor_decay_steps must be >= 1 or None, "
                             f"got {self.actor_decay_steps}")  # fmt: skip
        if self.actor_weight_decay < 0:
            raise ValueError(f"FISORConfig.actor_weight_decay must be >= 0, "
                             f"got {self.actor_weight_decay}")  # fmt: skip
        if self.actor_batch_size % self.actor_splits:
            raise ValueError("actor_batch_size must be divisible by actor_splits")
        for name in ("gamma", "reward_expectile", "feasibility_expectile"):
            if not 0.0 < getattr(self, name) < 1.0:
                value = getattr(self, name)
                raise ValueError(f"FISORConfig.{name} must lie in (0, 1), got {value}")
        if not 0.0 < self.beta_min < self.beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {self.beta_min}, {self.beta_max}")
        self.critic_hidden = tuple(self.critic_hidden)


# ---------------------------------------------------------------------------------------------
# Diffusion schedule


def vp_betas(steps: int = 5, beta_min: float = 0.1, beta_max: float = 10.0) -> np.ndarray:
    """Discrete VP schedule ``β_t = 1 − exp(−b_min/T − ½(b_max − b_min)(2t − 1)/T²)``, t = 1..T.

    (Song et al. 2021's VP SDE discretised as in IDQL/FISOR.) Shape ``(T,)``, float64.
    """
    t = np.arange(1, steps + 1, dtype=np.float64)
    return 1.0 - np.exp(-beta_min / steps - 0.5 * (beta_max - beta_min) * (2 * t - 1) / steps**2)


def make_scheduler(config: FISORConfig) -> DDPMScheduler:
    """diffusers' DDPM with the VP betas, ε-prediction and x₀ clipped to [−1, 1]."""
    betas = vp_betas(config.diffusion_steps, config.beta_min, config.beta_max)
    scheduler = DDPMScheduler(
        num_train_timesteps=config.diffusion_steps,
        trained_betas=betas.tolist(),
        clip_sample=True,
        clip_sample_range=1.0,
        prediction_type="epsilon",
        variance_type="fixed_small",
    )
    scheduler.set_timesteps(config.diffusion_steps)
    return scheduler


def cosine_decay(step: int, decay_steps: int | None) -> float:
    """Learning-rate factor after ``step`` updates: ``½(1 + cos(π·min(step, D)/D))`` (optax's
    ``cosine_decay_schedule`` with ``alpha = 0``), 1 when ``D = decay_steps`` is None."""
    if decay_steps is None:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step, decay_steps) / decay_steps))


# ---------------------------------------------------------------------------------------------
# Networks


class FISORNets(nn.Module):
    """All FISOR networks: reward critic/value, feasibility critic/value, actor and its EMA."""

    def __init__(self, obs_dim: int, act_dim: int, config: FISORConfig) -> None:
        super().__init__()
        h, e = config.critic_hidden, config.ensemble
        self.q_r = EnsembleMLP(obs_dim + act_dim, 1, h, e)
        self.v_r = MLP(obs_dim, 1, h)
        self.q_h = EnsembleMLP(obs_dim + act_dim, 1, h, e)
        self.v_h = MLP(obs_dim, 1, h)
        self.actor = LNResNetNoise(
            obs_dim,
            act_dim,
            config.actor_width,
            config.actor_blocks,
            config.time_dim,
            dropout=config.actor_dropout,
        )
        self.q_r_target = copy.deepcopy(self.q_r).requires_grad_(False)
        self.q_h_target = copy.deepcopy(self.q_h).requires_grad_(False)
        self.actor_ema = copy.deepcopy(self.actor).requires_grad_(False).eval()


# ---------------------------------------------------------------------------------------------
# Losses (pure: (batch, nets) -> (loss, stats))


def constraint_signal(cost: torch.Tensor, cost_scale: float = 25.0) -> torch.Tensor:
    """``h = +cost_scale`` where ``cost > 0`` else ``−1`` (FISOR's h(s)); shape preserved."""
    return torch.where(cost > 0, torch.full_like(cost, cost_scale), -torch.ones_like(cost))


def feasibility_target(
    h: torch.Tensor, done: torch.Tensor, v_h_next: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Discounted reachability target (FISOR Eq. 7; Fisac et al. 2019).

    ``(1−γ) h + γ max(h, V_h(s'))`` on non-terminal steps, ``h`` on terminal ones. Shapes (B,).
    """
    bootstrapped = (1.0 - gamma) * h + gamma * torch.maximum(h, v_h_next)
    return torch.where(done > 0, h, bootstrapped)


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """IQL's ``mean |τ − 1(diff < 0)| · diff²`` (weight τ for diff > 0, 1 − τ otherwise)."""
    weight = torch.where(diff > 0, tau, 1.0 - tau)
    return (weight * diff.square()).mean()


def reversed_expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """FISOR Eq. 8: weight τ where diff < 0 and 1 − τ otherwise (pulls V towards low Q)."""
    weight = torch.where(diff < 0, tau, 1.0 - tau)
    return (weight * diff.square()).mean()


def q_h_loss(batch: Mapping[str, torch.Tensor], nets: FISORNets, config: FISORConfig):
    """MSE of every Q_h member against the reachability target; returns ``(loss, stats)``."""
    h = constraint_signal(batch["cost"], config.cost_scale)
    with torch.no_grad():
        target = feasibility_target(h, batch["done"], nets.v_h(batch["next_obs"]), config.gamma)
    q = nets.q_h(batch["obs"], batch["act"])  # (E, B)
    loss = (q - target).square().mean(dim=1).sum()
    return loss, {"losses/q_h": loss.detach(), "values/q_h": q.mean().detach()}


def v_h_loss(batch: Mapping[str, torch.Tensor], nets: FISORNets, config: FISORConfig):
    """Reversed expectile regression of V_h on the pessimistic ``max_e Q_h^target``."""
    with torch.no_grad():
        q = nets.q_h_target(batch["obs"], batch["act"]).max(dim=0).values
    v = nets.v_h(batch["obs"])
    loss = reversed_expectile_loss(q - v, config.feasibility_expectile)
    feasible = (v <= 0).float().mean().detach()
    return loss, {
        "losses/v_h": loss.detach(),
        "values/v_h": v.mean().detach(),
        "values/feasible_fraction": feasible,
    }


def q_r_loss(batch: Mapping[str, torch.Tensor], nets: FISORNets, config: FISORConfig):
    """IQL critic: MSE of every Q_r member against ``r + γ(1 − d)V_r(s')``."""
    with torch.no_grad():
        target = batch["reward"] + config.gamma * (1.0 - batch["done"]) * nets.v_r(
            batch["next_obs"]
        )
    q = nets.q_r(batch["obs"], batch["act"])
    loss = (q - target).square().mean(dim=1).sum()
    return loss, {"losses/q_r": loss.detach(), "values/q_r": q.mean().detach()}


def v_r_loss(batch: Mapping[str, torch.Tensor], nets: FISORNets, config: FISORConfig):
    """IQL value: expectile regression (τ = 0.9) of V_r on ``min_e Q_r^target``."""
    with torch.no_grad():
        q = nets.q_r_target(batch["obs"], batch["act"]).min(dim=0).values
    v = nets.v_r(batch["obs"])
    loss = expectile_loss(q - v, config.reward_expectile)
    return loss, {"losses/v_r": loss.detach(), "values/v_r": v.mean().detach()}


def policy_weights(
    q_r: torch.Tensor,
    v_r: torch.Tensor,
    q_h: torch.Tensor,
    v_h: torch.Tensor,
    config: FISORConfig,
) -> torch.Tensor:
    """FISOR Eq. 13, the three-way weight of each (s, a), shape (B,).

    * feasible, stays feasible (V_h ≤ 0, Q_h ≤ 0): ``clip(exp(α_r (Q_r − V_r)), 0, w_r)``;
    * infeasible (V_h > 0): ``clip(exp(α_h (V_h − Q_h)), 0, w_h)``;
    * feasible state, action leaves the feasible region (V_h ≤ 0 < Q_h): 0.
    """
    w_feasible = torch.exp(config.reward_temperature * (q_r - v_r)).clamp(
        0.0, config.feasible_weight_max
    )
    w_infeasible = torch.exp(config.cost_temperature * (v_h - q_h)).clamp(
        0.0, config.infeasible_weight_max
    )
    feasible_state = v_h <= 0
    keeps_feasible = feasible_state & (q_h <= 0)
    zero = torch.zeros_like(w_feasible)
    return torch.where(keeps_feasible, w_feasible, torch.where(feasible_state, zero, w_infeasible))


def actor_loss(
    batch: Mapping[str, torch.Tensor],
    nets: FISORNets,
    config: FISORConfig,
    scheduler: DDPMScheduler,
    generator: torch.Generator | None = None,
):
    """Weighted diffusion BC (FISOR Eq. 14): ``mean_i w_i ‖ε_θ(a_t, s, t) − ε‖²``."""
    obs, act = batch["obs"], batch["act"]
    with torch.no_grad():
        w = policy_weights(
            nets.q_r_target(obs, act).min(dim=0).values,
            nets.v_r(obs),
            nets.q_h_target(obs, act).max(dim=0).values,
            nets.v_h(obs),
            config,
        )
    t = torch.randint(
        config.diffusion_steps, (obs.shape[0],), device=obs.device, generator=generator
    )
    noise = torch.randn(act.shape, device=obs.device, generator=generator)
    a_t = scheduler.add_noise(act, noise, t)
    eps = nets.actor(a_t, obs, t)
    loss = (w * (eps - noise).square().sum(dim=-1)).mean()
    return loss, {
        "losses/actor": loss.detach(),
        "weights/mean": w.mean().detach(),
        "weights/zero_fraction": (w == 0).float().mean().detach(),
    }


# ---------------------------------------------------------------------------------------------
# Agent: optimisers, update, action selection, checkpoints


class FISOR(AgentBase):
    """FISOR agent: owns the networks, optimisers and the diffusion scheduler.

    Args:
        obs_dim: observation width.
        act_dim: action width (actions in [−1, 1]).
        config: hyperparameters (:class:`FISORConfig`).
        device: torch device; default "cuda" if available else "cpu".
    """

    kind = "fisor"
    config_class = FISORConfig
    weights = "nets"

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        config: FISORConfig | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        if obs_dim < 1 or act_dim < 1:
            raise ValueError(f"obs_dim and act_dim must be >= 1, got {obs_dim}, {act_dim}")
        self._setup(obs_dim, act_dim, config, device)
        with seeded(self.config.seed):  # initialisation, without reseeding the caller's RNG
            self.nets = FISORNets(obs_dim, act_dim, self.config).to(self.device)
            self.dropout_rng = TorchRNG(self.device)  # the actor's dropout draws from this
        self.scheduler = make_scheduler(self.config)
        lr = self.config.critic_lr
        n = self.nets
        self.critic_opt = torch.optim.Adam(
            [*n.q_r.parameters(), *n.v_r.parameters(), *n.q_h.parameters(), *n.v_h.parameters()],
            lr=lr,
        )
        self.actor_opt = torch.optim.AdamW(
            n.actor.parameters(),
            lr=self.config.actor_lr,
            weight_decay=self.config.actor_weight_decay,
        )
        self.actor_sched = torch.optim.lr_scheduler.LambdaLR(
            self.actor_opt, lambda k: cosine_decay(k, self.config.actor_decay_steps)
        )
        self.step = 0

    def update(
        self, critic_batch: Mapping[str, torch.Tensor], actor_batch: Mapping[str, torch.Tensor]
    ) -> dict[str, float]:
        """One iteration: value/critic step on ``critic_batch``, ``actor_splits`` actor steps on
        equal slices of ``actor_batch``, then target and EMA updates. Returns the statistics as
        detached 0-d tensors (no device sync). The four critic/value losses touch disjoint
        parameters and are stepped together."""
        cfg, n = self.config, self.nets
        stats: dict[str, torch.Tensor] = {}
        losses = []
        for loss_fn in (v_r_loss, v_h_loss, q_r_loss, q_h_loss):
            loss, s = loss_fn(critic_batch, n, cfg)
            losses.append(loss)
            stats.update(s)
        self.critic_opt.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()  # the four losses touch disjoint parameters
        self.critic_opt.step()
        ema_update(n.q_r_target, n.q_r, cfg.target_tau)
        ema_update(n.q_h_target, n.q_h, cfg.target_tau)

        n.actor.train()
        size = cfg.actor_batch_size // cfg.actor_splits
        for k in range(cfg.actor_splits):
            part = {key: v[k * size : (k + 1) * size] for key, v in actor_batch.items()}
            with self.dropout_rng.active():
                loss, s = actor_loss(part, n, cfg, self.scheduler, self.generator)
                self.actor_opt.zero_grad(set_to_none=True)
                loss.backward()
            self.actor_opt.step()
            self.actor_sched.step()
            ema_update(n.actor_ema, n.actor, cfg.actor_ema)
        stats.update(s)
        self.step += 1
        return stats

    @torch.no_grad()
    def sample_candidates(self, obs: torch.Tensor, num: int) -> torch.Tensor:
        """Reverse diffusion with the EMA actor: ``obs (B, obs_dim) -> actions (B, num, act)``."""
        b = obs.shape[0]
        s = obs.repeat_interleave(num, dim=0)
        a = torch.randn((b * num, self.act_dim), device=self.device, generator=self.generator)
        for t in self.scheduler.timesteps:
            t_vec = torch.full((b * num,), int(t), device=self.device, dtype=torch.long)
            eps = self.nets.actor_ema(a, s, t_vec)
            a = self.scheduler.step(eps, int(t), a, generator=self.generator).prev_sample
            a = a.clamp(-1.0, 1.0)
        return a.reshape(b, num, self.act_dim)

    @torch.no_grad()
    def act_tensor(self, obs: torch.Tensor) -> torch.Tensor:
        """``N`` candidates per state, keep the one with least ``max_e Q_h^target`` (the target
        network, as the reference); (B, act_dim)."""
        num = self.config.num_candidates
        cand = self.sample_candidates(obs, num)  # (B, N, A)
        flat = cand.reshape(-1, self.act_dim)
        q_h = self.nets.q_h_target(obs.repeat_interleave(num, dim=0), flat).max(dim=0).values
        best = q_h.reshape(-1, num).argmin(dim=1)
        return cand[torch.arange(cand.shape[0], device=self.device), best]

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Batched action selection on numpy: ``(B, obs_dim) -> (B, act_dim)`` in [−1, 1]."""
        obs = np.asarray(obs, dtype=np.float32)
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs must have shape (B, {self.obs_dim}), got {obs.shape}")
        self.nets.actor_ema.eval()
        out = self.act_tensor(torch.as_tensor(obs, device=self.device))
        return out.cpu().numpy()

    def progress(self) -> dict[str, Any]:
        return {"step": self.step}


def reward_scale_for(metadata: DatasetMetadata) -> float:
    """``max_episode_steps / (R_max − R_min)``, FISOR's reward rescaling."""
    return metadata.max_episode_steps / (metadata.reward_max - metadata.reward_min)


def train_fisor(
    data: Mapping[str, np.ndarray],
    metadata: DatasetMetadata,
    config: FISORConfig | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    writer: Any = None,
) -> tuple[FISOR, list[dict[str, float]]]:
    """Train FISOR on a DSRL dict (:func:`~saferl.offline.trainer.fit`); returns the agent and
    the statistics logged every ``config.log_every`` steps and at the last one."""
    config = config or FISORConfig()
    validate_data(data, strict_dtype=False, extra_keys=True)
    scale = reward_scale_for(metadata) if config.scale_rewards else 1.0
    agent = FISOR(data["observations"].shape[1], data["actions"].shape[1], config, device)
    buffer = TransitionBuffer(data, agent.device, reward_scale=scale)

    def batches():
        return (buffer.sample(config.critic_batch_size, agent.generator),
                buffer.sample(config.actor_batch_size, agent.generator))  # fmt: skip

    return agent, fit(agent, batches, config.steps, config.log_every, "FISOR", progress, writer)
