"""DSRL-format offline safe-RL datasets: file format, collection with Lagrangian behaviour
policies, and the PID Lagrangian they use."""

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

__all__ = [
    "REQUIRED_KEYS", "DatasetMetadata", "concatenate", "infer_metadata", "load_dataset",
    "save_dataset", "select_trajectories", "split_trajectories", "trajectory_returns",
    "validate_data", "validate_metadata",
]  # fmt: skip
