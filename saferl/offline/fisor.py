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

One iteration runs in the official code's order (``jaxrl5/agents/fisor/fisor.py``, ``update``,
lines 611–636): the two actor updates first (624–625), on the critics and values as the previous
iteration left them; then ``V_r`` (``update_v``, 631) on the target ``Q_r``, ``Q_r``
(``update_q``, 632) on the freshly updated ``V_r`` (its target read at 315–319 from the value
replaced at 310) and its Polyak target (337–340); then ``V_h`` (``update_vc``, 633) and ``Q_h``
(``update_qc``, 634) on the fresh ``V_h`` (368–373 after 363). The critics train on the first
``critic_batch_size`` rows of the actor batch (``x[:256]``, 627–630). The reward and feasibility
chains share no weight, so here both values take one step together and then both critics do:
the same arithmetic as the reference's four steps in sequence, with two backward passes and
optimiser steps instead of four. (The reference averages each critic loss over its members as
well as the batch; the sum over members here scales their gradients by ``E``, which Adam's
update ignores up to its ε.)

All critics live in one ensemble with a leading member dimension (``E`` reward then ``E``
feasibility members, stacked weights run as batched matmuls, like the reference's ``nn.vmap``
``Ensemble``) and both values in another; ``nets.q_r``, ``nets.q_h``, ``nets.v_r``... are views
of them (:class:`~saferl.offline.networks.EnsembleView`). The policy weights of both actor
updates come from one pass of the critics over the whole actor batch. ``compile=True`` runs the
forward and loss computations through ``torch.compile``.

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
from saferl.offline.networks import EnsembleMLP, EnsembleView, LNResNetNoise, ema_update
from saferl.offline.trainer import AgentBase, fit


@dataclass
class FISORConfig:
    """FISOR hyperparameters; defaults are the paper's / official code's reference values."""

    steps: int = 1_000_000
    """Training steps (each: ``actor_splits`` actor updates, then one value and one critic
    update)."""
    critic_batch_size: int = 256
    """Transitions per critic and value update (``train_fisor``: the first rows of the actor
    batch, as the reference)."""
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
    compile: bool = False
    """Run the update's forward and loss computations (and so their backward) through
    ``torch.compile``. Off by default: the first iterations pay tens of seconds of compilation,
    which a long GPU run (launch-bound in eager mode) earns back and a short CPU run does not."""
    compile_mode: str = "default"
    """``torch.compile`` mode when ``compile`` is on ("reduce-overhead" adds CUDA graphs; only
    "default" has been checked against the eager update, on CPU)."""
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
    """All FISOR networks: reward and feasibility critics and values, actor and its EMA.

    Stored fused: ``critic`` is one :class:`EnsembleMLP` of ``2E`` members over ``[s, a]``
    (members ``0..E−1`` are ``Q_r``, ``E..2E−1`` are ``Q_h``), ``critic_target`` its Polyak
    copy, ``value`` one of 2 members over ``s`` (``V_r``, ``V_h``). The properties ``q_r``,
    ``q_h``, ``q_r_target``, ``q_h_target`` (``(E, B)``) and ``v_r``, ``v_h`` (``(B,)``) are
    views of them. Checkpoints of the earlier layout (separate ``q_r``... modules) still load.
    """

    def __init__(self, obs_dim: int, act_dim: int, config: FISORConfig) -> None:
        super().__init__()
        h, e = config.critic_hidden, config.ensemble
        self.num_q = e
        self.critic = EnsembleMLP(obs_dim + act_dim, 1, h, 2 * e)
        self.value = EnsembleMLP(obs_dim, 1, h, 2)
        self.actor = LNResNetNoise(
            obs_dim,
            act_dim,
            config.actor_width,
            config.actor_blocks,
            config.time_dim,
            dropout=config.actor_dropout,
        )
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_ema = copy.deepcopy(self.actor).requires_grad_(False).eval()
        self.register_load_state_dict_pre_hook(_fuse_separate_critics)

    @property
    def q_r(self) -> EnsembleView:
        return EnsembleView(self.critic, 0, self.num_q)

    @property
    def q_h(self) -> EnsembleView:
        return EnsembleView(self.critic, self.num_q, 2 * self.num_q)

    @property
    def q_r_target(self) -> EnsembleView:
        return EnsembleView(self.critic_target, 0, self.num_q)

    @property
    def q_h_target(self) -> EnsembleView:
        return EnsembleView(self.critic_target, self.num_q, 2 * self.num_q)

    @property
    def v_r(self) -> EnsembleView:
        return EnsembleView(self.value, 0, 1, single=True)

    @property
    def v_h(self) -> EnsembleView:
        return EnsembleView(self.value, 1, 2, single=True)


def _fuse_separate_critics(module: FISORNets, state: dict, prefix: str, *_: Any) -> None:
    """Load-state-dict pre-hook: rewrite a checkpoint of the earlier layout (``q_r``, ``q_h``
    and their targets as separate :class:`EnsembleMLP`, ``v_r``, ``v_h`` as ``MLP`` with
    ``nn.Linear`` weights ``(out, in)``) into the fused one, in place."""
    if f"{prefix}q_r.layers.0.weight" not in state:
        return
    for i in range(len(module.critic.layers)):
        for kind in ("weight", "bias"):
            for fused, parts in (("critic", ("q_r", "q_h")),
                                 ("critic_target", ("q_r_target", "q_h_target"))):  # fmt: skip
                old = [state.pop(f"{prefix}{part}.layers.{i}.{kind}") for part in parts]
                state[f"{prefix}{fused}.layers.{i}.{kind}"] = torch.cat(old)
            old = [state.pop(f"{prefix}{v}.net.{2 * i}.{kind}") for v in ("v_r", "v_h")]
            old = [w.T.unsqueeze(0) if kind == "weight" else w.reshape(1, 1, -1) for w in old]
            state[f"{prefix}value.layers.{i}.{kind}"] = torch.cat(old)


# ---------------------------------------------------------------------------------------------
# Losses (pure: (batch, nets) -> (loss, stats))


def select(mask: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """``a`` where ``mask`` else ``b``, as ``b + (a − b)·mask`` (float32): ``torch.where`` with
    two Python numbers would make two device tensors of them on every call."""
    return b + (a - b) * mask


def constraint_signal(cost: torch.Tensor, cost_scale: float = 25.0) -> torch.Tensor:
    """``h = +cost_scale`` where ``cost > 0`` else ``−1`` (FISOR's h(s)); shape preserved."""
    return select(cost > 0, cost_scale, -1.0)


def feasibility_target(
    h: torch.Tensor, done: torch.Tensor, v_h_next: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Discounted reachability target (FISOR Eq. 7; Fisac et al. 2019).

    ``(1−γ) h + γ max(h, V_h(s'))`` on non-terminal steps, ``h`` on terminal ones. Shapes (B,).
    """
    bootstrapped = (1.0 - gamma) * h + gamma * torch.maximum(h, v_h_next)
    return torch.where(done > 0, h, bootstrapped)


def reward_target(
    reward: torch.Tensor, done: torch.Tensor, v_r_next: torch.Tensor, gamma: float
) -> torch.Tensor:
    """IQL's critic target ``r + γ(1 − d) V_r(s')``; shapes (B,)."""
    return reward + gamma * (1.0 - done) * v_r_next


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """IQL's ``mean |τ − 1(diff < 0)| · diff²`` (weight τ for diff > 0, 1 − τ otherwise)."""
    weight = select(diff > 0, tau, 1.0 - tau)
    return (weight * diff.square()).mean()


def reversed_expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """FISOR Eq. 8: weight τ where diff < 0 and 1 − τ otherwise (pulls V towards low Q)."""
    weight = select(diff < 0, tau, 1.0 - tau)
    return (weight * diff.square()).mean()


# The four losses one critic or value at a time, as the paper states them (and the reference
# steps them). The update runs the fused `value_loss` and `critic_loss` below, which a test holds
# equal to these.


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
        v_next = nets.v_r(batch["next_obs"])
        target = reward_target(batch["reward"], batch["done"], v_next, config.gamma)
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


def target_critics(obs: torch.Tensor, act: torch.Tensor, nets: FISORNets):
    """One pass of the fused target critic: ``(min_e Q_r^target, max_e Q_h^target)``, (B,) each
    (pessimistic on both: least reward, most violation)."""
    q = nets.critic_target(obs, act).unflatten(0, (2, nets.num_q))  # (2, E, B)
    return q[0].min(dim=0).values, q[1].max(dim=0).values


def value_loss(batch: Mapping[str, torch.Tensor], nets: FISORNets, config: FISORConfig):
    """``v_r_loss + v_h_loss`` in one pass of the target critic and the value ensemble (their
    weights are disjoint, so each value gets its own gradient); ``(loss, stats)``."""
    with torch.no_grad():
        q_r, q_h = target_critics(batch["obs"], batch["act"], nets)
    v = nets.value(batch["obs"])  # (2, B): V_r, V_h
    loss_r = expectile_loss(q_r - v[0], config.reward_expectile)
    loss_h = reversed_expectile_loss(q_h - v[1], config.feasibility_expectile)
    v = v.detach()
    return loss_r + loss_h, {
        "losses/v_r": loss_r.detach(),
        "values/v_r": v[0].mean(),
        "losses/v_h": loss_h.detach(),
        "values/v_h": v[1].mean(),
        "values/feasible_fraction": (v[1] <= 0).float().mean(),
    }


def critic_loss(batch: Mapping[str, torch.Tensor], nets: FISORNets, config: FISORConfig):
    """``q_r_loss + q_h_loss`` in one pass of the value ensemble (at ``s'``) and the critic
    ensemble; ``(loss, stats)``."""
    with torch.no_grad():
        v_next = nets.value(batch["next_obs"])  # (2, B)
        h = constraint_signal(batch["cost"], config.cost_scale)
        target = torch.stack([
            reward_target(batch["reward"], batch["done"], v_next[0], config.gamma),
            feasibility_target(h, batch["done"], v_next[1], config.gamma),
        ])  # fmt: skip
    q = nets.critic(batch["obs"], batch["act"]).unflatten(0, (2, nets.num_q))  # (2, E, B)
    losses = (q - target.unsqueeze(1)).square().mean(dim=2).sum(dim=1)  # (2,): Q_r, Q_h
    q = q.detach()
    return losses.sum(), {
        "losses/q_r": losses[0].detach(),
        "values/q_r": q[0].mean(),
        "losses/q_h": losses[1].detach(),
        "values/q_h": q[1].mean(),
    }


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
    return torch.where(keeps_feasible, w_feasible, w_infeasible.masked_fill(feasible_state, 0.0))


@torch.no_grad()
def actor_weights(
    obs: torch.Tensor, act: torch.Tensor, nets: FISORNets, config: FISORConfig
) -> torch.Tensor:
    """:func:`policy_weights` of a batch from the target critics and the online values, as the
    reference's ``update_actor``; (B,)."""
    q_r, q_h = target_critics(obs, act, nets)
    v = nets.value(obs)
    return policy_weights(q_r, v[0], q_h, v[1], config)


def diffusion_draws(
    n: int, act_dim: int, config: FISORConfig, device: torch.device, generator=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffusion times ``t ~ U{0..T−1}`` (n,) and noise ``ε ~ N(0, I)`` (n, act_dim)."""
    t = torch.randint(config.diffusion_steps, (n,), device=device, generator=generator)
    noise = torch.randn((n, act_dim), device=device, generator=generator)
    return t, noise


def diffusion_tables(scheduler: DDPMScheduler, device: torch.device):
    """``(√ᾱ_t, √(1 − ᾱ_t))`` for t = 0..T−1 on ``device``, from the scheduler's own ``ᾱ``."""
    abar = scheduler.alphas_cumprod.to(device)
    return abar**0.5, (1.0 - abar) ** 0.5


def noised_actions(
    act: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, tables: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """Forward diffusion ``a_t = √ᾱ_t a + √(1 − ᾱ_t) ε`` (DDPM Eq. 4) from precomputed
    :func:`diffusion_tables`; bit for bit diffusers' ``add_noise``. Shapes (B, act_dim)."""
    sqrt_abar, sqrt_one_minus_abar = tables
    return sqrt_abar[t].unsqueeze(-1) * act + sqrt_one_minus_abar[t].unsqueeze(-1) * noise


def diffusion_bc_loss(
    actor: nn.Module,
    obs: torch.Tensor,
    a_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    w: torch.Tensor,
) -> torch.Tensor:
    """Weighted diffusion BC (FISOR Eq. 14): ``mean_i w_i ‖ε_θ(a_t, s, t) − ε‖²``."""
    eps = actor(a_t, obs, t)
    return (w * (eps - noise).square().sum(dim=-1)).mean()


def actor_loss(
    batch: Mapping[str, torch.Tensor],
    nets: FISORNets,
    config: FISORConfig,
    scheduler: DDPMScheduler,
    generator: torch.Generator | None = None,
):
    """Weighted diffusion BC (FISOR Eq. 14) on a batch, with its own draws of ``t`` and ``ε``
    (:func:`diffusion_draws`); ``(loss, stats)``. The update runs the same pieces, drawing and
    weighting the whole actor batch at once before splitting it."""
    obs, act = batch["obs"], batch["act"]
    w = actor_weights(obs, act, nets, config)
    t, noise = diffusion_draws(obs.shape[0], act.shape[1], config, obs.device, generator)
    loss = diffusion_bc_loss(nets.actor, obs, scheduler.add_noise(act, noise, t), t, noise, w)
    return loss, {
        "losses/actor": loss.detach(),
        "weights/mean": w.mean(),
        "weights/zero_fraction": (w == 0).float().mean(),
    }


# ---------------------------------------------------------------------------------------------
# Agent: optimisers, update, action selection, checkpoints


def _adam(cls: type[torch.optim.Optimizer], params: list, **kwargs: Any) -> torch.optim.Optimizer:
    """``cls`` with the fused implementation (one kernel for all tensors) where torch has it
    for these tensors (CUDA; CPU from torch 2.4), else the foreach one; the same update rule."""
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return cls(params, foreach=True, **kwargs)


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
        cfg = self.config
        with seeded(cfg.seed):  # initialisation, without reseeding the caller's RNG
            self.nets = FISORNets(obs_dim, act_dim, cfg).to(self.device)
            self.dropout_rng = TorchRNG(self.device)  # the actor's dropout draws from this
        self.scheduler = make_scheduler(cfg)
        self.tables = diffusion_tables(self.scheduler, self.device)
        n = self.nets
        self.value_opt = _adam(torch.optim.Adam, list(n.value.parameters()), lr=cfg.critic_lr)
        self.critic_opt = _adam(torch.optim.Adam, list(n.critic.parameters()), lr=cfg.critic_lr)
        self.actor_opt = _adam(torch.optim.AdamW, list(n.actor.parameters()),
                               lr=cfg.actor_lr, weight_decay=cfg.actor_weight_decay)  # fmt: skip
        self.step = 0

        def compiled(fn):
            return torch.compile(fn, mode=cfg.compile_mode) if cfg.compile else fn

        self._actor_weights = compiled(actor_weights)
        self._diffusion_bc_loss = compiled(diffusion_bc_loss)
        self._value_loss = compiled(value_loss)
        self._critic_loss = compiled(critic_loss)

    def _set_actor_lr(self, updates: int) -> None:
        """Cosine-decayed rate of the actor update after ``updates`` earlier ones (optax's
        schedule counts optimiser steps); read from the step count, so a resumed run goes on."""
        rate = self.config.actor_lr * cosine_decay(updates, self.config.actor_decay_steps)
        self.actor_opt.param_groups[0]["lr"] = rate

    def update(
        self, critic_batch: Mapping[str, torch.Tensor], actor_batch: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """One iteration in the reference's order: ``actor_splits`` actor steps on equal slices
        of ``actor_batch`` (weights from the critics before this iteration), then one step of
        both values on ``critic_batch``, then one of both critics on targets from those fresh
        values, then the Polyak targets. Returns the statistics as detached 0-d tensors (no
        device sync)."""
        stats = self._update_actor(actor_batch)
        n = self.nets
        for opt, loss_fn in ((self.value_opt, self._value_loss),
                             (self.critic_opt, self._critic_loss)):  # fmt: skip
            loss, s = loss_fn(critic_batch, n, self.config)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            stats.update(s)
        ema_update(n.critic_target, n.critic, self.config.target_tau)
        self.step += 1
        return stats

    def _update_actor(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``actor_splits`` AdamW steps of the diffusion BC loss, each followed by the EMA."""
        cfg, n = self.config, self.nets
        obs, act = batch["obs"], batch["act"]
        w = self._actor_weights(obs, act, n, cfg)  # the critics do not move between splits
        t, noise = diffusion_draws(obs.shape[0], self.act_dim, cfg, self.device, self.generator)
        a_t = noised_actions(act, noise, t, self.tables)
        size = cfg.actor_batch_size // cfg.actor_splits
        n.actor.train()
        with self.dropout_rng.active():
            for k in range(cfg.actor_splits):
                part = slice(k * size, (k + 1) * size)
                loss = self._diffusion_bc_loss(n.actor, obs[part], a_t[part], t[part],
                                               noise[part], w[part])  # fmt: skip
                self.actor_opt.zero_grad(set_to_none=True)
                loss.backward()
                self._set_actor_lr(self.step * cfg.actor_splits + k)
                self.actor_opt.step()
                ema_update(n.actor_ema, n.actor, cfg.actor_ema)
        self._set_actor_lr((self.step + 1) * cfg.actor_splits)  # what the next update uses
        return {
            "losses/actor": loss.detach(),
            "weights/mean": w.mean(),
            "weights/zero_fraction": (w == 0).float().mean(),
        }

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
    the statistics logged every ``config.log_every`` steps and at the last one.

    Each iteration samples one actor batch; the critics train on its first
    ``critic_batch_size`` rows (the reference's ``x[:256]``), or on a batch of their own when
    that is larger than the actor batch."""
    config = config or FISORConfig()
    validate_data(data, strict_dtype=False, extra_keys=True)
    scale = reward_scale_for(metadata) if config.scale_rewards else 1.0
    agent = FISOR(data["observations"].shape[1], data["actions"].shape[1], config, device)
    buffer = TransitionBuffer(data, agent.device, reward_scale=scale)
    size = config.critic_batch_size

    def batches():
        actor_batch = buffer.sample(config.actor_batch_size, agent.generator)
        if size > config.actor_batch_size:
            return buffer.sample(size, agent.generator), actor_batch
        return {k: v[:size] for k, v in actor_batch.items()}, actor_batch

    return agent, fit(agent, batches, config.steps, config.log_every, "FISOR", progress, writer)
