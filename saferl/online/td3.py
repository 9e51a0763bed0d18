"""Multi-morphology TD3 (Fujimoto et al., ICML 2018) with SET / transformer / MLP policies.

One shared policy trains on every training agent of an ``envs`` suite at once: a DummyVecEnv
steps all of them in parallel with a common padding ``max_limbs`` (the suite's largest agent,
held-out agents included), the replay buffer mixes their transitions, and the policy decodes
the graph view inside its forward pass (3D-SGRL's multi-task setting). Stable-Baselines3's TD3
does the update math (:class:`LimbTD3`: the same update, with each replay batch decoded once for
all nets); :class:`saferl.policies.LimbTD3Policy` supplies the networks.
Zero-shot evaluation runs the trained policy on the suite's held-out agents.

``TD3Config.algo`` picks the learner: "td3" (the reference), or SB3's "sac" (same replay,
warm-up and update-to-data ratio; :class:`saferl.policies.LimbSACPolicy`) or "ppo" (on-policy
rollouts, SB3's MuJoCo defaults; :class:`saferl.policies.LimbActorCriticPolicy`), all with the
same network kinds. Every algorithm's deterministic action is its policy net's output
(:func:`saferl.policies.deterministic_net`): evaluation and the saved actor do not depend on the
algorithm.

Several seeds are a grid (:mod:`saferl.grid`): :func:`train_cell` trains and evaluates one seed;
:func:`run_seeds` runs one such cell per seed, in this process or as Ray tasks, and
:func:`seed_summary` averages the evaluations over the seeds.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3 import PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.vec_env import DummyVecEnv

import envs
from envs.layout import ACTIONS_PER_LIMB
from saferl.common.checkpoint import CONFIG, WEIGHTS, load_checkpoint, save_checkpoint
from saferl.common.io import atomic_write, write_json
from saferl.common.runtime import resolve_device, seeded, torch_threads, versions
from saferl.data.rollout import rollout
from saferl.grid import Cell, GridResult, run_grid
from saferl.online import resume
from saferl.policies import (
    KINDS,
    ClippedAdam,
    LimbActorCriticPolicy,
    LimbSACPolicy,
    LimbTD3Policy,
    deterministic_net,
    make_config,
)

ALGOS = ("td3", "sac", "ppo")
"""Learners of ``TD3Config.algo``: TD3 (the reference), SB3's SAC and PPO."""


@dataclass
class TD3Config:
    """Multi-morphology online RL (TD3, SAC or PPO); defaults are 3D-SGRL's TD3
    hyperparameters (SAC shares them; PPO has its own fields, SB3's MuJoCo defaults)."""

    suite: str = "Hopper++"
    """Suite of ``envs.catalogue()`` (its training agents step together)."""
    agents: list[str] | None = None
    """Train on these catalogue agents instead of the suite's training split (held-out agents
    still come from ``suite``)."""
    policy: str = "set"
    """Policy kind: "set", "transformer" or "mlp"."""
    net_config: dict[str, Any] | None = None
    """Network sizes of the policy kind (None = reference sizes)."""
    algo: str = "td3"
    """Learner: "td3" (the reference), "sac" (SB3's SAC with the same replay, warm-up, update
    ratio, learning rate, batch and gradient clip as TD3; entropy coefficient learned towards
    minus the mean number of actuated hinges) or "ppo" (SB3's PPO: the ``n_steps``,
    ``n_epochs``, ``ppo_batch_size`` and ``ppo_learning_rate`` fields, SB3's other defaults)."""
    total_steps: int = 5_000_000
    """Environment transitions over all agents (the paper's budget is about 5e6)."""
    learning_rate: float = 1e-4
    """Adam step size of actor and critic (TD3, SAC; SAC's entropy coefficient too)."""
    batch_size: int = 256
    """Minibatch size of each update."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak coefficient of the target networks."""
    target_noise: float = 0.2
    """Std of the target policy smoothing noise."""
    noise_clip: float = 0.5
    """Clip of the target policy smoothing noise."""
    policy_delay: int = 2
    """Critic updates per actor (and target) update."""
    exploration_noise: float = 0.126
    """Std of the Gaussian exploration noise on actions."""
    max_grad_norm: float = 0.1
    """Global gradient-norm clip of each update."""
    learning_starts: int | None = None
    """Uniform random warm-up transitions (over all training agents) before learning; None =
    5,000 per training agent (the reference's warm-up per morphology)."""
    buffer_size: int = 1_000_000
    """Replay buffer capacity (transitions)."""
    gradient_steps: int | None = None
    """Updates after each vector-env step (one transition per training agent); None = the
    number of training agents, i.e. one update per transition (the reference's ratio)."""
    n_steps: int = 2048
    """PPO: vector steps per rollout (each gives one transition per training agent)."""
    n_epochs: int = 10
    """PPO: passes over each rollout."""
    ppo_batch_size: int = 64
    """PPO: minibatch size of each gradient step."""
    ppo_learning_rate: float = 3e-4
    """PPO: Adam step size (policy net, log-std and value net)."""
    max_limbs: int | None = None
    """Padding of the flat view; None = the largest agent of the suite."""
    cost_type: str = "velocity"
    """Safety cost recorded in ``info["cost"]`` (not optimised by TD3)."""
    seed: int = 0
    """Seeds numpy, torch, the envs and SB3."""
    eval_episodes: int = 5
    """Episodes per agent in the final evaluation."""
    eval_max_steps: int | None = None
    """Cap on evaluation episode length (None = the env's 1000-step limit)."""
    eval_every: int | None = None
    """Also evaluate (``eval_episodes`` deterministic episodes per training and held-out agent)
    every this many transitions during training: the learning curve in ``TrainResult.curve``
    (None = only the final evaluation)."""


@dataclass
class TrainResult:
    """What :func:`train` returns: the SB3 model, its history and final evaluation."""

    model: BaseAlgorithm
    config: TD3Config
    episodes: list[dict[str, Any]] = field(default_factory=list)
    losses: list[dict[str, float]] = field(default_factory=list)
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    run: dict[str, Any] = field(default_factory=dict)
    """The budget (:func:`budget`) and what was done: ``transitions_done``, ``updates_done``
    and the newest ``checkpoint`` folder (None without ``out``)."""
    interrupted: bool = False
    """True when ``stop()`` ended the run early (a checkpoint was written; no evaluation)."""
    curve: list[dict[str, Any]] = field(default_factory=list)
    """With ``config.eval_every``: one row per (evaluation, agent): ``step`` (transitions),
    ``updates`` and :func:`evaluate`'s statistics with the agent's ``split``."""


def suite_agents(suite: str, split: str) -> list[str]:
    """Catalogue agent names of a suite's ``split`` ("train" or "heldout")."""
    suites = envs.catalogue().suites
    if suite not in suites:
        raise KeyError(f"unknown suite {suite!r}; expected one of {sorted(suites)}")
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    return list(getattr(suites[suite], split))


def suite_max_limbs(agents: list[str]) -> int:
    """Limbs of the largest of ``agents`` (the common padding of their flat views)."""
    return max(envs.get_morphology(a).num_limbs for a in agents)


def make_vec_env(
    agents: list[str], max_limbs: int, seed: int = 0, cost_type: str = "velocity"
) -> DummyVecEnv:
    """One DummyVecEnv stepping every agent of ``agents`` (padded to ``max_limbs``)."""
    ids = [envs.env_id(a) for a in agents]

    def factory(env_id: str):
        return lambda: envs.make(env_id, max_limbs=max_limbs, cost_type=cost_type)

    vec = DummyVecEnv([factory(i) for i in ids])
    vec.seed(seed)
    return vec


class EpisodeRecorder(BaseCallback):
    """Records every finished training episode (return, cost, length, agent) and the last
    logged losses (``train/actor_loss``, ``train/critic_loss``) after each update."""

    def __init__(self, agents: list[str]) -> None:
        super().__init__()
        self.agents = agents
        self.episodes: list[dict[str, Any]] = []
        self.losses: list[dict[str, float]] = []
        self._ret = np.zeros(len(agents))
        self._cost = np.zeros(len(agents))
        self._len = np.zeros(len(agents), dtype=int)
        self._updates_seen = -1
        self.evaluations: list[dict[str, Any]] = []  # filled by PeriodicEvaluator

    def _on_step(self) -> bool:
        rewards, dones, infos = self.locals["rewards"], self.locals["dones"], self.locals["infos"]
        self._ret += rewards
        self._cost += [float(info.get("cost", 0.0)) for info in infos]
        self._len += 1
        for i in np.flatnonzero(dones):
            self.episodes.append(
                {
                    "step": int(self.num_timesteps),
                    "agent": self.agents[i],
                    "return": float(self._ret[i]),
                    "cost": float(self._cost[i]),
                    "length": int(self._len[i]),
                }
            )
            self._ret[i], self._cost[i], self._len[i] = 0.0, 0.0, 0
        return True

    def _on_rollout_start(self) -> None:
        values = self.model.logger.name_to_value
        updates = updates_made(self.model)
        critic, actor = "train/critic_loss", "train/actor_loss"
        if "train/value_loss" in values:  # PPO: V's loss and the clipped surrogate
            critic, actor = "train/value_loss", "train/policy_gradient_loss"
        if critic in values and updates != self._updates_seen:
            self._updates_seen = updates
            entry = {"step": int(self.num_timesteps), "updates": updates}
            entry["critic_loss"] = float(values[critic])
            if actor in values:
                entry["actor_loss"] = float(values[actor])
            if "train/ent_coef" in values:  # SAC
                entry["ent_coef"] = float(values["train/ent_coef"])
            self.losses.append(entry)


class PeriodicEvaluator(BaseCallback):
    """Evaluates the actor every ``every`` transitions and at the end of training (each of
    ``agents``, a name -> split map, for ``config.eval_episodes`` deterministic episodes) and
    appends the rows to ``recorder.evaluations``, so checkpoints carry the curve. Evaluation
    uses its own seeded envs and RNG: the training run is the same with or without it."""

    def __init__(
        self, every: int, agents: Mapping[str, str], max_limbs: int, config: TD3Config,
        recorder: EpisodeRecorder,
    ) -> None:  # fmt: skip
        super().__init__()
        self.every, self.agents, self.max_limbs = int(every), dict(agents), max_limbs
        self.config, self.recorder = config, recorder

    def last_step(self) -> int:
        """Transitions at the newest evaluation (-1 before the first)."""
        rows = self.recorder.evaluations
        return int(rows[-1]["step"]) if rows else -1

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        step, last = self.num_timesteps, self.last_step()
        if step // self.every > max(last, 0) // self.every or last < 0:
            self.run()

    def _on_training_end(self) -> None:
        if self.num_timesteps >= self.config.total_steps and self.last_step() != self.num_timesteps:
            self.run()

    def run(self) -> None:
        """Evaluate every agent now and record the rows."""
        cfg, actor = self.config, deterministic_net(self.model.policy)
        was_training = actor.training
        actor.eval()
        for agent, split in self.agents.items():
            stats = evaluate(actor, agent, self.max_limbs, cfg.eval_episodes,
                             seed=10_000 + cfg.seed, cost_type=cfg.cost_type,
                             max_steps=cfg.eval_max_steps)  # fmt: skip
            self.recorder.evaluations.append({"step": int(self.num_timesteps),
                                              "updates": updates_made(self.model),
                                              "agent": agent, "split": split, **stats})  # fmt: skip
        actor.train(was_training)


WARMUP_PER_AGENT = 5_000
"""The reference's uniform random warm-up: 5,000 transitions per morphology."""


def train_agents_of(config: TD3Config) -> list[str]:
    """The agents trained on: ``config.agents`` or the suite's training split."""
    return list(config.agents or suite_agents(config.suite, "train"))


def budget(config: TD3Config) -> dict[str, Any]:
    """The run's budget as resolved from ``config``: algo, transitions, agents (envs), warm-up
    transitions, updates per vector step, the update-to-data ratio (updates per transition
    after the warm-up) and the number of gradient updates the run will make. PPO: no warm-up;
    ``rollout`` transitions per rollout, ``gradient_steps`` minibatch updates per rollout
    (epochs x minibatches), ``update_to_data`` their ratio."""
    n_envs = len(train_agents_of(config))
    if config.algo == "ppo":
        rollout = config.n_steps * n_envs
        rollouts = -(-config.total_steps // rollout)  # SB3 collects whole rollouts until >= total
        per_rollout = config.n_epochs * -(-rollout // config.ppo_batch_size)
        return {"algo": "ppo", "transitions": rollouts * rollout, "envs": n_envs,
                "learning_starts": 0, "rollout": rollout, "gradient_steps": per_rollout,
                "update_to_data": per_rollout / rollout,
                "updates": rollouts * per_rollout}  # fmt: skip
    warmup = WARMUP_PER_AGENT * n_envs if config.learning_starts is None else config.learning_starts
    per_step = n_envs if config.gradient_steps is None else config.gradient_steps
    vector_steps = -(-config.total_steps // n_envs)  # SB3 steps all envs until >= total
    # SB3 trains after vector step k once k * n_envs > warmup transitions were collected
    trained_steps = max(0, vector_steps - warmup // n_envs)
    return {
        "algo": config.algo,
        "transitions": vector_steps * n_envs,
        "envs": n_envs,
        "learning_starts": warmup,
        "gradient_steps": per_step,
        "update_to_data": per_step / n_envs,
        "updates": trained_steps * per_step,
    }


def target_entropy(agents: Sequence[str]) -> float:
    """SAC's entropy target: minus the mean number of actuated hinges of ``agents`` (SB3's
    "auto" rule, -dim(A), counted over the hinges the policy moves: the torso and padded
    action rows carry no noise)."""
    hinges = [ACTIONS_PER_LIMB * (envs.get_morphology(a).num_limbs - 1) for a in agents]
    return -float(np.mean(hinges))


class LimbTD3(TD3):
    """Stable-Baselines3's TD3 (Fujimoto et al., ICML 2018) with :class:`LimbTD3Policy`'s nets:
    the same update as SB3's ``TD3.train`` (a test holds them to the same numbers), arranged
    for limb-graph nets:

    * each replay batch's observations and next observations are decoded once
      (:meth:`LimbTD3Policy.decode`) and shared by the actor, the twin critics and their targets;
    * the actor's loss -Q_1(s, pi(s)) treats the critic's weights as constants: SB3 computes
      their gradients there and the next critic step discards them (``zero_grad``);
    * the targets' Polyak averaging runs as multi-tensor ops (one call per parameter list).
    """

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate([self.actor.optimizer, self.critic.optimizer])
        actor_losses, critic_losses = [], []
        for _ in range(gradient_steps):
            self._n_updates += 1
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            discounts = getattr(data, "discounts", None)
            discounts = self.gamma if discounts is None else discounts
            decoded = self.policy.decode(data.observations)
            decoded_next = self.policy.decode(data.next_observations)
            with torch.no_grad():
                # target policy smoothing: clipped noise on the target actor's action
                noise = data.actions.clone().data.normal_(0, self.target_policy_noise)
                noise = noise.clamp(-self.target_noise_clip, self.target_noise_clip)
                next_actions = self.actor_target(data.next_observations, decoded_next)
                next_actions = (next_actions + noise).clamp(-1, 1)
                # clipped double Q-learning: min over the target critics
                next_q = self.critic_target(data.next_observations, next_actions, decoded_next)
                next_q, _ = torch.min(torch.cat(next_q, dim=1), dim=1, keepdim=True)
                target_q = data.rewards + (1 - data.dones) * discounts * next_q
            current_q = self.critic(data.observations, data.actions, decoded)
            critic_loss = sum(F.mse_loss(q, target_q) for q in current_q)
            critic_losses.append(critic_loss.item())
            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            self.critic.optimizer.step()
            if self._n_updates % self.policy_delay == 0:  # delayed policy and target updates
                with frozen(self.critic):
                    actions = self.actor(data.observations, decoded)
                    actor_loss = -self.critic.q1_forward(data.observations, actions, decoded).mean()
                    actor_losses.append(actor_loss.item())
                    self.actor.optimizer.zero_grad()
                    actor_loss.backward()
                self.actor.optimizer.step()
                polyak(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                polyak(self.actor.parameters(), self.actor_target.parameters(), self.tau)
                polyak(self.critic_batch_norm_stats, self.critic_batch_norm_stats_target, 1.0)
                polyak(self.actor_batch_norm_stats, self.actor_batch_norm_stats_target, 1.0)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if len(actor_losses) > 0:
            self.logger.record("train/actor_loss", np.mean(actor_losses))
        self.logger.record("train/critic_loss", np.mean(critic_losses))


@contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """``module``'s parameters without gradients inside the block (restored after)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def polyak(params: Iterable[torch.Tensor], targets: Iterable[torch.Tensor], tau: float) -> None:
    """SB3's ``polyak_update``, target <- (1 - tau) target + tau param in place, as two
    multi-tensor ops (the same two roundings per element as SB3's loop)."""
    params, targets = list(params), list(targets)
    if len(params) != len(targets):
        raise ValueError(f"{len(params)} parameters for {len(targets)} targets")
    if targets:
        with torch.no_grad():
            torch._foreach_mul_(targets, 1 - tau)
            torch._foreach_add_(targets, params, alpha=tau)


def build_model(
    config: TD3Config, vec_env: DummyVecEnv, device: str | None = None, verbose: int = 0
) -> BaseAlgorithm:
    """SB3's TD3, SAC or PPO (``config.algo``) with the limb-graph policy of ``config.policy``
    on ``vec_env`` (TD3, SAC: ``learning_starts`` and ``gradient_steps`` resolved as
    :func:`budget` says)."""
    make_config(config.policy, config.net_config)  # clear error on a bad kind / field
    common = {"gamma": config.gamma, "seed": config.seed, "device": resolve_device(device),
              "verbose": verbose}  # fmt: skip
    nets = {"kind": config.policy, "net_config": config.net_config}
    if config.algo == "ppo":
        return PPO(LimbActorCriticPolicy, vec_env, learning_rate=config.ppo_learning_rate,
                   n_steps=config.n_steps, batch_size=config.ppo_batch_size,
                   n_epochs=config.n_epochs, policy_kwargs=nets, **common)  # fmt: skip
    n_envs = vec_env.num_envs
    warmup = WARMUP_PER_AGENT * n_envs if config.learning_starts is None else config.learning_starts
    per_step = n_envs if config.gradient_steps is None else config.gradient_steps
    off_policy = {
        "learning_rate": config.learning_rate,
        "buffer_size": config.buffer_size,
        "learning_starts": warmup,
        "batch_size": config.batch_size,
        "tau": config.tau,
        "train_freq": 1,
        "gradient_steps": per_step,
        "policy_kwargs": {
            **nets,
            "optimizer_class": ClippedAdam,
            "optimizer_kwargs": {"max_grad_norm": config.max_grad_norm},
        },
    }
    if config.algo == "sac":
        entropy = target_entropy(train_agents_of(config))
        return SAC(LimbSACPolicy, vec_env, target_entropy=entropy, **off_policy, **common)
    n_actions = vec_env.action_space.shape[0]
    noise = NormalActionNoise(np.zeros(n_actions), config.exploration_noise * np.ones(n_actions))
    return LimbTD3(
        LimbTD3Policy,
        vec_env,
        action_noise=noise,
        policy_delay=config.policy_delay,
        target_policy_noise=config.target_noise,
        target_noise_clip=config.noise_clip,
        **off_policy,
        **common,
    )


def updates_made(model: BaseAlgorithm) -> int:
    """Gradient steps ``model`` has made: SB3's ``_n_updates``, except that PPO counts epochs
    there (each is ceil(rollout / batch_size) minibatch steps)."""
    if isinstance(model, PPO):
        return int(model._n_updates) * -(-model.n_steps * model.n_envs // model.batch_size)
    return int(model._n_updates)


def validate(config: TD3Config) -> None:
    """Clear errors for a bad config, before any env is built."""
    if config.algo not in ALGOS:
        raise KeyError(f"unknown algo {config.algo!r}; expected one of {list(ALGOS)}")
    if config.policy not in KINDS:
        raise KeyError(f"unknown policy {config.policy!r}; expected one of {sorted(KINDS)}")
    make_config(config.policy, config.net_config)
    for name in ("total_steps", "batch_size", "buffer_size", "policy_delay", "n_steps",
                 "n_epochs"):  # fmt: skip
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.ppo_batch_size < 2:  # PPO normalises advantages over each minibatch
        raise ValueError(f"ppo_batch_size must be >= 2, got {config.ppo_batch_size}")
    if not config.learning_rate > 0 or not config.ppo_learning_rate > 0:
        raise ValueError(f"learning rates must be > 0, got {config.learning_rate} and "
                         f"{config.ppo_learning_rate}")  # fmt: skip
    if config.algo == "ppo" and config.n_steps * len(train_agents_of(config)) < 2:
        raise ValueError(f"a PPO rollout needs >= 2 transitions: n_steps {config.n_steps} x "
                         f"{len(train_agents_of(config))} agents")  # fmt: skip
    if config.gradient_steps is not None and config.gradient_steps < 1:
        raise ValueError(f"gradient_steps must be >= 1 (or None), got {config.gradient_steps}")
    if config.learning_starts is not None and config.learning_starts < 0:
        raise ValueError(f"learning_starts must be >= 0 (or None), got {config.learning_starts}")
    if not 0.0 <= config.gamma <= 1.0 or not 0.0 < config.tau <= 1.0:
        raise ValueError(f"need 0 <= gamma <= 1 and 0 < tau <= 1, got {config.gamma}, {config.tau}")
    suite_agents(config.suite, "train")
    for agent in config.agents or []:
        envs.get_morphology(agent)


class Checkpointer(BaseCallback):
    """Writes a resumable checkpoint of the run into ``out`` (:mod:`saferl.online.resume`)
    every ``every`` transitions, at the end of training, and when ``stop()`` turns true (then
    training stops). It saves between a finished update and the next env step, where the
    replay buffer, the counters and the networks agree. An on-policy run (PPO) saves at rollout
    boundaries; ``stop()`` is also asked at each of its steps, and a stop inside a rollout saves
    the state of the rollout's start (the policy has not changed since; the resumed run collects
    that rollout again)."""

    def __init__(
        self,
        out: str | Path,
        every: int,
        config: TD3Config,
        recorder: EpisodeRecorder,
        stop: Callable[[], bool] | None = None,
        chunks: Sequence[str] = (),
        rows_saved: int = 0,
        seconds: float = 0.0,
    ) -> None:
        super().__init__()
        self.out, self.every, self.config, self.recorder = Path(out), int(every), config, recorder
        self.stop, self.chunks, self.rows_saved = stop, list(chunks), int(rows_saved)
        self.saved_at = -1 if rows_saved == 0 else None  # step of the last checkpoint
        self.stopped = False
        self.seconds_before = seconds  # training seconds of earlier sessions of this run
        self._start = time.perf_counter()
        self.last: Path | None = None
        self.rollout_start: int | None = None  # on-policy: transitions at the rollout's start

    def _on_training_start(self) -> None:
        self.saved_at = self.num_timesteps if self.saved_at is None else self.saved_at
        self._start = time.perf_counter()

    def _on_step(self) -> bool:
        inside = self.rollout_start is not None and not self.stopped
        if inside and self.stop is not None and self.stop():
            if self.rollout_start != self.saved_at:
                self.save(self.rollout_start)
            self.stopped = True
        return not self.stopped

    def _on_rollout_start(self) -> None:
        step = self.num_timesteps
        if not hasattr(self.model, "replay_buffer"):
            self.rollout_start = step
        if self.stop is not None and self.stop():
            if step != self.saved_at:
                self.save()
            self.stopped = True
        elif step // self.every > max(self.saved_at, 0) // self.every and step != self.saved_at:
            self.save()

    def _on_training_end(self) -> None:
        if not self.stopped and self.num_timesteps != self.saved_at:
            self.save()

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self._start

    def save(self, step: int | None = None) -> Path:
        """Checkpoint the run as of ``step`` transitions (None = now; an on-policy run stopped
        inside a rollout passes the rollout's start)."""
        model: BaseAlgorithm = self.model
        step = int(self.num_timesteps if step is None else step)
        tensors, learner = resume.learner_state(model, model.env, self.out, step, self.chunks,
                                                self.rows_saved)  # fmt: skip
        self.chunks, self.rows_saved = learner["replay_chunks"], learner["rows"]
        rec = self.recorder
        state = {
            "td3": dataclasses.asdict(self.config),
            "budget": budget(self.config),
            **learner,
            "episodes": [e for e in rec.episodes if e["step"] <= step],
            "losses": rec.losses,
            "evaluations": rec.evaluations,
            "seconds": self.seconds(),
            "obs_dim": int(model.observation_space.shape[0]),
            "versions": versions(),
        }
        self.last = resume.write_checkpoint(self.out, step, tensors, state)
        self.saved_at = step
        return self.last


def restore(model: BaseAlgorithm, out: str | Path, recorder: EpisodeRecorder) -> dict[str, Any]:
    """Load the newest checkpoint in ``out`` into a freshly built ``model`` (same config):
    weights, optimiser states (SAC: and the entropy coefficient), replay buffer (off-policy),
    counters, RNG states (the global ones are set: call inside
    :func:`saferl.common.runtime.seeded`) and the recorder's history."""
    tensors, state = resume.read_checkpoint(out)
    resume.restore_learner(model, model.env, out, tensors, state)
    recorder.episodes = list(state["episodes"])
    recorder.losses = list(state["losses"])
    recorder.evaluations = list(state.get("evaluations", []))
    if recorder.losses:
        recorder._updates_seen = int(recorder.losses[-1]["updates"])
    return state


RESUME_MAY_CHANGE = ("total_steps", "eval_every")
"""Settings a resumed run may change: its budget (to train longer; not below the transitions
already done) and how often it evaluates."""


def check_resumable(config: TD3Config, out: str | Path) -> None:
    """ValueError unless the run saved in ``out`` can continue as ``config``: the same settings
    except :data:`RESUME_MAY_CHANGE`, and a budget no smaller than the transitions done."""
    state = resume.read_run_state(out)
    saved = config_from_state(state)
    changed = [f.name for f in dataclasses.fields(config)
               if getattr(saved, f.name) != getattr(config, f.name)
               and f.name not in RESUME_MAY_CHANGE]  # fmt: skip
    if changed:
        raise ValueError(f"the run in {str(out)!r} was saved with other settings "
                         f"({', '.join(changed)}); resume it with its own config")  # fmt: skip
    if config.total_steps < int(state["num_timesteps"]):
        raise ValueError(f"the run in {str(out)!r} has done {state['num_timesteps']} "
                         f"transitions; a resumed budget must be at least that, got "
                         f"{config.total_steps}")  # fmt: skip


def config_from_state(state: Mapping[str, Any]) -> TD3Config:
    """The :class:`TD3Config` saved in a checkpoint's state."""
    return TD3Config(**state["td3"])


def saved_config(out: str | Path) -> TD3Config:
    """The config of the run whose checkpoints are in ``out`` (FileNotFoundError if none)."""
    return config_from_state(resume.read_run_state(out))


def train(
    config: TD3Config,
    device: str | None = None,
    progress: bool = False,
    verbose: int = 0,
    *,
    out: str | Path | None = None,
    checkpoint_every: int = 10_000,
    resume_run: bool = False,
    stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train one shared policy on the suite's training agents, then evaluate it on the training
    and held-out agents (``config.eval_episodes`` each, deterministic actions). The run is
    seeded with ``config.seed``; the caller's global RNG states are left as they were.

    With ``out`` the run writes a resumable checkpoint into ``out/checkpoints/`` every
    ``checkpoint_every`` transitions and at its end; with ``resume_run`` it continues from the
    newest one there to ``config.total_steps`` (``config`` must equal the saved one except for
    :data:`RESUME_MAY_CHANGE`: a larger budget trains a finished run longer). When
    ``stop()`` turns true (a SIGTERM handler's flag), a checkpoint is written and the run
    returns early with ``interrupted`` set (no evaluation)."""
    validate(config)
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if (resume_run or stop is not None) and out is None:
        raise ValueError("resuming or stopping with a checkpoint needs out= (the run folder)")
    if resume_run:
        check_resumable(config, out)
    with seeded(config.seed):
        return _train(config, device, progress, verbose, out, checkpoint_every, resume_run, stop)


def _train(
    config: TD3Config,
    device: str | None,
    progress: bool,
    verbose: int,
    out: str | Path | None,
    checkpoint_every: int,
    resume_run: bool,
    stop: Callable[[], bool] | None,
) -> TrainResult:
    train_agents = train_agents_of(config)
    heldout = [a for a in suite_agents(config.suite, "heldout") if a not in train_agents]
    max_limbs = config.max_limbs or suite_max_limbs(train_agents + heldout)
    vec = make_vec_env(train_agents, max_limbs, config.seed, config.cost_type)
    model = build_model(config, vec, device, verbose)
    recorder = EpisodeRecorder(train_agents)
    callbacks: list[BaseCallback] = [recorder]
    splits = {**dict.fromkeys(train_agents, "train"), **dict.fromkeys(heldout, "heldout")}
    if config.eval_every is not None and config.eval_episodes > 0:
        callbacks.append(PeriodicEvaluator(config.eval_every, splits, max_limbs, config,
                                           recorder))  # fmt: skip
    checkpointer = None
    if out is not None:
        chunks, rows, seconds_before = [], 0, 0.0
        if resume_run:
            vec._reset_seeds()  # the reset continues the restored env RNG streams
            state = restore(model, out, recorder)
            chunks, rows, seconds_before = state["replay_chunks"], state["rows"], state["seconds"]
        checkpointer = Checkpointer(out, checkpoint_every, config, recorder, stop, chunks, rows,
                                    seconds_before)  # fmt: skip
        callbacks.append(checkpointer)
    start = time.perf_counter()
    remaining = config.total_steps - model.num_timesteps
    if checkpointer is not None and stop is not None and stop():  # stopped before any step
        checkpointer.init_callback(model)
        if not resume_run:
            checkpointer.save()
        checkpointer.stopped = True
    elif remaining > 0:
        model.learn(remaining, callback=CallbackList(callbacks), progress_bar=progress,
                    reset_num_timesteps=not resume_run)  # fmt: skip
    seconds = checkpointer.seconds() if checkpointer else time.perf_counter() - start
    plan = budget(config)
    run = {
        **plan,
        "transitions_done": int(model.num_timesteps),
        "updates_done": updates_made(model),
        "checkpoint": str(checkpointer.last) if checkpointer and checkpointer.last else None,
    }
    if checkpointer is not None and checkpointer.stopped:
        vec.close()
        return TrainResult(model, config, recorder.episodes, recorder.losses, {}, seconds,
                           run=run, interrupted=True, curve=recorder.evaluations)  # fmt: skip
    evaluation: dict[str, dict[str, Any]] = {}
    final = [r for r in recorder.evaluations if r["step"] == model.num_timesteps]
    if config.eval_episodes > 0 and final:  # the curve's last point is the final evaluation
        evaluation = {r["agent"]: {k: v for k, v in r.items() if k not in ("step", "agent")}
                      for r in final}  # fmt: skip
    elif config.eval_episodes > 0:
        actor = deterministic_net(model.policy).eval()
        for agent, split in splits.items():
            stats = evaluate(actor, agent, max_limbs, config.eval_episodes,
                             seed=10_000 + config.seed, cost_type=config.cost_type,
                             max_steps=config.eval_max_steps)  # fmt: skip
            evaluation[agent] = {**stats, "split": split}
    vec.close()
    return TrainResult(model, config, recorder.episodes, recorder.losses, evaluation, seconds,
                       run=run, curve=recorder.evaluations)  # fmt: skip


@torch.no_grad()
def evaluate(
    actor: torch.nn.Module,
    agent: str,
    max_limbs: int,
    episodes: int = 5,
    seed: int = 0,
    cost_type: str = "velocity",
    max_steps: int | None = None,
) -> dict[str, float]:
    """:func:`episode_stats` (return, cost, length, velocity along the target) of ``episodes``
    deterministic episodes of ``agent``.

    The episodes run side by side (one batched actor call per step). ``actor`` maps flat
    observations (B, flat_dim) to actions (B, max_limbs * 3).
    """
    device = next(actor.parameters()).device

    def policy(obs: np.ndarray) -> np.ndarray:
        return actor(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()

    def env_fn():
        return envs.make(envs.env_id(agent), max_limbs=max_limbs, cost_type=cost_type)

    runs = rollout(policy, env_fn, episodes, seed, max_steps=max_steps, record=False,
                   sum_info=("reward_forward",))  # fmt: skip
    return episode_stats(runs)


def episode_stats(runs: Any) -> dict[str, float]:
    """Mean (and sd) over a rollout's episodes of return, cost, length and velocity along the
    target (each episode's mean of ``info["reward_forward"]``)."""
    return {
        "return_mean": float(runs.returns.mean()),
        "return_sd": float(runs.returns.std()),
        "cost_mean": float(runs.costs.mean()),
        "length_mean": float(runs.lengths.mean()),
        "target_velocity": float(runs.info_means("reward_forward").mean()),
        "episodes": len(runs.returns),
    }


def save_run(result: TrainResult, folder: str, sb3_zip: bool = False) -> dict[str, str]:
    """Save a run: the actor (``model.safetensors`` + ``config.json``, the toolkit's checkpoint
    format) and ``metrics.json``; with ``sb3_zip`` also Stable-Baselines3's ``model.zip`` (the
    whole algorithm, to continue training). Returns the paths.

    The actor is the policy net giving the deterministic action of any ``config.algo``
    (:func:`saferl.policies.deterministic_net`), so one format serves TD3, SAC and PPO.
    ``model.zip`` is read back with pickle by SB3's ``load``: load it only from a source you
    trust. :func:`load_actor` reads the safetensors checkpoint and unpickles nothing.
    """
    folder_path = Path(folder)
    obs_dim = int(result.model.observation_space.shape[0])
    save_checkpoint(folder_path, deterministic_net(result.model.policy),
                    {"td3": dataclasses.asdict(result.config), "obs_dim": obs_dim,
                     "budget": budget(result.config),
                     "versions": versions()}, kind="td3_actor")  # fmt: skip
    paths = {name: str(folder_path / name) for name in (WEIGHTS, CONFIG, "metrics.json")}
    write_json(paths["metrics.json"], {"episodes": result.episodes,
                                       "losses": binned_losses(result.losses),
                                       "evaluation": result.evaluation,
                                       "curve": result.curve,
                                       "seconds": result.seconds,
                                       "run": result.run})  # fmt: skip
    if sb3_zip:
        paths["model.zip"] = str(folder_path / "model.zip")
        atomic_write(paths["model.zip"], result.model.save)
    return paths


def binned_losses(losses: Sequence[Mapping[str, float]], max_rows: int = 500) -> list[dict]:
    """At most ``max_rows`` rows of logged losses: consecutive entries averaged in equal bins
    (``step`` and ``updates`` of each bin's last entry, ``entries`` averaged), so a long run's
    ``metrics.json`` stays small; the checkpoints keep every entry."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if len(losses) <= max_rows:
        return [dict(x) for x in losses]
    rows = []
    for chunk in np.array_split(np.arange(len(losses)), max_rows):
        part = [losses[i] for i in chunk]
        row: dict[str, float] = {"step": part[-1]["step"], "updates": part[-1]["updates"],
                                 "entries": len(part)}  # fmt: skip
        for key in part[-1]:
            if key not in ("step", "updates"):
                row[key] = float(np.mean([x[key] for x in part if key in x]))
        rows.append(row)
    return rows


def load_actor(folder: str, device: str | None = None) -> torch.nn.Module:
    """The actor saved by :func:`save_run` (safetensors + JSON; nothing is unpickled): flat
    obs (B, flat_dim) -> the deterministic action (B, L*3) in [-1, 1] of whichever algo
    trained it."""
    from gymnasium import spaces

    from envs.layout import ObsLayout
    from saferl.policies import build_actor

    state, saved = load_checkpoint(folder, "td3_actor")
    layout = ObsLayout.from_flat_dim(int(saved["obs_dim"]))
    obs_space = spaces.Box(-np.inf, np.inf, (layout.flat_dim,), np.float32)
    act_space = spaces.Box(-1.0, 1.0, (layout.action_dim,), np.float32)
    cfg = saved["td3"]
    actor = build_actor(cfg["policy"], obs_space, act_space, cfg["net_config"], device="cpu")
    actor.load_state_dict(state)
    return actor.to(resolve_device(device)).eval()


# --------------------------------------------------------------------------- grid of seeds

RUN_FILES = (WEIGHTS, CONFIG, "metrics.json")
"""What :func:`save_run` writes (and ``model.zip`` with ``sb3_zip``)."""


def train_cell(
    *,
    config: TD3Config,
    device: str | None = None,
    out: str | None = None,
    sb3_zip: bool = False,
    checkpoint_every: int = 10_000,
) -> list[dict[str, Any]]:
    """One cell of a seed grid: :func:`train` with ``config`` (its seed), and with ``out``
    resumable checkpoints in ``out/checkpoints/`` every ``checkpoint_every`` transitions (a cell
    killed mid-run continues from the newest one when run again) and :func:`save_run` into
    ``out`` at the end. One row per evaluated agent: seed, agent, split, the final evaluation's
    statistics (:func:`episode_stats`), transitions and updates done, and the training seconds
    (over all sittings of a resumed run)."""
    start = time.perf_counter()
    again = out is not None and resume.latest_checkpoint(out) is not None
    result = train(config, device=device, out=out, checkpoint_every=checkpoint_every,
                   resume_run=again)  # fmt: skip
    seconds = result.seconds if out is not None else time.perf_counter() - start
    if out is not None:
        save_run(result, out, sb3_zip=sb3_zip)
    run = result.run
    return [{"seed": config.seed, "agent": agent, **stats,
             "transitions": run["transitions_done"], "updates": run["updates_done"],
             "seconds": seconds}
            for agent, stats in result.evaluation.items()]  # fmt: skip


def seed_cells(
    config: TD3Config,
    seeds: Sequence[int],
    device: str | None = None,
    out: str | Path | None = None,
    sb3_zip: bool = False,
    cpus_per_cell: float = 1.0,
    gpus_per_cell: float = 0.0,
    checkpoint_every: int = 10_000,
) -> list[Cell]:
    """One cell per seed (key ``seed<N>``): ``config`` with that seed; with ``out`` the run
    checkpoints every ``checkpoint_every`` transitions into and is saved into ``<out>/seed<N>/``
    (an absolute path: a Ray worker may run elsewhere); a cell run again resumes there."""
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"need at least one seed and each seed once, got {seeds}")
    cells = []
    for seed in seeds:
        folder = str((Path(out) / f"seed{seed}").absolute()) if out is not None else None
        kwargs = {"config": dataclasses.replace(config, seed=seed), "device": device,
                  "out": folder, "sb3_zip": sb3_zip,
                  "checkpoint_every": checkpoint_every}  # fmt: skip
        names = RUN_FILES + (("model.zip",) if sb3_zip else ())
        outputs = tuple(str(Path(folder) / n) for n in names) if folder is not None else ()
        cells.append(Cell(f"seed{seed}", train_cell, kwargs, cpus=cpus_per_cell,
                          gpus=gpus_per_cell, outputs=outputs))  # fmt: skip
    return cells


def run_seeds(
    config: TD3Config,
    seeds: Sequence[int],
    grid_out: str | Path,
    *,
    device: str | None = None,
    out: str | Path | None = None,
    sb3_zip: bool = False,
    workers: int = 1,
    address: str | None = None,
    cpus_per_cell: float = 1.0,
    gpus_per_cell: float = 0.0,
    checkpoint_every: int = 10_000,
    log: Callable[[str], None] = print,
) -> GridResult:
    """Train ``config`` once per seed as cells of a :func:`saferl.grid.run_grid` grid under
    ``grid_out``: one row per (seed, evaluated agent). A re-run with the same ``grid_out`` skips
    the seeds already trained — unless their settings changed since or (with ``out``) a file of
    the seed's saved run is gone (the grid's fingerprint and outputs): those are trained
    again."""
    validate(config)
    cells = seed_cells(config, seeds, device, out, sb3_zip, cpus_per_cell, gpus_per_cell,
                       checkpoint_every)  # fmt: skip
    return run_grid(cells, grid_out, workers=workers, address=address, log=log)


def seed_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per agent (in the order of the rows): its split, the number of seeds, and the mean and
    sd over seeds (population sd, as ``return_sd`` over episodes) of each seed's mean return and
    mean cost."""
    by_agent: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_agent.setdefault(row["agent"], []).append(row)
    summary = []
    for agent, group in by_agent.items():
        returns = np.array([r["return_mean"] for r in group], np.float64)
        costs = np.array([r["cost_mean"] for r in group], np.float64)
        summary.append({"agent": agent, "split": group[0]["split"], "seeds": len(group),
                        "return_mean": float(returns.mean()), "return_sd": float(returns.std()),
                        "cost_mean": float(costs.mean()),
                        "cost_sd": float(costs.std())})  # fmt: skip
    return summary


@torch.no_grad()
def critic_td_loss(model: TD3, replay_data: Any) -> float:
    """TD3's critic loss on a replay batch, without target smoothing noise (deterministic):
    mean over the twin critics of MSE(Q_i(s, a), r + gamma (1 - done) min_j Q'_j(s', pi'(s')))."""
    policy = model.policy
    next_actions = policy.actor_target(replay_data.next_observations)
    next_q = torch.cat(policy.critic_target(replay_data.next_observations, next_actions), dim=1)
    next_q = next_q.min(dim=1, keepdim=True).values
    target = replay_data.rewards + (1 - replay_data.dones) * model.gamma * next_q
    current = policy.critic(replay_data.observations, replay_data.actions)
    return float(sum(torch.nn.functional.mse_loss(q, target) for q in current) / len(current))


def demo_stage(budget_steps: int = 500, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """A tiny TD3 + SET run on one agent (hopper_3) for ``saferl demo`` (well under 60 s on a
    CPU): returns the episodes seen, the critic loss before/after extra updates on a fixed batch,
    the return of the trained policy beside that of zero torques on the same episodes, and its
    rotation-invariance error; ``actor`` (the trained policy net, flat obs -> action) and
    ``states`` (64 replay observations) for the demo's certify stage."""
    with torch_threads(1):  # tiny networks: one thread is fastest on a shared CPU
        return _demo_stage(budget_steps, seed, device)


def _demo_stage(budget_steps: int, seed: int, device: str) -> dict[str, Any]:
    from saferl.policies import invariance_error, orbit_angles

    start = time.perf_counter()
    config = TD3Config(
        suite="Hopper++", agents=["hopper_3"], policy="set", total_steps=budget_steps,
        net_config={"width": 32, "ff": 64, "heads": 2, "layers": 2, "channels": 8},
        learning_starts=budget_steps // 2, batch_size=32, learning_rate=1e-3,
        max_grad_norm=1.0, seed=seed, eval_episodes=2, eval_max_steps=200,
        eval_every=max(1, budget_steps // 4),
    )  # fmt: skip
    result = train(config, device=device)
    model = result.model
    batch = model.replay_buffer.sample(256)
    before = critic_td_loss(model, batch)
    model.train(gradient_steps=30, batch_size=64)
    after = critic_td_loss(model, batch)
    actor = model.policy.actor.eval()
    error = invariance_error(actor, batch.observations, orbit_angles(12))
    policy_net = deterministic_net(model.policy).eval()  # what save_run saves (and certify takes)
    max_limbs = envs.get_morphology("hopper_3").num_limbs
    zero = rollout(lambda obs: np.zeros((len(obs), 3 * max_limbs)),
                   lambda: envs.make(envs.env_id("hopper_3"), max_limbs=max_limbs),
                   config.eval_episodes, 10_000 + seed, max_steps=config.eval_max_steps,
                   record=False)  # fmt: skip
    losses = [x["critic_loss"] for x in result.losses]
    tenth = max(1, len(losses) // 10)
    return {
        "agent": "hopper_3",
        "budget_steps": budget_steps,
        "updates": result.run["updates_done"],
        "episodes": len(result.episodes),
        "mean_episode_length": float(np.mean([e["length"] for e in result.episodes])),
        "first_returns": [e["return"] for e in result.episodes[:5]],
        "training_loss_first": float(np.mean(losses[:tenth])) if losses else float("nan"),
        "training_loss_last": float(np.mean(losses[-tenth:])) if losses else float("nan"),
        "learning_starts": config.learning_starts,
        "curve": [
            (r["step"], r["return_mean"], r["length_mean"])
            for r in result.curve
            if r["agent"] == "hopper_3"
        ],  # fmt: skip
        "critic_loss_before": before,
        "critic_loss_after": after,
        "eval_return": result.evaluation["hopper_3"]["return_mean"],
        "zero_torque_return": float(zero.returns.mean()),
        "rotation_invariance_error": error,
        "seconds": time.perf_counter() - start,
        "actor": policy_net,
        "states": batch.observations[:64].detach().clone(),
    }
