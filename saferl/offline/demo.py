"""A small train-and-evaluate FISOR stage for ``saferl demo`` and the quick tests."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from saferl.data.dsrl import DatasetMetadata, infer_metadata, make_env
from saferl.data.rollout import rollout, rollout_transitions
from saferl.offline.evaluate import dsrl_scores
from saferl.offline.fisor import FISORConfig, train_fisor

DEMO_ENV = "SaferlPlanar-HopperVelocity-v1"
"""Task of the in-process demo dataset."""

DEMO_NETS = {"actor_width": 128, "actor_blocks": 2, "critic_hidden": (128, 128),
             "actor_batch_size": 128, "critic_batch_size": 128, "actor_splits": 1}  # fmt: skip
"""The demo's smaller FISOR (half-width networks, batches of 128) so it runs in well under a
minute on a CPU; the algorithm is unchanged."""


def random_rollouts(
    env_id: str = DEMO_ENV, transitions: int = 3000, max_steps: int = 200, seed: int = 0
) -> tuple[dict[str, np.ndarray], DatasetMetadata]:
    """A tiny DSRL dict from uniformly random actions (scaled per episode by a factor in
    [0.2, 1] so that reward and cost vary), with metadata inferred from the data."""
    if transitions < 1 or max_steps < 1:
        raise ValueError(f"transitions and max_steps must be >= 1, got {transitions}, {max_steps}")
    rng = np.random.default_rng(seed)
    scales: dict[int, float] = {}

    def policy(obs: np.ndarray, episodes: np.ndarray) -> np.ndarray:
        for e in episodes:
            scales.setdefault(int(e), rng.uniform(0.2, 1.0))
        scale = np.array([scales[int(e)] for e in episodes])[:, None]
        return scale * rng.uniform(-1, 1, (len(obs), act_dim))

    with make_env(env_id) as probe:
        act_dim = probe.action_space.shape[0]
    runs = rollout_transitions(policy, lambda: make_env(env_id), transitions, seed, max_steps,
                               episode_index=True)  # fmt: skip
    meta = infer_metadata(
        runs.data,
        env_id=env_id,
        max_episode_steps=max_steps,
        collection=f"uniform random actions, seed {seed}",
    )
    return runs.data, meta


def demo_stage(
    dataset_path: str | Path | None = None,
    steps: int = 300,
    episodes: int = 5,
    max_eval_steps: int = 200,
    seed: int = 0,
    device: str | None = None,
    config: FISORConfig | None = None,
) -> dict[str, Any]:
    """Train FISOR at a tiny budget and score it with the DSRL protocol (< 60 s on a CPU).

    Uses the DSRL file at ``dataset_path`` if given, else :func:`random_rollouts`. Returns the
    per-threshold scores, the last training statistics, timings, and the trained ``agent`` with
    the ``data`` and ``metadata`` it learnt from (for later demo stages). ``config`` replaces the
    demo's FISOR config (:data:`DEMO_NETS`) except for steps and seed.
    """
    start = time.perf_counter()
    if dataset_path is not None:
        from saferl.data import load_dataset

        data, meta = load_dataset(dataset_path)
    else:
        data, meta = random_rollouts(seed=seed)
    base = asdict(config) if config is not None else DEMO_NETS
    overrides = {"steps": steps, "seed": seed, "log_every": max(1, steps)}
    config = FISORConfig(**{**base, **overrides})
    agent, log = train_fisor(data, meta, config, device)
    train_s = time.perf_counter() - start
    res = rollout(agent.act, meta.make_env, episodes, seed, max_steps=max_eval_steps,
                  record=False)  # fmt: skip
    from saferl.data import split_trajectories, trajectory_returns

    returns, _ = trajectory_returns(data)
    spans = split_trajectories(data)
    return {
        "env_id": meta.env_id,
        "transitions": int(len(data["rewards"])),
        "data_return_mean": float(returns.mean()),
        "data_length_mean": float((spans[:, 1] - spans[:, 0]).mean()),
        "steps": steps,
        "scores": dsrl_scores(res, meta, meta.cost_thresholds),
        "train_stats": log[-1],
        "train_seconds": train_s,
        "total_seconds": time.perf_counter() - start,
        "agent": agent,
        "data": data,
        "metadata": meta,
    }
