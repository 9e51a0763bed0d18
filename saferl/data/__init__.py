"""The dataset model of the toolkit and its one rollout.

* :mod:`saferl.data.dsrl` — DSRL-format datasets: the arrays and :class:`DatasetMetadata`
  (normalised scores, cost thresholds, the task's env), validation, trajectories, atomic HDF5
  save and checked load;
* :mod:`saferl.data.rollout` — :func:`rollout`: episodes side by side, DSRL arrays and episode
  sums out; every evaluation, collection, label and demo reduces over it;
* :mod:`saferl.data.collection` — datasets from Lagrangian behaviour policies (loads
  Stable-Baselines3 on first use), several tasks as a resumable grid (:func:`run_collect`, one
  :func:`collect_cell` per task); :mod:`saferl.data.plot` — the spread plot.
"""

from importlib import import_module

from saferl.common.lagrangian import PIDLagrangian, PIDLagrangianConfig, annealed_limit
from saferl.data.dsrl import (
    DEFAULT_COST_THRESHOLDS,
    DSRL_TASKS,
    DSRL_VELOCITY_THRESHOLDS,
    REQUIRED_KEYS,
    DatasetMetadata,
    DSRLTask,
    concatenate,
    dsrl_task,
    find_dsrl_task,
    infer_metadata,
    load_dataset,
    make_env,
    safe_trajectories,
    save_dataset,
    select_trajectories,
    split_trajectories,
    trajectory_returns,
    validate_data,
    validate_metadata,
)
from saferl.data.rollout import Rollouts, rollout, rollout_transitions, unsafe_within

_LAZY = {
    "CollectConfig": "saferl.data.collection",
    "CollectResult": "saferl.data.collection",
    "collect": "saferl.data.collection",
    "collect_cell": "saferl.data.collection",
    "grid_filter": "saferl.data.collection",
    "plot_spread": "saferl.data.plot",
    "run_collect": "saferl.data.collection",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'saferl.data' has no attribute {name!r}")


__all__ = [
    "DEFAULT_COST_THRESHOLDS", "DSRL_TASKS", "DSRL_VELOCITY_THRESHOLDS", "REQUIRED_KEYS",
    "CollectConfig", "CollectResult", "DSRLTask", "DatasetMetadata", "PIDLagrangian",
    "PIDLagrangianConfig", "Rollouts", "annealed_limit", "collect", "collect_cell",
    "concatenate", "dsrl_task", "find_dsrl_task", "grid_filter", "infer_metadata",
    "load_dataset", "make_env", "plot_spread", "rollout", "rollout_transitions", "run_collect",
    "safe_trajectories", "save_dataset", "select_trajectories", "split_trajectories",
    "trajectory_returns", "unsafe_within", "validate_data", "validate_metadata",
]  # fmt: skip
