"""DSRL-format offline safe-RL datasets: file format (:mod:`saferl.data.dsrl`), collection with
Lagrangian behaviour policies (:mod:`saferl.data.collection`), the PID Lagrangian they use
(:mod:`saferl.common.lagrangian`) and the spread plot (:mod:`saferl.data.plot`).

The format functions import only numpy and h5py; the collection names (which pull in
Stable-Baselines3) load on first use.
"""

from importlib import import_module

from saferl.common.lagrangian import PIDLagrangian, PIDLagrangianConfig, annealed_limit
from saferl.data.dsrl import (
    REQUIRED_KEYS,
    DatasetMetadata,
    concatenate,
    infer_metadata,
    load_dataset,
    save_dataset,
    select_trajectories,
    split_trajectories,
    trajectory_returns,
    validate_data,
    validate_metadata,
)

_LAZY = {
    "CollectConfig": "saferl.data.collection",
    "CollectResult": "saferl.data.collection",
    "collect": "saferl.data.collection",
    "grid_filter": "saferl.data.collection",
    "rollout": "saferl.data.collection",
    "plot_spread": "saferl.data.plot",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'saferl.data' has no attribute {name!r}")


__all__ = [
    "REQUIRED_KEYS", "CollectConfig", "CollectResult", "DatasetMetadata", "PIDLagrangian",
    "PIDLagrangianConfig", "annealed_limit", "collect", "concatenate", "grid_filter",
    "infer_metadata", "load_dataset", "plot_spread", "rollout", "save_dataset",
    "select_trajectories", "split_trajectories", "trajectory_returns", "validate_data",
    "validate_metadata",
]  # fmt: skip
