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
from saferl.data.rollout import Rollouts, rollout


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


MIN_LENGTH = 10
"""Fewest steps a demo episode may last: a standing body under the gentle gait does not fall
that fast (the walker lasts ~70 steps), so fewer means a broken environment."""


class SinusoidPolicy:
    """Open-loop gait: each torque follows sin(2π f t + phase) with a per-joint phase.

    A batched policy for :func:`saferl.data.rollout`: the episodes run in lockstep from t = 0,
    so the step count is the number of calls so far (one instance per rollout).
    """

    def __init__(self, action_dim: int, dt: float, frequency: float = 1.5, amplitude: float = 0.2,
                 seed: int = 0) -> None:  # fmt: skip
        rng = np.random.default_rng(seed)
        self.phase = rng.uniform(0, 2 * np.pi, action_dim)
        self.frequency, self.amplitude, self.dt = frequency, amplitude, dt
        self.t = 0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        wave = np.sin(2 * np.pi * self.frequency * self.t * self.dt + self.phase)
        self.t += 1
        return np.broadcast_to(self.amplitude * wave, (len(obs), self.phase.size))


def end_reason(runs: Rollouts, episode: int) -> str:
    """Why an episode ended: fell, stalled, diverged, or the step limit."""
    info = runs.last_info[episode]
    if not runs.terminated[episode]:
        return "time limit"
    return "diverged" if info.get("diverged") else "stalled" if info.get("stalled") else "fell"


def stage_rollout(ctx: DemoContext) -> dict:
    """Build the 3D task and roll out an open-loop sinusoidal gait."""
    cfg = ctx.config
    with envs.make(cfg.env_id) as env:
        policy = SinusoidPolicy(env.action_space.shape[0], env.unwrapped.dt, seed=cfg.seed)
    runs = rollout(policy, lambda: envs.make(cfg.env_id), cfg.episodes, cfg.seed,
                   max_steps=200 if cfg.quick else cfg.max_steps, record=False)  # fmt: skip
    episodes = [{"episode": i, "return": float(runs.returns[i]), "cost": float(runs.costs[i]),
                 "length": int(runs.lengths[i]), "end": end_reason(runs, i)}
                for i in range(cfg.episodes)]  # fmt: skip
    for row in episodes:
        print(f"  episode {row['episode']}: return {row['return']:8.2f}  cost {row['cost']:6.1f}"
              f"  length {row['length']} ({row['end']})")  # fmt: skip
    short = [r["length"] for r in episodes if r["end"] != "time limit" and r["length"] < MIN_LENGTH]
    if short:
        raise RuntimeError(
            f"{cfg.env_id}: episodes ended after {short} steps; a body falls in no fewer than "
            f"{MIN_LENGTH} steps, so the environment is broken (see tests/envs)"
        )
    return {
        "mean_return": float(np.mean([r["return"] for r in episodes])),
        "mean_cost": float(np.mean([r["cost"] for r in episodes])),
        "episodes": episodes,
    }


def stage_train_online(ctx: DemoContext) -> dict:
    """Train a SET policy with TD3 on a 3D agent at a tiny budget (learning is wired)."""
    from saferl.online import demo_stage

    res = demo_stage(budget_steps=400 if ctx.config.quick else 2000, seed=ctx.config.seed)
    ctx.artefacts["train"] = {"actor": res.pop("actor"), "states": res.pop("states")}
    print(f"  TD3 + SET on {res['agent']}: {res['budget_steps']} transitions, {res['updates']} "
          f"updates (one per transition after the warm-up), {res['episodes']} training episodes "
          f"of mean length {res['mean_episode_length']:.0f} steps")  # fmt: skip
    print(f"  critic TD loss during training {res['training_loss_first']:.3f} (first tenth of "
          f"updates) -> {res['training_loss_last']:.3f} (last tenth); on a fixed batch "
          f"{res['critic_loss_before']:.3f} -> {res['critic_loss_after']:.3f} after 30 more "
          f"updates")  # fmt: skip
    curve = ", ".join(f"{step}: {ret:.1f} ({n:.0f} steps)" for step, ret, n in res["curve"])
    print(f"  deterministic eval return (2 episodes of at most 200 steps; learning starts at "
          f"{res['learning_starts']}) at transitions {curve}; zero torques "
          f"{res['zero_torque_return']:.1f} on the same episodes (a tiny budget: the curve shows "
          f"the loop is wired, not a trained walker); rotation-invariance error "
          f"{res['rotation_invariance_error']:.1e}")  # fmt: skip
    return res


def stage_offline(ctx: DemoContext) -> dict:
    """Train FISOR on a small DSRL-format dataset and score it with the DSRL protocol."""
    from saferl.offline import demo_stage

    quick = ctx.config.quick
    res = demo_stage(steps=150 if quick else 1500, episodes=2 if quick else 5,
                     seed=ctx.config.seed)  # fmt: skip
    ctx.artefacts["offline"] = res
    print(f"  FISOR on {res['env_id']} ({res['transitions']} transitions, "
          f"{res['steps']} steps, {res['train_seconds']:.1f} s)")  # fmt: skip
    for row in res["scores"]:
        print("   ", ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in row.items()))  # fmt: skip
    print(f"    (its data: episodes of mean return {res['data_return_mean']:.1f} and length "
          f"{res['data_length_mean']:.1f}; at {res['steps']} steps FISOR is wired, not trained: "
          "`saferl bench` and docs/offline.md have real budgets)")  # fmt: skip
    return {k: v for k, v in res.items() if k not in ("agent", "data", "metadata")}


def stage_certify(ctx: DemoContext) -> dict:
    """Certify the two policies the demo trained: the SET actor of the train stage (bounds on its
    action over an l_inf observation ball) and FISOR's diffusion policy of the offline stage
    (its sampler's noise fixed: the unrolled chain of each of its 16 candidates and the argmin
    over Q_h bounded; feasibility Q_h <= 0 under every perturbation). Runs those stages first
    when they were not selected."""
    from pathlib import Path

    from saferl.certification import Run, certify_states, summary_lines

    cfg = ctx.config
    for name, stage in (("train", stage_train_online), ("offline", stage_offline)):
        if name not in ctx.artefacts:
            print(f"  (running the {name} stage first: certify needs its policy)")
            stage(ctx)
    train, offline = ctx.artefacts["train"], ctx.artefacts["offline"]
    agent, data = offline["agent"], offline["data"]
    runs = {
        "set": (Run(Path("(train stage)"), "online", "set", train["states"].shape[1],
                    actor=train["actor"]), train["states"][: 16 if cfg.quick else 64], SET_EPS),
        "fisor": (Run(Path("(offline stage)"), "fisor", "fisor", agent.obs_dim, agent=agent),
                  _dataset_states(data, 1 if cfg.quick else 8, cfg.seed), FISOR_EPS),
    }  # fmt: skip
    result = {}
    for name, (run, states, eps) in runs.items():
        summary = certify_states(run, states, eps, "crown", CERT_DELTA, seed=cfg.seed,
                                 stepwise=name == "fisor", check_samples=16)  # fmt: skip
        print("\n".join("  " + line for line in summary_lines(summary)))
        result[name] = summary
    print(f"  (FISOR at eps {FISOR_EPS:g}: its chain is 5 calls of a LayerNorm/Mish ResNet whose "
          f"first steps scale the noise estimate by 1/sqrt(abar_t) ~ 13, so wider balls give "
          f"vacuous bounds today; `saferl certify RUN_DIR` certifies saved runs)")  # fmt: skip
    return result


SET_EPS, FISOR_EPS, CERT_DELTA = 0.01, 0.001, 0.1
"""Radii the demo certifies the SET and FISOR policies at, and the deviation δ it counts."""


def _dataset_states(data: dict, n: int, seed: int):
    import torch

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(data["observations"]), size=min(n, len(data["observations"])),
                     replace=False)  # fmt: skip
    return torch.as_tensor(data["observations"][np.sort(idx)], dtype=torch.float32)


STAGES: list[Stage] = [
    Stage("rollout", "build a 3D task and roll out a sinusoidal gait", stage_rollout),
    Stage("train", "train a SET policy with TD3 (Stable-Baselines3) on a 3D agent",
          stage_train_online),
    Stage("offline", "train FISOR on a DSRL-format dataset, evaluate with the DSRL protocol",
          stage_offline),
    Stage("certify", "certify the SET policy's actions and FISOR's diffusion policy (actions "
          "and feasibility under its Q_h)", stage_certify),
]  # fmt: skip


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
