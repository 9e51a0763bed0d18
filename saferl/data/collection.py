"""Collect a DSRL-style dataset: train Lagrangian behaviour policies, roll out checkpoints, filter.

Recipe (DSRL, Liu et al. 2023, Sec. 3 "data collection"): train Lagrangian agents whose episode
cost limit is annealed from high to low during training, so that the checkpoints range from
fast-and-unsafe to slow-and-safe; roll each checkpoint out several ways (deterministic,
stochastic, with action noise); then keep trajectories so that they spread evenly over the
(cost return, reward return) plane — here with a grid filter that caps the count per cell.

The learner is Stable-Baselines3 PPO (or SAC) on the shaped reward r − λ·c, λ from a PID
Lagrangian (:mod:`saferl.common.lagrangian`) on the measured episode cost versus the annealed limit.

Several tasks are a grid (:mod:`saferl.grid`): :func:`collect_cell` collects one task and writes
its dataset, summary and plot; :func:`run_collect` runs one such cell per task, in this process
or as Ray tasks, and a re-run skips the tasks already collected with the same settings.

Long collections are resumable: with a work folder (``collect(..., work=DIR)``; a cell uses
``<dataset>.collect/`` and removes it once the dataset is written) the run checkpoints the
learner (weights, optimisers, SAC's replay buffer and entropy coefficient), the observation and
return normalisers, the Lagrangian's PID state, the RNG states and the trajectories rolled out so
far every ``checkpoint_every`` env steps, in the format of :mod:`saferl.online.resume`; a run
that is stopped (``stop()`` true, e.g. after a SIGTERM; :class:`CollectionInterrupted`) or killed
continues from the newest checkpoint when run again with the same config. As with online runs,
the episodes in progress at a checkpoint are not carried over (the envs are reset on resume).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from saferl.common.io import atomic_write, write_json
from saferl.common.lagrangian import PIDLagrangian, PIDLagrangianConfig, annealed_limit
from saferl.common.runtime import seeded
from saferl.data.dsrl import REQUIRED_KEYS, DatasetMetadata, save_dataset, validate_data
from saferl.data.rollout import rollout
from saferl.grid import Cell, GridResult, run_grid
from saferl.online import resume

ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "sac": SAC}


@dataclass
class CollectConfig:
    """Everything one collection run needs (defaults: a small CPU budget)."""

    env_id: str
    """Task id for ``envs.make`` (e.g. ``SaferlPlanar-HopperVelocity-v1``)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of ``envs.make`` (e.g. ``{"max_limbs": 3}``)."""
    max_episode_steps: int = 1000
    """Episode length limit (training and rollouts); DSRL velocity tasks use 1000."""
    algo: str = "ppo"
    """Behaviour learner: ``"ppo"`` or ``"sac"``."""
    total_timesteps: int = 50_000
    """Training steps of the Lagrangian learner."""
    n_envs: int = 4
    """Parallel training envs (one process, DummyVecEnv)."""
    cost_limit_start: float = 250.0
    """Episode cost limit at the start of training (high: the penalty is off at first)."""
    cost_limit_end: float = 10.0
    """Episode cost limit at the end of the annealing."""
    anneal_fraction: float = 0.8
    """Fraction of training over which the limit moves from start to end."""
    pid: PIDLagrangianConfig = field(default_factory=PIDLagrangianConfig)
    """PID Lagrangian gains (OSRL defaults 0.1 / 0.003 / 0.001)."""
    num_checkpoints: int = 8
    """Policies rolled out, evenly spaced over training (the first is the untrained one)."""
    episodes_per_mode: int = 4
    """Episodes per checkpoint and rollout mode."""
    rollout_noise: tuple[float, ...] = (0.0, 0.3)
    """Std of Gaussian noise added to the deterministic action, one rollout mode each."""
    stochastic_rollouts: bool = True
    """Also roll out the learner's stochastic policy (one more mode)."""
    grid_bins: int = 10
    """Cells per axis of the (cost return, reward return) grid of the filter."""
    max_per_cell: int = 8
    """Most trajectories kept per grid cell."""
    cost_thresholds: tuple[float, ...] = (20.0, 40.0, 80.0)
    """Episode cost limits κ recorded for evaluation (DSRL velocity tasks: 20 / 40 / 80)."""
    seed: int = 0
    """Seeds numpy, torch, the learner and every env."""
    learner_kwargs: dict[str, Any] = field(default_factory=dict)
    """Overrides of the SB3 learner's keyword arguments."""
    device: str = "cpu"
    """Torch device of the learner (SB3 MLP policies run fastest on CPU)."""
    verbose: int = 1
    """0: silent; 1: one line per checkpoint."""

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {sorted(ALGOS)}, got {self.algo!r}")
        for name in ("max_episode_steps", "total_timesteps", "n_envs", "num_checkpoints",
                     "episodes_per_mode", "grid_bins", "max_per_cell"):  # fmt: skip
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if min(self.cost_limit_start, self.cost_limit_end) < 0:
            raise ValueError("cost limits must be >= 0")
        if any(s < 0 or not np.isfinite(s) for s in self.rollout_noise):
            raise ValueError(f"rollout_noise must be finite stds >= 0, got {self.rollout_noise}")
        if any(k < 0 or not np.isfinite(k) for k in self.cost_thresholds):
            raise ValueError(f"cost_thresholds must be finite and >= 0: {self.cost_thresholds}")
        if not 0.0 < self.anneal_fraction <= 1.0:
            raise ValueError(f"anneal_fraction must lie in (0, 1], got {self.anneal_fraction}")

    @classmethod
    def for_task(cls, env_id: str, max_episode_steps: int = 1000, **overrides: Any):
        """A config whose cost limits scale with the episode length as DSRL's do at 1000 steps
        (annealed 250 → 10; thresholds 20 / 40 / 80), and whose 3D envs are padded to exactly
        the agent's limbs (smallest observations)."""
        scale = max_episode_steps / 1000.0
        values: dict[str, Any] = {
            "env_kwargs": default_env_kwargs(env_id),
            "cost_limit_start": 250.0 * scale,
            "cost_limit_end": 10.0 * scale,
            "cost_thresholds": tuple(k * scale for k in (20.0, 40.0, 80.0)),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(env_id=env_id, max_episode_steps=max_episode_steps, **values)

    def modes(self) -> list[tuple[bool, float]]:
        """Rollout modes as (deterministic, noise std) pairs."""
        out = [(True, float(s)) for s in self.rollout_noise]
        return out + ([(False, 0.0)] if self.stochastic_rollouts else [])


DEFAULT_LEARNER_KWARGS: dict[str, dict[str, Any]] = {
    "ppo": {"n_steps": 512, "batch_size": 64, "n_epochs": 10, "learning_rate": 3e-4,
            "gae_lambda": 0.95, "gamma": 0.99, "ent_coef": 0.0, "clip_range": 0.2},
    "sac": {"learning_starts": 1000, "batch_size": 256, "buffer_size": 200_000,
            "learning_rate": 3e-4, "train_freq": 1, "gradient_steps": 1},
}  # fmt: skip


# --------------------------------------------------------------------------- env side


class LagrangeState:
    """The multiplier shared by the shaping wrappers and the callback (one process)."""

    def __init__(self) -> None:
        self.multiplier = 0.0


class LagrangianRewardWrapper(gym.Wrapper):
    """Reward r − λ·c with c = ``info["cost"]``; keeps the raw reward and episode returns.

    ``info["reward"]`` holds r; at the end of an episode ``info["episode_reward"]`` and
    ``info["episode_cost"]`` hold its undiscounted returns.
    """

    def __init__(self, env: gym.Env, state: LagrangeState) -> None:
        super().__init__(env)
        self.state = state
        self._ret = 0.0
        self._cost = 0.0

    def reset(self, **kwargs):
        self._ret = self._cost = 0.0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if "cost" not in info:
            raise KeyError("the env must report info['cost'] (a safety-cost env of envs/)")
        cost = float(info["cost"])
        self._ret += float(reward)
        self._cost += cost
        info["reward"] = float(reward)
        if terminated or truncated:
            info["episode_reward"], info["episode_cost"] = self._ret, self._cost
        return obs, float(reward) - self.state.multiplier * cost, terminated, truncated, info


def default_env_kwargs(env_id: str) -> dict[str, Any]:
    """``{"max_limbs": limbs of the agent}`` for 3D tasks (no padding), else ``{}``."""
    import envs

    env = envs.make(env_id)
    limbs = getattr(env.unwrapped, "morph", None)
    env.close()
    return {"max_limbs": int(limbs.num_limbs)} if limbs is not None else {}


def make_env(config: CollectConfig) -> gym.Env:
    """The task with the configured episode limit (``envs.make``)."""
    import envs

    return envs.make(config.env_id, max_episode_steps=config.max_episode_steps, **config.env_kwargs)


# --------------------------------------------------------------------------- rollouts


Trajectory = dict[str, np.ndarray]
PolicyFn = Callable[[np.ndarray, bool], np.ndarray]


def sb3_policy(model: BaseAlgorithm, vecnorm: VecNormalize | None) -> PolicyFn:
    """A batched policy from an SB3 model, normalising observations as in training."""

    def act(obs: np.ndarray, deterministic: bool) -> np.ndarray:
        if vecnorm is not None:
            obs = vecnorm.normalize_obs(obs)
        action, _ = model.predict(obs, deterministic=deterministic)
        return action

    return act


# --------------------------------------------------------------------------- filter


def grid_filter(
    cost_returns: np.ndarray,
    reward_returns: np.ndarray,
    bins: int,
    max_per_cell: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Keep at most ``max_per_cell`` trajectories (chosen at random) per cell of a bins × bins
    grid spanning the (cost, reward) returns; returns a bool mask (K,).

    Dense regions are thinned, sparse ones kept whole, so the data spread over the plane.
    """
    c = np.asarray(cost_returns, np.float64)
    r = np.asarray(reward_returns, np.float64)
    if c.shape != r.shape or c.ndim != 1:
        raise ValueError(f"cost and reward returns must be equal-length vectors: {c.shape}, "
                         f"{r.shape}")  # fmt: skip
    cell = _bin(c, bins) * bins + _bin(r, bins)
    order = rng.permutation(len(c))
    sorted_cells = cell[order]
    by_cell = np.argsort(sorted_cells, kind="stable")
    ranked = sorted_cells[by_cell]
    first = np.searchsorted(ranked, ranked, side="left")
    rank = np.empty(len(c), np.int64)
    rank[order[by_cell]] = np.arange(len(c)) - first
    return rank < max_per_cell


def _bin(x: np.ndarray, bins: int) -> np.ndarray:
    lo, hi = x.min(), x.max()
    if hi <= lo:
        return np.zeros(len(x), np.int64)
    return np.minimum(((x - lo) / (hi - lo) * bins).astype(np.int64), bins - 1)


# --------------------------------------------------------------------------- training


class LagrangianCallback(BaseCallback):
    """Updates λ by PID on finished episodes' costs vs the annealed limit; rolls out checkpoints.

    After every finished training episode, λ ← PID(episode cost, limit(progress)), so λ
    responds within a short budget. At each checkpoint step it calls
    ``on_checkpoint(index, model)``.
    """

    def __init__(self, config: CollectConfig, state: LagrangeState, on_checkpoint) -> None:
        super().__init__(verbose=0)
        self.config = config
        self.state = state
        self.pid = PIDLagrangian(config.pid)
        self.on_checkpoint = on_checkpoint
        total = config.total_timesteps
        self.checkpoint_steps = np.linspace(0, total, config.num_checkpoints).astype(int)[1:]
        self.next_checkpoint = 0
        self.history: list[dict[str, float]] = []

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if "episode_cost" in info:
                self._update(info["episode_reward"], info["episode_cost"])
        steps = self.checkpoint_steps
        while (
            self.next_checkpoint < len(steps) and self.num_timesteps >= steps[self.next_checkpoint]
        ):
            self.next_checkpoint += 1
            self.on_checkpoint(self.next_checkpoint, self.model)
        return True

    def _update(self, episode_reward: float, episode_cost: float) -> None:
        """One PID step per finished training episode (short budgets need responsive λ)."""
        c = self.config
        progress = self.num_timesteps / c.total_timesteps
        limit = annealed_limit(progress, c.cost_limit_start, c.cost_limit_end, c.anneal_fraction)
        self.state.multiplier = self.pid.update(float(episode_cost), limit)
        self.history.append({"step": self.num_timesteps, "episode_reward": float(episode_reward),
                             "episode_cost": float(episode_cost), "cost_limit": limit,
                             "lambda": self.state.multiplier})  # fmt: skip
        self.logger.record_mean("charts/episode_cost", float(episode_cost))
        self.logger.record_mean("charts/episode_reward", float(episode_reward))
        self.logger.record("charts/cost_limit", limit)
        self.logger.record("charts/lambda", self.state.multiplier)


@dataclass
class CollectResult:
    """A collection run's output: the kept dataset, its metadata, and what led to it."""

    data: dict[str, np.ndarray]
    metadata: DatasetMetadata
    all_returns: np.ndarray
    """(K_all, 2) (cost, reward) returns of every rolled-out trajectory."""
    kept: np.ndarray
    """(K_all,) bool: which of them the grid filter kept."""
    checkpoint: np.ndarray
    """(K_all,) int: the checkpoint index each trajectory came from (0 = untrained)."""
    training_log: list[dict[str, float]]
    seconds: float


KIND = "collect_run"
"""Kind of a collection's checkpoints (:mod:`saferl.online.resume` format)."""
ROLLOUTS = "rollouts"
"""Folder of a work folder holding the trajectories of each behaviour checkpoint (npz)."""
STOP = threading.Event()
"""Set (e.g. by a SIGTERM handler) to make running collections checkpoint and stop."""


class CollectionInterrupted(RuntimeError):
    """A collection stopped at a checkpoint; running it again with the same config resumes."""

    resumable = True


def collect(
    config: CollectConfig,
    work: str | Path | None = None,
    checkpoint_every: int = 10_000,
    stop: Callable[[], bool] | None = None,
) -> CollectResult:
    """Train the Lagrangian behaviour policy, roll out its checkpoints, grid-filter; see module.
    Seeded with ``config.seed``; the caller's global RNG states are left as they were.

    With ``work`` (a folder) the run checkpoints there every ``checkpoint_every`` env steps and
    resumes from the newest checkpoint if one exists (ValueError if it was saved with another
    config); when ``stop()`` turns true it checkpoints and raises :class:`CollectionInterrupted`.
    """
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if stop is not None and work is None:
        raise ValueError("stopping with a checkpoint needs work= (a folder)")
    if work is not None and resume.latest_checkpoint(work) is not None:
        check_resumable(config, work)
    with seeded(config.seed):
        return _collect(config, work, checkpoint_every, stop)


def _settings(config: CollectConfig) -> dict[str, Any]:
    """The config as JSON, without what does not change the data (verbosity)."""
    return {k: v for k, v in _jsonable(asdict(config)).items() if k != "verbose"}


def check_resumable(config: CollectConfig, work: str | Path) -> None:
    """ValueError unless the collection checkpointed in ``work`` was run with ``config``."""
    saved = resume.read_run_state(work, KIND)["config"]
    changed = sorted(k for k, v in _settings(config).items() if saved.get(k) != v)
    if changed:
        raise ValueError(f"the collection checkpointed in {str(work)!r} was run with other "
                         f"settings ({', '.join(changed)}); remove that folder to start "
                         "afresh")  # fmt: skip


def _build(config: CollectConfig, state: LagrangeState) -> tuple[VecNormalize, BaseAlgorithm]:
    """The normalised training envs (reward shaped by ``state``'s λ) and the fresh learner."""
    probe = make_env(config)
    if (
        not isinstance(probe.action_space, gym.spaces.Box)
        or len(probe.observation_space.shape) != 1
    ):
        raise ValueError(f"{config.env_id} needs flat Box observations and actions")
    probe.close()

    def train_env() -> gym.Env:
        return LagrangianRewardWrapper(make_env(config), state)

    kwargs = {**DEFAULT_LEARNER_KWARGS[config.algo], **config.learner_kwargs}
    # returns are normalised with the learner's own discount (as RL-Zoo does), so a γ = 0.9999
    # learner sees rewards scaled by its long returns, not by 100-step ones
    venv = VecNormalize(DummyVecEnv([train_env] * config.n_envs), norm_obs=True, norm_reward=True,
                        gamma=float(kwargs.get("gamma", 0.99)))  # fmt: skip
    venv.seed(config.seed)
    if config.algo == "ppo":
        kwargs["n_steps"] = max(8, min(kwargs["n_steps"], config.total_timesteps // config.n_envs))
    model = ALGOS[config.algo]("MlpPolicy", venv, seed=config.seed, device=config.device,
                               verbose=0, **kwargs)  # fmt: skip
    return venv, model


def _collect(
    config: CollectConfig,
    work: str | Path | None,
    checkpoint_every: int,
    stop: Callable[[], bool] | None,
) -> CollectResult:
    start = time.perf_counter()
    state = LagrangeState()
    venv, model = _build(config, state)
    trajectories: list[Trajectory] = []
    checkpoint_ids: list[int] = []

    def on_checkpoint(index: int, m: BaseAlgorithm) -> None:
        policy = sb3_policy(m, venv)
        made = []
        for j, (det, noise) in enumerate(config.modes()):
            seed = config.seed * 1_000_003 + index * 1000 + j * 100
            runs = rollout(lambda obs, det=det: policy(obs, det), lambda: make_env(config),
                           config.episodes_per_mode, seed, noise_std=noise)  # fmt: skip
            trajs = runs.episodes()
            made.extend(trajs)
        trajectories.extend(made)
        checkpoint_ids.extend([index] * len(made))
        if work is not None:
            save_trajectories(Path(work) / ROLLOUTS / f"{index:04d}.npz", made)
        if config.verbose:
            recent = [(float(t["costs"].sum()), float(t["rewards"].sum())) for t in trajs]
            print(f"[collect {config.env_id}] checkpoint {index}/{config.num_checkpoints - 1} "
                  f"step {m.num_timesteps} λ={state.multiplier:.3f} "
                  f"last (cost, reward) {np.round(np.mean(recent, axis=0), 1).tolist()} "
                  f"{time.perf_counter() - start:.0f}s", flush=True)  # fmt: skip

    callback = LagrangianCallback(config, state, on_checkpoint)
    resumed = work is not None and resume.latest_checkpoint(work) is not None
    saver, seconds_before = None, 0.0
    if resumed:
        venv.venv._reset_seeds()  # the first reset continues the restored env RNG streams
        seconds_before = _restore(work, model, venv, state, callback, trajectories,
                                  checkpoint_ids)  # fmt: skip
    else:
        on_checkpoint(0, model)
    callbacks: list[BaseCallback] = [callback]
    if work is not None:
        saver = CollectCheckpointer(work, checkpoint_every, stop, config, venv, state, callback,
                                    seconds_before, start)  # fmt: skip
        callbacks.append(saver)
    remaining = config.total_timesteps - model.num_timesteps
    if remaining > 0:
        model.learn(total_timesteps=remaining, callback=CallbackList(callbacks),
                    reset_num_timesteps=not resumed)  # fmt: skip
    if saver is not None and saver.stopped:
        venv.close()
        raise CollectionInterrupted(f"{config.env_id}: stopped at {saver.saved_at} of "
                                    f"{config.total_timesteps} env steps; checkpoint in "
                                    f"{work} (run again to resume)")  # fmt: skip
    while callback.next_checkpoint < len(callback.checkpoint_steps):
        callback.next_checkpoint += 1
        on_checkpoint(callback.next_checkpoint, model)
    venv.close()
    start -= seconds_before  # a resumed run's time counts its earlier sittings
    return _assemble(config, trajectories, np.asarray(checkpoint_ids), callback.history, start)


# --------------------------------------------------------------------------- checkpoints


def save_trajectories(path: Path, trajectories: Sequence[Trajectory]) -> None:
    """The trajectories of one behaviour checkpoint as one npz (arrays joined, ``lengths``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.concatenate([t[k] for t in trajectories]) for k in trajectories[0]}
    arrays["lengths"] = np.array([len(t["rewards"]) for t in trajectories], np.int64)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_trajectories(path: Path) -> list[Trajectory]:
    """The trajectories :func:`save_trajectories` wrote (no pickle)."""
    with np.load(path, allow_pickle=False) as data:
        lengths = data["lengths"]
        arrays = {k: data[k] for k in data.files if k != "lengths"}
    ends = np.cumsum(lengths)
    bounds = zip(ends - lengths, ends, strict=True)
    return [{k: v[a:b] for k, v in arrays.items()} for a, b in bounds]


def _normaliser_tensors(venv: VecNormalize) -> dict[str, torch.Tensor]:
    return {f"vecnorm.{name}.{field}": torch.as_tensor(np.asarray(getattr(rms, field)))
            for name, rms in (("obs", venv.obs_rms), ("ret", venv.ret_rms))
            for field in ("mean", "var")}  # fmt: skip


class CollectCheckpointer(BaseCallback):
    """Checkpoints a collection into its work folder every ``every`` env steps and when
    ``stop()`` turns true (then training stops), at rollout starts: after a finished update,
    before the next env step (PPO: at rollout boundaries)."""

    def __init__(self, work, every, stop, config, venv, lagrange, lagrangian, seconds, start):
        super().__init__()
        self.work, self.every, self.stop = Path(work), int(every), stop
        self.config, self.venv, self.lagrange, self.lagrangian = config, venv, lagrange, lagrangian
        self.seconds_before, self.start = seconds, start
        self.saved_at: int | None = None
        self.stopped = False
        self.chunks: list[str] = []
        self.rows_saved = 0

    def _on_training_start(self) -> None:
        # a fresh run checkpoints at its first step already (so a stop always leaves one)
        self.saved_at = self.num_timesteps if self.num_timesteps > 0 else -1
        if hasattr(self.model, "replay_buffer") and self.num_timesteps > 0:
            state = resume.read_run_state(self.work, KIND)
            self.chunks, self.rows_saved = list(state["replay_chunks"]), int(state["rows"])

    def _on_rollout_start(self) -> None:
        step = self.num_timesteps
        if self.stop is not None and self.stop():
            if step != self.saved_at:
                self.save()
            self.stopped = True
        elif step // self.every > self.saved_at // self.every:
            self.save()

    def _on_step(self) -> bool:
        return not self.stopped

    def _on_training_end(self) -> None:
        if not self.stopped and self.num_timesteps != self.saved_at:
            self.save()  # a run killed while it rolls out or writes the dataset trains no more

    def save(self) -> Path:
        model: BaseAlgorithm = self.model
        step = int(self.num_timesteps)
        tensors, learner = resume.learner_state(model, self.venv.venv, self.work, step,
                                                self.chunks, self.rows_saved)  # fmt: skip
        self.chunks, self.rows_saved = learner["replay_chunks"], learner["rows"]
        tensors.update(_normaliser_tensors(self.venv))
        pid, cb = self.lagrangian.pid, self.lagrangian
        state = {
            "config": _settings(self.config),
            **learner,
            "normaliser_counts": [float(self.venv.obs_rms.count), float(self.venv.ret_rms.count)],
            "multiplier": self.lagrange.multiplier,
            "pid": {"integral": pid.integral, "smoothed_violation": pid.smoothed_violation,
                    "smoothed_cost": pid.smoothed_cost, "multiplier": pid.multiplier},
            "next_checkpoint": cb.next_checkpoint,
            "history": cb.history,
            "seconds": self.seconds_before + time.perf_counter() - self.start,
        }  # fmt: skip
        path = resume.write_checkpoint(self.work, step, tensors, state, kind=KIND)
        self.saved_at = step
        return path


def _restore(work, model, venv, lagrange, lagrangian, trajectories, checkpoint_ids) -> float:
    """Load the newest checkpoint of ``work`` into a freshly built collection; its seconds."""
    tensors, state = resume.read_checkpoint(work, KIND)
    resume.restore_learner(model, venv.venv, work, tensors, state)
    for name, rms in (("obs", venv.obs_rms), ("ret", venv.ret_rms)):
        rms.mean = tensors[f"vecnorm.{name}.mean"].numpy().astype(np.float64)
        rms.var = tensors[f"vecnorm.{name}.var"].numpy().astype(np.float64)
    venv.obs_rms.count, venv.ret_rms.count = state["normaliser_counts"]
    lagrange.multiplier = float(state["multiplier"])
    for key, value in state["pid"].items():
        setattr(lagrangian.pid, key, value)
    lagrangian.next_checkpoint = int(state["next_checkpoint"])
    lagrangian.history = list(state["history"])
    for index in range(lagrangian.next_checkpoint + 1):
        made = load_trajectories(Path(work) / ROLLOUTS / f"{index:04d}.npz")
        trajectories.extend(made)
        checkpoint_ids.extend([index] * len(made))
    return float(state["seconds"])


def _assemble(config, trajectories, checkpoint_ids, history, start) -> CollectResult:
    returns = np.array([[t["costs"].sum(dtype=np.float64), t["rewards"].sum(dtype=np.float64)]
                        for t in trajectories])  # fmt: skip
    rng = np.random.default_rng(config.seed)
    keep = grid_filter(returns[:, 0], returns[:, 1], config.grid_bins, config.max_per_cell, rng)
    kept = [t for t, k in zip(trajectories, keep, strict=True) if k]
    data = {k: np.concatenate([t[k] for t in kept]) for k in REQUIRED_KEYS}
    validate_data(data)
    r_min, r_max = float(returns[:, 1].min()), float(returns[:, 1].max())
    metadata = DatasetMetadata(
        env_id=config.env_id,
        max_episode_steps=config.max_episode_steps,
        reward_min=r_min,
        reward_max=r_max if r_max > r_min else r_min + 1.0,
        max_cost=float(returns[keep, 0].max()),
        cost_thresholds=[float(k) for k in config.cost_thresholds],
        collection=_describe(config, len(trajectories), int(keep.sum())),
        obs_dim=int(data["observations"].shape[1]),
        act_dim=int(data["actions"].shape[1]),
        num_trajectories=int(keep.sum()),
        seed=config.seed,
        env_kwargs=dict(config.env_kwargs),
        extra={"collect_config": _jsonable(asdict(config)),
               "reference_returns": "R_min/R_max = min/max reward return of all rollouts"},
    )  # fmt: skip
    return CollectResult(data, metadata, returns, keep, checkpoint_ids, history,
                         time.perf_counter() - start)  # fmt: skip


def _describe(config: CollectConfig, total: int, kept: int) -> str:
    p = config.pid
    return (
        f"{config.algo.upper()}-Lagrangian (PID {p.kp}/{p.ki}/{p.kd}, λ≤{p.lambda_max}), "
        f"{config.total_timesteps} env steps, episode cost limit annealed "
        f"{config.cost_limit_start}→{config.cost_limit_end} over {config.anneal_fraction:.0%} "
        f"of training; {config.num_checkpoints} checkpoints × modes {config.modes()} "
        f"(deterministic, noise std) × {config.episodes_per_mode} episodes = {total} "
        f"trajectories; grid filter {config.grid_bins}×{config.grid_bins} on (cost, reward) "
        f"returns, ≤{config.max_per_cell} per cell: {kept} kept; seed {config.seed}"
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return repr(value)


# --------------------------------------------------------------------------- grid of tasks


def output_files(dataset: str | Path) -> tuple[Path, Path, Path]:
    """(dataset, summary, plot) paths of a collection: the summary (.json) and the spread plot
    (.png) lie beside the dataset."""
    dataset = Path(dataset)
    return dataset, dataset.with_suffix(".json"), dataset.with_suffix(".png")


def write_summary(path: str | Path, result: CollectResult) -> None:
    """Per-trajectory returns, filter decisions, the training log and the metadata, as JSON."""
    summary = {
        "metadata": asdict(result.metadata),
        "returns_cost_reward": result.all_returns.round(4).tolist(),
        "kept": result.kept.astype(int).tolist(),
        "checkpoint": result.checkpoint.astype(int).tolist(),
        "training_log": result.training_log,
        "seconds": result.seconds,
    }
    write_json(path, summary, indent=1)


def work_folder(dataset: str | Path) -> Path:
    """Where the collection of ``dataset`` checkpoints (``<dataset>.collect/``, beside it)."""
    dataset = Path(dataset)
    return dataset.with_name(dataset.name + ".collect")


def collect_cell(
    *, config: CollectConfig, out: str, verbose: bool = False, checkpoint_every: int = 10_000
) -> list[dict[str, Any]]:
    """One cell of a collection grid: :func:`collect` the task of ``config``, save the dataset
    at ``out`` (atomically, :func:`saferl.data.save_dataset`), its summary (.json) and spread
    plot (.png) beside it; one row describing the dataset (task, path, transitions,
    trajectories, seconds, the reward range and largest cost). The run checkpoints into
    :func:`work_folder` every ``checkpoint_every`` env steps (a cell run again resumes there;
    :data:`STOP` set stops it at a checkpoint) and removes that folder once the dataset is
    written."""
    from saferl.data.plot import plot_spread

    dataset, summary, plot = output_files(out)
    work = work_folder(dataset)
    if STOP.is_set():
        raise CollectionInterrupted(f"{config.env_id}: not started (stop requested)")
    result = collect(replace(config, verbose=verbose), work=work,
                     checkpoint_every=checkpoint_every, stop=STOP.is_set)  # fmt: skip
    meta = result.metadata
    save_dataset(dataset, result.data, meta)
    write_summary(summary, result)
    title = f"{config.env_id}: {meta.num_trajectories} trajectories kept"
    plot_spread(result.all_returns, result.kept, result.checkpoint, meta.cost_thresholds, plot,
                title=title)  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    return [{"task": config.env_id, "path": str(dataset),
             "transitions": int(len(result.data["rewards"])),
             "trajectories": int(meta.num_trajectories), "seconds": float(result.seconds),
             "reward_min": float(meta.reward_min), "reward_max": float(meta.reward_max),
             "max_cost": float(meta.max_cost)}]  # fmt: skip


def collect_cells(
    jobs: Sequence[tuple[CollectConfig, str | Path]],
    cpus_per_cell: float = 1.0,
    gpus_per_cell: float = 0.0,
    checkpoint_every: int = 10_000,
) -> list[Cell]:
    """One cell per (config, dataset path), keyed by the task's env id; the paths are made
    absolute (a Ray worker may run elsewhere than this folder); each cell checkpoints every
    ``checkpoint_every`` env steps (:func:`collect_cell`)."""
    tasks = [config.env_id for config, _ in jobs]
    twice = sorted({t for t in tasks if tasks.count(t) > 1})
    if twice:
        raise ValueError(f"each task can be collected once per grid; given more than once: {twice}")
    cells = []
    for config, path in jobs:
        out = str(Path(path).absolute())
        outputs = tuple(str(p) for p in output_files(out))
        kwargs = {"config": replace(config, verbose=False), "out": out,
                  "verbose": config.verbose, "checkpoint_every": checkpoint_every}  # fmt: skip
        cells.append(Cell(config.env_id, collect_cell, kwargs, cpus=cpus_per_cell,
                          gpus=gpus_per_cell, outputs=outputs,
                          volatile=("verbose", "checkpoint_every")))  # fmt: skip
    return cells


def run_collect(
    jobs: Sequence[tuple[CollectConfig, str | Path]],
    out: str | Path,
    workers: int = 1,
    address: str | None = None,
    cpus_per_cell: float = 1.0,
    gpus_per_cell: float = 0.0,
    log: Callable[[str], None] = print,
    checkpoint_every: int = 10_000,
) -> GridResult:
    """Collect each (config, dataset path) as a cell of a :func:`saferl.grid.run_grid` grid under
    ``out``: one row per dataset. A re-run with the same ``out`` skips the tasks already
    collected — unless their settings or dataset path changed since, or one of the dataset's
    three files is gone (the grid's fingerprint and outputs): those are collected again."""
    cells = collect_cells(jobs, cpus_per_cell, gpus_per_cell, checkpoint_every)
    return run_grid(cells, out, workers=workers, address=address, log=log)
