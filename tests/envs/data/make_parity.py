"""Record reference steps of Safety-Gymnasium's v1 velocity tasks for the parity test.

``tests/envs/test_planar_parity.py`` replays them on ``SaferlPlanar-<Robot>Velocity-v1``.
Safety-Gymnasium is never a dependency of saferl: run this script where it is installed, e.g.
(safety-gymnasium 1.0.0 pins gymnasium 0.28.1, mujoco 2.3.3 and pygame 2.1.0, which has no
wheel for Python 3.11, and its geometry dataclasses do not import on 3.11; so Python 3.10)::

    python3.10 -m venv /tmp/sgvenv
    /tmp/sgvenv/bin/pip install safety-gymnasium==1.0.0
    /tmp/sgvenv/bin/python tests/envs/data/make_parity.py

Per robot, two records in ``planar_parity.npz`` (keys ``<Robot>_<field>``):

* a **free run**: 1000 steps of seeded uniform actions in [-1, 1] (float16 values, applied as
  float64), the first episode reset with seed 0 and every later one (after termination) with
  the next seed; every reward, cost, terminated and truncated flag, each reset observation, and
  the observation after every 10th step and after every step that ends an episode
  (``obs_steps``);
* **one step from a recorded state**: at steps 5, 25, 45, ... of the free run, the simulator
  state before the step (``qpos``, ``qvel``, ``qacc_warmstart``), every second one with its
  x-velocity raised by twice the cost threshold (so that costs of 1 occur for every robot), and
  what one step from it with that step's action gives (``probe_*``: observation, reward, cost,
  terminated).

Plus each task's threshold (``<Robot>_threshold``) and the versions used (``versions``, JSON).
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import numpy as np

ROBOTS = ("Ant", "HalfCheetah", "Hopper", "Swimmer", "Walker2d")
STEPS = 1000
OBS_EVERY = 10
PROBE_EVERY, PROBE_OFFSET = 20, 5
SEED = 0
OUT = Path(__file__).with_name("planar_parity.npz")


def action_sequence(robot: str, act_dim: int) -> np.ndarray:
    """The seeded actions of one robot: float16 (STEPS, act_dim), uniform in [-1, 1]."""
    rng = np.random.default_rng([SEED, ROBOTS.index(robot)])
    return rng.uniform(-1.0, 1.0, (STEPS, act_dim)).astype(np.float16)


def _state(env) -> np.ndarray:
    data = env.unwrapped.data
    return np.concatenate([data.qpos, data.qvel, data.qacc_warmstart])


def free_run(robot: str) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """The free-run record and the state before every step."""
    import safety_gymnasium

    env = safety_gymnasium.make(f"Safety{robot}Velocity-v1")
    actions = action_sequence(robot, env.action_space.shape[0])
    episode = 0
    obs, _ = env.reset(seed=SEED + episode)
    resets, rows, kept, states = [obs], [], [], []
    rewards, costs, terminated, truncated = [], [], [], []
    for t in range(STEPS):
        states.append(_state(env))
        obs, reward, cost, term, trunc, _ = env.step(actions[t].astype(np.float64))
        rewards.append(reward)
        costs.append(cost)
        terminated.append(term)
        truncated.append(trunc)
        if t % OBS_EVERY == 0 or term or trunc:
            rows.append(t)
            kept.append(obs)
        if (term or trunc) and t + 1 < STEPS:
            episode += 1
            obs, _ = env.reset(seed=SEED + episode)
            resets.append(obs)
    threshold = env.unwrapped._velocity_threshold
    env.close()
    record = {
        "actions": actions,
        "reset_obs": np.asarray(resets, dtype=np.float64),
        "obs_steps": np.asarray(rows, dtype=np.int32),
        "obs": np.asarray(kept, dtype=np.float64),
        "rewards": np.asarray(rewards, dtype=np.float64),
        "costs": np.asarray(costs, dtype=np.uint8),
        "terminated": np.asarray(terminated, dtype=bool),
        "truncated": np.asarray(truncated, dtype=bool),
        "threshold": np.float64(threshold),
    }
    return record, states


def probes(robot: str, actions: np.ndarray, states: list[np.ndarray], threshold: float):
    """One step of Safety-Gymnasium from recorded states (every second one sped up)."""
    import safety_gymnasium

    env = safety_gymnasium.make(f"Safety{robot}Velocity-v1")
    env.reset(seed=SEED)
    model = env.unwrapped.model
    nq, nv = model.nq, model.nv
    steps = np.arange(PROBE_OFFSET, STEPS, PROBE_EVERY, dtype=np.int32)
    out = {k: [] for k in ("state", "obs", "reward", "cost", "terminated")}
    for i, t in enumerate(steps):
        state = states[t].copy()
        if i % 2 == 1:
            state[nq] += 2.0 * threshold  # x-velocity of the root (slide or free joint)
        env.unwrapped.set_state(state[:nq], state[nq : nq + nv])
        env.unwrapped.data.qacc_warmstart[:] = state[nq + nv :]
        obs, reward, cost, term, _, _ = env.step(actions[t].astype(np.float64))
        for key, value in zip(out, (state, obs, reward, cost, term), strict=True):
            out[key].append(value)
    env.close()
    return {
        "probe_steps": steps,
        "probe_state": np.asarray(out["state"], dtype=np.float64),
        "probe_obs": np.asarray(out["obs"], dtype=np.float64),
        "probe_reward": np.asarray(out["reward"], dtype=np.float64),
        "probe_cost": np.asarray(out["cost"], dtype=np.uint8),
        "probe_terminated": np.asarray(out["terminated"], dtype=bool),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("safety-gymnasium", "gymnasium", "mujoco", "numpy")
    return {"python": platform.python_version(), **{n: version(n) for n in names}}


def main() -> int:
    arrays: dict[str, np.ndarray] = {}
    for robot in ROBOTS:
        record, states = free_run(robot)
        record.update(probes(robot, record["actions"], states, float(record["threshold"])))
        arrays.update({f"{robot}_{k}": v for k, v in record.items()})
        ends = int(record["terminated"].sum() + record["truncated"].sum())
        probes_cost = int(record["probe_cost"].sum())
        print(f"{robot}: {STEPS} steps, {ends} episode end(s), return "
              f"{record['rewards'].sum():.3f}, cost {int(record['costs'].sum())}; "
              f"{len(record['probe_steps'])} probes, cost {probes_cost}")  # fmt: skip
    arrays["versions"] = np.asarray(json.dumps(versions(), sort_keys=True))
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB) with {versions()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
