"""The main job, ``saferl demo``: a pipeline of stages on one 3D task.

Each stage is a function ``(DemoContext) -> dict`` of the figures it reports; stages run in
order and share the context (env id, seed, budget, and whatever earlier stages produced, e.g. a
trained actor that a later stage certifies). ``saferl demo --stages rollout`` runs a subset.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import envs


@dataclass
class DemoConfig:
    """Settings of ``saferl demo``."""

    env_id: str = "Saferl3D-Walker5-v0"
    """3D task the demo runs on."""
    episodes: int = 2
    """Episodes per evaluation."""
    max_steps: int = 1000
    """Step cap per episode."""
    seed: int = 0
    """Seeds numpy, torch and the envs."""
    quick: bool = False
    """Smallest budgets (used by the tests)."""
    stages: tuple[str, ...] = ()
    """Stages to run (empty: all)."""


@dataclass
class DemoContext:
    """What the stages share: the config and the artefacts of earlier stages."""

    config: DemoConfig
    artefacts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    run: Callable[[DemoContext], dict]


class SinusoidPolicy:
    """Open-loop gait: each torque follows sin(2π f t + phase) with a per-joint phase."""

    def __init__(self, action_dim: int, frequency: float = 1.5, amplitude: float = 0.8,
                 seed: int = 0) -> None:  # fmt: skip
        rng = np.random.default_rng(seed)
        self.phase = rng.uniform(0, 2 * np.pi, action_dim)
        self.frequency, self.amplitude = frequency, amplitude

    def __call__(self, obs: np.ndarray, t: int, dt: float) -> np.ndarray:
        return self.amplitude * np.sin(2 * np.pi * self.frequency * t * dt + self.phase)


def rollout(env_id: str, policy: Callable, episodes: int, seed: int,
            max_steps: int = 1000) -> list[dict[str, float]]:  # fmt: skip
    """Run ``policy(obs, t, dt)`` for whole episodes; reward and cost sums per episode."""
    env = envs.make(env_id)
    dt = env.unwrapped.dt
    results = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        ret = cost = 0.0
        for t in range(max_steps):
            obs, reward, term, trunc, info = env.step(policy(obs, t, dt))
            ret, cost = ret + reward, cost + info["cost"]
            if term or trunc:
                break
        results.append({"episode": ep, "return": ret, "cost": cost, "length": t + 1})
    env.close()
    return results


def stage_rollout(ctx: DemoContext) -> dict:
    """Build the 3D task and roll out an open-loop sinusoidal gait."""
    cfg = ctx.config
    env = envs.make(cfg.env_id)
    policy = SinusoidPolicy(env.action_space.shape[0], seed=cfg.seed)
    episodes = rollout(cfg.env_id, policy, cfg.episodes, cfg.seed,
                       200 if cfg.quick else cfg.max_steps)  # fmt: skip
    for row in episodes:
        print(f"  episode {row['episode']}: return {row['return']:8.2f}  cost {row['cost']:6.1f}"
              f"  length {row['length']}")  # fmt: skip
    return {
        "mean_return": float(np.mean([r["return"] for r in episodes])),
        "mean_cost": float(np.mean([r["cost"] for r in episodes])),
        "episodes": episodes,
    }


STAGES: list[Stage] = [
    Stage("rollout", "build a 3D task and roll out a sinusoidal gait", stage_rollout),
]


def run_demo(config: DemoConfig) -> dict[str, dict]:
    """Run the selected stages in order; returns each stage's figures by name."""
    names = [s.name for s in STAGES]
    unknown = [s for s in config.stages if s not in names]
    if unknown:
        raise ValueError(f"unknown demo stage(s) {unknown}; expected some of {names}")
    if config.env_id not in envs.registered_ids():
        raise KeyError(f"unknown env id {config.env_id!r}; see `saferl envs`")
    ctx = DemoContext(config)
    results = {}
    for stage in STAGES:
        if config.stages and stage.name not in config.stages:
            continue
        print(f"[{stage.name}] {stage.description}")
        start = time.perf_counter()
        results[stage.name] = stage.run(ctx)
        print(f"[{stage.name}] done in {time.perf_counter() - start:.1f} s")
    return results
