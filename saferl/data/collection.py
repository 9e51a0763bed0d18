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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from saferl.common.io import write_json
from saferl.common.lagrangian import PIDLagrangian, PIDLagrangianConfig, annealed_limit
from saferl.common.runtime import seeded
from saferl.data.dsrl import REQUIRED_KEYS, DatasetMetadata, save_dataset, validate_data
from saferl.data.rollout import rollout
from saferl.grid import Cell, GridResult, run_grid

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


def collect(config: CollectConfig) -> CollectResult:
    """Train the Lagrangian behaviour policy, roll out its checkpoints, grid-filter; see module.
    Seeded with ``config.seed``; the caller's global RNG states are left as they were."""
    with seeded(config.seed):
        return _collect(config)


def _collect(config: CollectConfig) -> CollectResult:
    start = time.perf_counter()
    state = LagrangeState()
    probe = make_env(config)
    if (
        not isinstance(probe.action_space, gym.spaces.Box)
        or len(probe.observation_space.shape) != 1
    ):
        raise ValueError(f"{config.env_id} needs flat Box observations and actions")
    probe.close()

    def train_env() -> gym.Env:
        return LagrangianRewardWrapper(make_env(config), state)

    venv = VecNormalize(DummyVecEnv([train_env] * config.n_envs), norm_obs=True, norm_reward=True)
    venv.seed(config.seed)
    kwargs = {**DEFAULT_LEARNER_KWARGS[config.algo], **config.learner_kwargs}
    if config.algo == "ppo":
        kwargs["n_steps"] = max(8, min(kwargs["n_steps"], config.total_timesteps // config.n_envs))
    model = ALGOS[config.algo]("MlpPolicy", venv, seed=config.seed, device=config.device,
                               verbose=0, **kwargs)  # fmt: skip
    trajectories: list[Trajectory] = []
    checkpoint_ids: list[int] = []

    def on_checkpoint(index: int, m: BaseAlgorithm) -> None:
        policy = sb3_policy(m, venv)
        for j, (det, noise) in enumerate(config.modes()):
            seed = config.seed * 1_000_003 + index * 1000 + j * 100
            runs = rollout(lambda obs, det=det: policy(obs, det), lambda: make_env(config),
                           config.episodes_per_mode, seed, noise_std=noise)  # fmt: skip
            trajs = runs.episodes()
            trajectories.extend(trajs)
            checkpoint_ids.extend([index] * len(trajs))
        if config.verbose:
            recent = [(float(t["costs"].sum()), float(t["rewards"].sum())) for t in trajs]
            print(f"[collect {config.env_id}] checkpoint {index}/{config.num_checkpoints - 1} "
                  f"step {m.num_timesteps} λ={state.multiplier:.3f} "
                  f"last (cost, reward) {np.round(np.mean(recent, axis=0), 1).tolist()} "
                  f"{time.perf_counter() - start:.0f}s", flush=True)  # fmt: skip

    callback = LagrangianCallback(config, state, on_checkpoint)
    on_checkpoint(0, model)
    model.learn(total_timesteps=config.total_timesteps, callback=callback)
    while callback.next_checkpoint < len(callback.checkpoint_steps):
        callback.next_checkpoint += 1
        on_checkpoint(callback.next_checkpoint, model)
    venv.close()
    return _assemble(config, trajectories, np.asarray(checkpoint_ids), callback.history, start)


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


def collect_cell(*, config: CollectConfig, out: str, verbose: bool = False) -> list[dict[str, Any]]:
    """One cell of a collection grid: :func:`collect` the task of ``config``, save the dataset
    at ``out`` (atomically, :func:`saferl.data.save_dataset`), its summary (.json) and spread
    plot (.png) beside it; one row describing the dataset (task, path, transitions,
    trajectories, seconds, the reward range and largest cost)."""
    from saferl.data.plot import plot_spread

    dataset, summary, plot = output_files(out)
    result = collect(replace(config, verbose=verbose))
    meta = result.metadata
    save_dataset(dataset, result.data, meta)
    write_summary(summary, result)
    title = f"{config.env_id}: {meta.num_trajectories} trajectories kept"
    plot_spread(result.all_returns, result.kept, result.checkpoint, meta.cost_thresholds, plot,
                title=title)  # fmt: skip
    return [{"task": config.env_id, "path": str(dataset),
             "transitions": int(len(result.data["rewards"])),
             "trajectories": int(meta.num_trajectories), "seconds": float(result.seconds),
             "reward_min": float(meta.reward_min), "reward_max": float(meta.reward_max),
             "max_cost": float(meta.max_cost)}]  # fmt: skip


def collect_cells(
    jobs: Sequence[tuple[CollectConfig, str | Path]],
    cpus_per_cell: float = 1.0,
    gpus_per_cell: float = 0.0,
) -> list[Cell]:
    """One cell per (config, dataset path), keyed by the task's env id; the paths are made
    absolute (a Ray worker may run elsewhere than this folder)."""
    tasks = [config.env_id for config, _ in jobs]
    twice = sorted({t for t in tasks if tasks.count(t) > 1})
    if twice:
        raise ValueError(f"each task can be collected once per grid; given more than once: {twice}")
    cells = []
    for config, path in jobs:
        out = str(Path(path).absolute())
        outputs = tuple(str(p) for p in output_files(out))
        kwargs = {"config": replace(config, verbose=False), "out": out,
                  "verbose": config.verbose}  # fmt: skip
        cells.append(Cell(config.env_id, collect_cell, kwargs, cpus=cpus_per_cell,
                          gpus=gpus_per_cell, outputs=outputs, volatile=("verbose",)))  # fmt: skip
    return cells


def run_collect(
    jobs: Sequence[tuple[CollectConfig, str | Path]],
    out: str | Path,
    workers: int = 1,
    address: str | None = None,
    cpus_per_cell: float = 1.0,
    gpus_per_cell: float = 0.0,
    log: Callable[[str], None] = print,
) -> GridResult:
    """Collect each (config, dataset path) as a cell of a :func:`saferl.grid.run_grid` grid under
    ``out``: one row per dataset. A re-run with the same ``out`` skips the tasks already
    collected — unless their settings or dataset path changed since, or one of the dataset's
    three files is gone (the grid's fingerprint and outputs): those are collected again."""
    cells = collect_cells(jobs, cpus_per_cell, gpus_per_cell)
    return run_grid(cells, out, workers=workers, address=address, log=log)
