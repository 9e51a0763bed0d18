"""DSRL-format offline safe-RL datasets: one HDF5 file per task, validated on save and load.

Format (DSRL, Liu et al. 2023, "Datasets and Benchmarks for Offline Safe RL"; D4RL layout): seven
top-level arrays of one length N, all float32 —

| key | shape | meaning |
|---|---|---|
| ``observations`` | (N, obs_dim) | s_t |
| ``next_observations`` | (N, obs_dim) | s_{t+1} |
| ``actions`` | (N, act_dim) | a_t |
| ``rewards`` | (N,) | r_t |
| ``costs`` | (N,) | c_t |
| ``terminals`` | (N,) | 1 where s_{t+1} is terminal (the episode ended by failure), else 0 |
| ``timeouts`` | (N,) | 1 where the episode was cut by its time limit (or truncated), else 0 |

Steps of one trajectory are stored contiguously; a trajectory ends at the first step whose
``terminals`` or ``timeouts`` flag is 1.

Our files also carry a :class:`DatasetMetadata` as a JSON string in the root attribute
``saferl_metadata`` (env id, max episode steps, reference returns R_min/R_max, max cost, cost
thresholds, how the data were collected). Real DSRL files have no such attribute. Those of
DSRL's velocity tasks are recognised by their task (:data:`DSRL_TASKS`: from the file name as
DSRL distributes it, e.g. ``SafetyHopperVelocityGymnasium-v1-250-2240.hdf5``, or from
``task=``) and get DSRL's own metadata: our matching env (``SaferlPlanar-<Robot>Velocity-v1``),
DSRL's published reference returns and thresholds 20/40/80, so that scores are DSRL's. Any
other file without metadata falls back to data-derived fields (:func:`infer_metadata`), with a
warning; ``metadata=`` overrides everything.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from saferl.common.io import atomic_write

REQUIRED_KEYS: tuple[str, ...] = (
    "observations",
    "next_observations",
    "actions",
    "rewards",
    "costs",
    "terminals",
    "timeouts",
)
"""The arrays every DSRL-format dataset holds."""

DEFAULT_COST_THRESHOLDS: tuple[float, ...] = (10.0, 20.0, 40.0)
"""Cost thresholds κ of a dataset whose metadata names none."""

_MATRIX_KEYS = ("observations", "next_observations", "actions")
_FLAG_KEYS = ("terminals", "timeouts")
_METADATA_ATTR = "saferl_metadata"
_FORMAT_VERSION = 1


@dataclass
class DatasetMetadata:
    """What a dataset needs beyond its arrays to be evaluated the DSRL way.

    Normalised reward = (R − R_min)/(R_max − R_min); normalised cost = (C + ε)/(κ + ε), ε = 1 if
    κ = 0 else 0 (DSRL); see :meth:`normalized_reward` and :meth:`normalized_cost`.
    """

    env_id: str
    """Gymnasium id of the task the data come from (``envs.make(env_id)`` rebuilds it)."""
    max_episode_steps: int
    """Episode length limit used during collection (and for evaluation)."""
    reward_min: float
    """R_min: reference episode reward return that normalises to 0."""
    reward_max: float
    """R_max: reference episode reward return that normalises to 1."""
    max_cost: float
    """Largest episode cost return in the data (or the reference's)."""
    cost_thresholds: list[float] = field(default_factory=lambda: list(DEFAULT_COST_THRESHOLDS))
    """Episode cost limits κ to evaluate at (DSRL uses three per task)."""
    collection: str = "unknown"
    """How the data were collected (behaviour policies, budgets, filter)."""
    obs_dim: int = 0
    """Observation size (0: fill from the data on save)."""
    act_dim: int = 0
    """Action size (0: fill from the data on save)."""
    num_trajectories: int = 0
    """Number of trajectories (0: fill from the data on save)."""
    seed: int | None = None
    """Seed of the collection run, if any."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for ``envs.make(env_id, **env_kwargs)`` (e.g. ``max_limbs``)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping (JSON-serialisable)."""

    def __post_init__(self) -> None:
        if isinstance(self.cost_thresholds, tuple):
            self.cost_thresholds = list(self.cost_thresholds)
        validate_metadata(self)

    def normalized_reward(self, reward_return: np.ndarray | float) -> np.ndarray:
        """DSRL normalised reward (R − R_min)/(R_max − R_min); any shape."""
        span = self.reward_max - self.reward_min
        return (np.asarray(reward_return, dtype=np.float64) - self.reward_min) / span

    def normalized_cost(self, cost_return: np.ndarray | float, threshold: float) -> np.ndarray:
        """DSRL normalised cost (C + ε)/(κ + ε), ε = 1 if κ = 0 else 0; safe iff ≤ 1."""
        if not np.isfinite(threshold) or threshold < 0:
            raise ValueError(f"threshold must be a finite κ >= 0, got {threshold!r}")
        eps = 1.0 if threshold == 0 else 0.0
        return (np.asarray(cost_return, dtype=np.float64) + eps) / (threshold + eps)

    def make_env(self, **kwargs: Any):
        """The task as collected (:func:`make_env` with ``max_episode_steps`` and
        ``env_kwargs``); ``kwargs`` override (e.g. ``render_mode``). Evaluate policies on it."""
        merged = {"max_episode_steps": self.max_episode_steps, **self.env_kwargs, **kwargs}
        return make_env(self.env_id, **merged)

    def to_json(self) -> str:
        """The metadata as a JSON string (what the HDF5 attribute holds)."""
        return json.dumps({"format_version": _FORMAT_VERSION, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DatasetMetadata:
        """Parse :meth:`to_json` output; unknown fields go to ``extra``."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"dataset metadata is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError(f"dataset metadata must be a JSON object, got {type(raw).__name__}")
        raw.pop("format_version", None)
        names = {f.name for f in fields(cls)}
        unknown = {k: raw.pop(k) for k in list(raw) if k not in names}
        missing = [k for k in ("env_id", "max_episode_steps", "reward_min", "reward_max",
                               "max_cost") if k not in raw]  # fmt: skip
        if missing:
            raise KeyError(f"dataset metadata lacks required field(s) {missing}")
        meta = cls(**raw)
        meta.extra = {**meta.extra, **unknown}
        return meta


def make_env(env_id: str, **kwargs: Any):
    """An env whose ``info["cost"]`` is the safety cost.

    The toolkit's ids come from :func:`envs.make`; a DSRL task name (:func:`find_dsrl_task`,
    e.g. ``"OfflineHopperVelocityGymnasium-v1"``) or a plain Gymnasium MuJoCo id that one of
    ``envs.PLANAR_TASKS`` builds on (``"Hopper-v4"``: v1, ``"Hopper-v5"``: v0) gets that planar
    task; any other id goes to ``gymnasium.make`` and must report ``info["cost"]``.
    """
    import gymnasium as gym

    import envs

    if env_id in envs.registered_ids() or env_id.startswith("Saferl"):
        return envs.make(env_id, **kwargs)
    dsrl = find_dsrl_task(env_id)
    if dsrl is not None:
        return envs.make(dsrl.env_id, **kwargs)
    for planar_id, task in envs.PLANAR_TASKS.items():
        if task.base_id == env_id:
            return envs.make(planar_id, **kwargs)
    return gym.make(env_id, **kwargs)


# --------------------------------------------------------------------------- DSRL's own tasks

DSRL_VELOCITY_THRESHOLDS: tuple[float, ...] = (20.0, 40.0, 80.0)
"""Cost thresholds κ of DSRL's velocity tasks, per 1000-step episode (DSRL's benchmark; OSRL's
CDT configs, ``examples/configs/cdt_configs.py``, use the same 20/40/80)."""


@dataclass(frozen=True)
class DSRLTask:
    """One of DSRL's tasks: its name, our env for it and DSRL's normalisation constants.

    Constants from ``dsrl/infos.py`` of liuzuxin/DSRL (commit 71064f2): ``MAX_EPISODE_REWARD``
    and ``MIN_EPISODE_REWARD`` (R_max, R_min: DSRL's ``get_normalized_score`` divides by their
    difference), ``MAX_EPISODE_COST``, ``DEFAULT_MAX_EPISODE_STEPS`` and ``DATASET_URLS``.
    """

    name: str
    """DSRL's Gymnasium id, which OSRL names tasks by (``"OfflineHopperVelocityGymnasium-v1"``)."""
    env_id: str
    """Our env of the same task (``"SaferlPlanar-HopperVelocity-v1"``)."""
    reward_min: float
    """R_min (``MIN_EPISODE_REWARD``)."""
    reward_max: float
    """R_max (``MAX_EPISODE_REWARD``)."""
    max_cost: float
    """``MAX_EPISODE_COST``."""
    obs_dim: int
    """Observation size of the task's files."""
    act_dim: int
    """Action size of the task's files."""
    dataset_file: str
    """The file DSRL distributes (the last part of its ``DATASET_URLS`` entry)."""
    max_episode_steps: int = 1000
    """``DEFAULT_MAX_EPISODE_STEPS``."""
    cost_thresholds: tuple[float, ...] = DSRL_VELOCITY_THRESHOLDS
    """κ to evaluate at."""

    def metadata(self, data: Mapping[str, np.ndarray], source: str = "") -> DatasetMetadata:
        """DSRL's metadata for ``data`` (a file of this task); ValueError if its observation or
        action size is not the task's."""
        sizes = (data["observations"].shape[1], data["actions"].shape[1])
        expected = (self.obs_dim, self.act_dim)
        if sizes != expected:
            raise ValueError(f"{source or 'dataset'} has observations/actions of size {sizes}; "
                             f"DSRL's {self.name} has {expected}")  # fmt: skip
        return DatasetMetadata(
            env_id=self.env_id,
            max_episode_steps=self.max_episode_steps,
            reward_min=self.reward_min,
            reward_max=self.reward_max,
            max_cost=self.max_cost,
            cost_thresholds=list(self.cost_thresholds),
            collection=f"DSRL {self.name} ({self.dataset_file}); R_min/R_max/max cost: DSRL's "
            "published reference values (dsrl/infos.py)",
            obs_dim=self.obs_dim,
            act_dim=self.act_dim,
            num_trajectories=len(split_trajectories(data)),
            extra={"dsrl_task": self.name, "source": source},
        )


def _velocity_task(robot: str, obs_act: tuple[int, int], r_min: float, r_max: float,
                   max_cost: float, file: str) -> DSRLTask:  # fmt: skip
    return DSRLTask(f"Offline{robot}VelocityGymnasium-v1", f"SaferlPlanar-{robot}Velocity-v1",
                    r_min, r_max, max_cost, *obs_act, file)  # fmt: skip


DSRL_TASKS: dict[str, DSRLTask] = {
    t.name: t
    for t in (
        _velocity_task("Ant", (27, 8), 6.1519012451171875, 2976.276611328125, 250.0,
                       "SafetyAntVelocityGymnasium-v1-250-2249.hdf5"),
        _velocity_task("HalfCheetah", (17, 6), 5.7509765625, 2806.93310546875, 250.0,
                       "SafetyHalfCheetahVelocityGymnasium-v1-250-2495.hdf5"),
        _velocity_task("Hopper", (11, 3), 37.05154800415039, 1911.396728515625, 250.0,
                       "SafetyHopperVelocityGymnasium-v1-250-2240.hdf5"),
        _velocity_task("Swimmer", (8, 2), 0.07114458084106445, 238.95831298828125, 200.0,
                       "SafetySwimmerVelocityGymnasium-v1-200-1686.hdf5"),
        _velocity_task("Walker2d", (17, 6), 18.668498992919922, 3418.223876953125, 300.0,
                       "SafetyWalker2dVelocityGymnasium-v1-300-2729.hdf5"),
    )
}  # fmt: skip
"""DSRL's velocity tasks by DSRL's Gymnasium id (values from ``dsrl/infos.py``)."""

_DSRL_NAME = re.compile(
    r"(Offline|Safety)?(Ant|HalfCheetah|Hopper|Swimmer|Walker2d)Velocity(?:Gymnasium)?"
    r"(?:-v(\d+))?([-_.].*)?",
    re.IGNORECASE,
)


def find_dsrl_task(name: str | os.PathLike, file_name: bool = False) -> DSRLTask | None:
    """The DSRL task that ``name`` names, or None.

    ``name``: DSRL's ids (``OfflineHopperVelocityGymnasium-v1``, ``OfflineHopperVelocity-v1``),
    the files DSRL distributes (``SafetyHopperVelocityGymnasium-v1-250-2240.hdf5``, any
    folder), Safety-Gymnasium's task (``SafetyHopperVelocity-v1``) or DSRL's short name
    (``HopperVelocity``); case-insensitive. A version other than v1 is another task (None).
    With ``file_name`` only the full forms count (an ``Offline``/``Safety`` prefix and
    ``-v1``), so that a file of one's own named ``HopperVelocity.hdf5`` is not taken for DSRL's.
    """
    stem = Path(name).name
    for suffix in (".hdf5", ".h5"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    match = _DSRL_NAME.fullmatch(stem)
    if match is None or match.group(3) not in (None, "1"):
        return None
    if file_name and (match.group(1) is None or match.group(3) is None):
        return None
    robot = next(r for r in ("Ant", "HalfCheetah", "Hopper", "Swimmer", "Walker2d")
                 if r.lower() == match.group(2).lower())  # fmt: skip
    return DSRL_TASKS[f"Offline{robot}VelocityGymnasium-v1"]


def dsrl_task(name: str) -> DSRLTask:
    """:func:`find_dsrl_task`, or KeyError naming the tasks DSRL has and we know."""
    task = find_dsrl_task(name)
    if task is None:
        example = DSRL_TASKS["OfflineHopperVelocityGymnasium-v1"].dataset_file
        raise KeyError(f"unknown DSRL task {name!r}; expected one of {sorted(DSRL_TASKS)} "
                       f"(or their DSRL file names, e.g. {example!r})")  # fmt: skip
    return task


# --------------------------------------------------------------------------- validation


def validate_data(
    data: Mapping[str, np.ndarray], strict_dtype: bool = True, extra_keys: bool = False
) -> int:
    """Check a dataset dict; return its number of transitions N.

    Raises KeyError (missing key), TypeError (not an array / wrong dtype) or ValueError (shape,
    length, NaN/Inf, flags not in {0, 1}), each naming the offending key. With
    ``strict_dtype`` every array must be float32; without it any real or boolean dtype passes.
    Keys beyond :data:`REQUIRED_KEYS` are an error unless ``extra_keys``.
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"dataset must be a dict of arrays, got {type(data).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise KeyError(f"dataset lacks required key(s) {missing}; expected {list(REQUIRED_KEYS)}")
    unknown = sorted(set(data) - set(REQUIRED_KEYS))
    if unknown and not extra_keys:
        raise KeyError(f"dataset has unknown key(s) {unknown}; expected {list(REQUIRED_KEYS)}")
    for key in REQUIRED_KEYS:
        _check_dtype(key, data[key], strict_dtype)
    n = len(data["rewards"]) if np.ndim(data["rewards"]) >= 1 else 0
    for key in REQUIRED_KEYS:
        _check_shape(key, data[key], n)
    if data["observations"].shape != data["next_observations"].shape:
        raise ValueError(
            f"'next_observations' has shape {data['next_observations'].shape}, expected the "
            f"shape of 'observations' {data['observations'].shape}"
        )
    for key in REQUIRED_KEYS:
        if not np.all(np.isfinite(data[key])):
            bad = int(np.size(data[key]) - np.count_nonzero(np.isfinite(data[key])))
            raise ValueError(f"'{key}' contains {bad} NaN/Inf value(s); expected finite values")
    for key in _FLAG_KEYS:
        flags = np.asarray(data[key])
        if not np.all((flags == 0) | (flags == 1)):
            raise ValueError(f"'{key}' must hold only 0 and 1")
    return n


def _check_dtype(key: str, value: Any, strict: bool) -> None:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"'{key}' must be a numpy array, got {type(value).__name__}")
    if strict and value.dtype != np.float32:
        raise TypeError(f"'{key}' has dtype {value.dtype}, expected float32")
    if value.dtype.kind not in "fiub":
        raise TypeError(f"'{key}' has dtype {value.dtype}, expected a real number type")


def _check_shape(key: str, value: np.ndarray, n: int) -> None:
    ndim = 2 if key in _MATRIX_KEYS else 1
    if value.ndim != ndim:
        form = "(N, dim)" if ndim == 2 else "(N,)"
        raise ValueError(f"'{key}' has shape {value.shape}, expected {form}")
    if value.shape[0] != n:
        raise ValueError(f"'{key}' has length {value.shape[0]}, expected N = {n} (as 'rewards')")
    if n == 0:
        raise ValueError(f"'{key}' is empty; a dataset needs at least one transition")
    if ndim == 2 and value.shape[1] == 0:
        raise ValueError(f"'{key}' has shape {value.shape}; its second dimension must be > 0")


def _real(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return bool(np.isfinite(value))


# field: (type check, value check, expected form)
_FIELDS: dict[str, tuple[Callable[[Any], bool], Callable[[Any], bool], str]] = {
    "env_id": (lambda v: isinstance(v, str), bool, "a non-empty string"),
    "max_episode_steps": (_count, lambda v: v > 0, "an int > 0"),
    "reward_min": (_real, _finite, "a finite number"),
    "reward_max": (_real, _finite, "a finite number"),
    "max_cost": (_real, _finite, "a finite number"),
    "cost_thresholds": (
        lambda v: isinstance(v, list | tuple) and all(_real(k) for k in v),
        lambda v: len(v) > 0 and all(np.isfinite(k) and k >= 0 for k in v),
        "a non-empty list of finite numbers >= 0",
    ),
    "collection": (lambda v: isinstance(v, str), lambda v: True, "a string"),
    "obs_dim": (_count, lambda v: v >= 0, "an int >= 0"),
    "act_dim": (_count, lambda v: v >= 0, "an int >= 0"),
    "num_trajectories": (_count, lambda v: v >= 0, "an int >= 0"),
    "seed": (lambda v: v is None or _count(v), lambda v: True, "an int or null"),
    "env_kwargs": (lambda v: isinstance(v, dict), lambda v: True, "a dict"),
    "extra": (lambda v: isinstance(v, dict), lambda v: True, "a dict"),
}  # fmt: skip


def validate_metadata(metadata: DatasetMetadata, data: Mapping[str, np.ndarray] | None = None):
    """Check metadata types and values (and their agreement with ``data`` when given).

    Raises TypeError (a field of the wrong type) or ValueError (a value out of range, R_max ≤
    R_min, a size that disagrees with the data), naming the field and the expected form."""
    if not isinstance(metadata, DatasetMetadata):
        raise TypeError(f"metadata must be a DatasetMetadata, got {type(metadata).__name__}")
    for name, (type_ok, value_ok, form) in _FIELDS.items():
        value = getattr(metadata, name)
        if not type_ok(value):
            raise TypeError(f"metadata.{name} must be {form}, got {value!r}")
        if not value_ok(value):
            raise ValueError(f"metadata.{name} must be {form}, got {value!r}")
    if not metadata.reward_max > metadata.reward_min:
        raise ValueError(
            f"metadata.reward_max ({metadata.reward_max}) must exceed reward_min "
            f"({metadata.reward_min})"
        )
    if data is None:
        return
    for name, key in (("obs_dim", "observations"), ("act_dim", "actions")):
        value = getattr(metadata, name)
        if value and value != data[key].shape[1]:
            raise ValueError(f"metadata.{name} = {value} but '{key}' has {data[key].shape[1]}")


# --------------------------------------------------------------------------- trajectories


def split_trajectories(data: Mapping[str, np.ndarray]) -> np.ndarray:
    """Index ranges of the trajectories: int64 array (K, 2) of [start, end) rows.

    A trajectory ends at a step with ``terminals`` or ``timeouts`` set; trailing steps after the
    last flag form one final (unfinished) trajectory.
    """
    done = (np.asarray(data["terminals"]) > 0) | (np.asarray(data["timeouts"]) > 0)
    n = len(done)
    ends = np.flatnonzero(done) + 1
    if len(ends) == 0 or ends[-1] != n:
        ends = np.append(ends, n)
    starts = np.concatenate([[0], ends[:-1]])
    return np.stack([starts, ends], axis=1).astype(np.int64)


def trajectory_returns(data: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Undiscounted (reward return, cost return) per trajectory: two float64 arrays (K,)."""
    starts = split_trajectories(data)[:, 0]
    rewards = np.add.reduceat(np.asarray(data["rewards"], dtype=np.float64), starts)
    costs = np.add.reduceat(np.asarray(data["costs"], dtype=np.float64), starts)
    return rewards, costs


def select_trajectories(data: Mapping[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """The dataset restricted to the trajectories where ``keep`` (bool, (K,)) is True."""
    ranges = split_trajectories(data)
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (len(ranges),):
        raise ValueError(f"keep must have shape ({len(ranges)},) (one per trajectory), "
                         f"got {keep.shape}")  # fmt: skip
    lengths = ranges[:, 1] - ranges[:, 0]
    step_mask = np.repeat(keep, lengths)
    return {k: np.asarray(v)[step_mask] for k, v in data.items()}


def safe_trajectories(data: Mapping[str, np.ndarray], cost_limit: float) -> dict[str, np.ndarray]:
    """BC-Safe's data (OSRL): the trajectories whose cost return is ≤ ``cost_limit``; ValueError
    when none is."""
    _, costs = trajectory_returns(data)
    keep = costs <= cost_limit
    if not keep.any():
        raise ValueError(f"no trajectory has a cost return <= {cost_limit} "
                         f"(lowest: {costs.min():.3g}); pick a larger threshold")  # fmt: skip
    return select_trajectories(data, keep)


def concatenate(datasets: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack datasets (each ending on a terminal/timeout) into one."""
    if not datasets:
        raise ValueError("concatenate needs at least one dataset")
    return {k: np.concatenate([d[k] for d in datasets], axis=0) for k in REQUIRED_KEYS}


def infer_metadata(
    data: dict[str, np.ndarray], env_id: str = "unknown", **overrides: Any
) -> DatasetMetadata:
    """Metadata filled from the data alone, for files (e.g. real DSRL ones) that carry none.

    max_episode_steps = longest trajectory; R_min/R_max = smallest/largest trajectory reward
    return; max_cost = largest cost return. These are data-derived, not DSRL's published
    reference returns: pass those via ``overrides`` (e.g. ``reward_min=37.05``) when known.
    """
    ranges = split_trajectories(data)
    rets, costs = trajectory_returns(data)
    r_min, r_max = float(rets.min()), float(rets.max())
    if r_max <= r_min:
        r_max = r_min + 1.0
    values: dict[str, Any] = {
        "env_id": env_id,
        "max_episode_steps": int((ranges[:, 1] - ranges[:, 0]).max()),
        "reward_min": r_min,
        "reward_max": r_max,
        "max_cost": float(costs.max()),
        "collection": "unknown: metadata inferred from the data (R_min/R_max = min/max return)",
        "obs_dim": int(data["observations"].shape[1]),
        "act_dim": int(data["actions"].shape[1]),
        "num_trajectories": len(ranges),
    }
    values.update(overrides)
    return DatasetMetadata(**values)


# --------------------------------------------------------------------------- I/O


def save_dataset(
    path: str | os.PathLike, data: dict[str, np.ndarray], metadata: DatasetMetadata
) -> None:
    """Write ``data`` and ``metadata`` to an HDF5 file atomically (``saferl.common.atomic_write``:
    a killed save leaves the old file and no temp file; permissions and symlinks are kept).

    Every array must be float32 (see :func:`validate_data`); ``obs_dim``, ``act_dim`` and
    ``num_trajectories`` left at 0 are filled from the data in the stored copy.
    """
    validate_data(data, strict_dtype=True)
    validate_metadata(metadata, data)
    stored = DatasetMetadata(**{f.name: getattr(metadata, f.name) for f in fields(metadata)})
    stored.obs_dim = stored.obs_dim or int(data["observations"].shape[1])
    stored.act_dim = stored.act_dim or int(data["actions"].shape[1])
    stored.num_trajectories = stored.num_trajectories or len(split_trajectories(data))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(handle) -> None:
        with h5py.File(handle, "w") as f:
            for key in REQUIRED_KEYS:
                f.create_dataset(key, data=data[key], compression="gzip", compression_opts=4)
            f.attrs[_METADATA_ATTR] = stored.to_json()

    atomic_write(path, write)


def load_dataset(
    path: str | os.PathLike,
    metadata: DatasetMetadata | None = None,
    env_id: str | None = None,
    max_bytes: int | None = None,
    task: str | None = None,
) -> tuple[dict[str, np.ndarray], DatasetMetadata]:
    """Read a DSRL-format HDF5 file; return (data, metadata), every array float32.

    Metadata, the first that applies:

    1. ``metadata``;
    2. ``task``, a DSRL task (:func:`dsrl_task`; KeyError listing the known ones if it is
       none): DSRL's metadata for it (:meth:`DSRLTask.metadata`), even over the file's own;
    3. the file's own (ours);
    4. the DSRL task the file's name shows, in the full form DSRL distributes them under
       (:func:`find_dsrl_task` with ``file_name``);
    5. :func:`infer_metadata` with ``env_id`` (default: the file's stem), with a warning:
       R_min/R_max from the data, κ = :data:`DEFAULT_COST_THRESHOLDS`.

    Files without our metadata (real DSRL files) may hold any real or bool dtype; they are cast
    to float32 (values beyond float32's range are an error, not infinities). Extra top-level
    keys in such files are ignored. Shapes are checked from the file's header before any array
    is read, and a file declaring more than ``max_bytes`` of float32 data (default: half this
    machine's memory) is refused.
    """
    path = Path(path)
    if metadata is not None and task is not None:
        raise ValueError("pass metadata= or task=, not both")
    dsrl = dsrl_task(task) if task is not None else None
    if not path.is_file():
        raise FileNotFoundError(f"no dataset file at {str(path)!r}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{str(path)!r} is not a readable HDF5 file ({exc})") from exc
    with f:
        missing = [k for k in REQUIRED_KEYS if k not in f or not isinstance(f[k], h5py.Dataset)]
        if missing:
            raise KeyError(f"{path.name} lacks required key(s) {missing}; "
                           f"expected top-level arrays {list(REQUIRED_KEYS)}")  # fmt: skip
        _check_header(path, {k: f[k] for k in REQUIRED_KEYS}, max_bytes)
        stored = f.attrs.get(_METADATA_ATTR)
        ours = stored is not None
        try:
            raw = {k: f[k][()] for k in REQUIRED_KEYS}
        except OSError as exc:
            raise ValueError(f"{path.name}: cannot read its arrays ({exc}); truncated?") from exc
    for key in REQUIRED_KEYS:
        _check_dtype(key, raw[key], ours)
    with np.errstate(over="ignore", invalid="ignore"):
        data = {k: np.asarray(v, dtype=np.float32) for k, v in raw.items()}
    for key in REQUIRED_KEYS:
        if raw[key].dtype.kind == "f" and np.all(np.isfinite(raw[key])):
            if not np.all(np.isfinite(data[key])):
                raise ValueError(f"'{key}' holds values beyond float32's range (±3.4e38); "
                                 "expected finite float32 data")  # fmt: skip
    validate_data(data)
    if metadata is None:
        metadata = _file_metadata(path, data, stored, dsrl, env_id)
    validate_metadata(metadata, data)
    return data, metadata


def _file_metadata(
    path: Path, data: dict[str, np.ndarray], stored: Any, dsrl: DSRLTask | None, env_id: str | None
) -> DatasetMetadata:
    """Steps 2-5 of :func:`load_dataset`: ``stored`` is the file's metadata attribute (or
    None), ``dsrl`` the task passed."""
    dsrl = dsrl or (None if stored is not None else find_dsrl_task(path.name, file_name=True))
    if dsrl is not None:
        return dsrl.metadata(data, path.name)
    if stored is not None:
        return DatasetMetadata.from_json(stored.decode() if isinstance(stored, bytes) else stored)
    metadata = infer_metadata(data, env_id=env_id or path.stem)
    kappas = "/".join(f"{k:g}" for k in metadata.cost_thresholds)
    warnings.warn(
        f"{path.name} has no saferl metadata and its name is no DSRL task's; normalising with "
        f"R_min/R_max from its own returns and κ = {kappas}. For DSRL's constants pass task= "
        f"(saferl bench --task), one of {sorted(DSRL_TASKS)}",
        UserWarning,
        stacklevel=3,
    )
    return metadata


def _check_header(path: Path, arrays: dict[str, Any], max_bytes: int | None) -> None:
    """Shapes and total size from the HDF5 header, before anything is read."""
    n = arrays["rewards"].shape[0] if len(arrays["rewards"].shape) else 0
    total = 0
    for key, arr in arrays.items():
        ndim = 2 if key in _MATRIX_KEYS else 1
        if len(arr.shape) != ndim or arr.shape[0] != n:
            form = "(N, dim)" if ndim == 2 else "(N,)"
            raise ValueError(f"{path.name}: '{key}' has shape {arr.shape}, expected {form} with "
                             f"N = {n} (as 'rewards')")  # fmt: skip
        total += 4 * int(np.prod(arr.shape, dtype=np.float64))
    limit = max_bytes if max_bytes is not None else _half_memory()
    if total > limit:
        raise ValueError(f"{path.name} declares {n} transitions ({total / 2**30:.1f} GiB as "
                         f"float32), more than the {limit / 2**30:.1f} GiB allowed; pass "
                         "max_bytes= to read it anyway")  # fmt: skip


def _half_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30
