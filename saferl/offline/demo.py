"""A small train-and-evaluate FISOR stage for ``saferl demo`` and the quick tests."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from saferl.offline.dataset import task_info
from saferl.offline.evaluate import dsrl_scores, evaluate_policy, make_env
from saferl.offline.fisor import FISORConfig, train_fisor

DEMO_ENV = "SaferlPlanar-HopperVelocity-v0"
"""Task of the in-process demo dataset."""

DEMO_NETS = {"actor_width": 128, "actor_blocks": 2, "critic_hidden": (128, 128),
             "actor_batch_size": 128, "critic_batch_size": 128, "actor_splits": 1}  # fmt: skip
"""The demo's smaller FISOR (half-width networks, batches of 128) so it runs in well under a
minute on a CPU; the algorithm is unchanged."""


def random_rollouts(
    env_id: str = DEMO_ENV, transitions: int = 3000, max_steps: int = 200, seed: int = 0
) -> tuple[dict[str, np.ndarray], Any]:
    """A tiny DSRL dict from uniformly random actions (scaled per episode by a factor in
    [0.2, 1] so that reward and cost vary), with metadata inferred from the data."""
    from saferl.data import infer_metadata
    from saferl.data.dsrl import REQUIRED_KEYS

    if transitions < 1 or max_steps < 1:
        raise ValueError(f"transitions and max_steps must be >= 1, got {transitions}, {max_steps}")
    rng = np.random.default_rng(seed)
    env = make_env(env_id)
    keys = REQUIRED_KEYS
    buf: dict[str, list] = {k: [] for k in keys}
    episode = 0
    while len(buf["rewards"]) < transitions:
        obs, _ = env.reset(seed=seed + episode)
        scale = rng.uniform(0.2, 1.0)
        for t in range(max_steps):
            act = scale * rng.uniform(-1, 1, env.action_space.shape)
            nxt, r, term, trunc, info = env.step(act)
            timeout = (t + 1 == max_steps or trunc) and not term
            for k, v in zip(keys, (obs, nxt, act, r, info["cost"], term, timeout), strict=True):
                buf[k].append(v)
            obs = nxt
            if term or timeout:
                break
        episode += 1
    env.close()
    data = {k: np.asarray(v, dtype=np.float32) for k, v in buf.items()}
    if data["observations"].ndim == 1:
        data = {k: v.reshape(len(v), -1) if k.endswith("ations") else v for k, v in data.items()}
    meta = infer_metadata(
        data,
        env_id=env_id,
        max_episode_steps=max_steps,
        collection=f"uniform random actions, seed {seed}",
    )
    return data, meta


def demo_stage(
    dataset_path: str | Path | None = None,
    iterations: int = 300,
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
    demo's FISOR config (:data:`DEMO_NETS`) except for iterations and seed.
    """
    start = time.perf_counter()
    if dataset_path is not None:
        from saferl.data import load_dataset

        data, meta = load_dataset(dataset_path)
    else:
        data, meta = random_rollouts(seed=seed)
    base = asdict(config) if config is not None else DEMO_NETS
    overrides = {"iterations": iterations, "seed": seed, "log_every": max(1, iterations)}
    config = FISORConfig(**{**base, **overrides})
    agent, log = train_fisor(data, meta, config, device)
    train_s = time.perf_counter() - start
    info = task_info(meta)
    kwargs = dict(getattr(meta, "env_kwargs", {}) or {})
    res = evaluate_policy(
        agent.act, lambda: make_env(info.env_id, **kwargs), episodes, seed, max_steps=max_eval_steps
    )
    thresholds = list(getattr(meta, "cost_thresholds", [10.0, 20.0, 40.0]))
    return {
        "env_id": info.env_id,
        "transitions": int(len(data["rewards"])),
        "iterations": iterations,
        "scores": dsrl_scores(res, info, thresholds),
        "train_stats": log[-1],
        "train_seconds": train_s,
        "total_seconds": time.perf_counter() - start,
        "agent": agent,
        "data": data,
        "metadata": meta,
    }
