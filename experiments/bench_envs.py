"""Env throughput against a bare ``mujoco.mj_step`` loop on the same model and frame_skip.

For one agent per family, both loops replay the same random actions from the same state for
``--steps`` env steps (no resets, so both simulate the same trajectory); the env loop is timed
both unwrapped (our step: action checks, observation, reward, cost) and as ``envs.make`` returns
it (plus Gymnasium's TimeLimit/OrderEnforcing/PassiveEnvChecker wrappers). Repeats are
interleaved and the table gives medians of steps/s and of the per-repeat ratios.

    python experiments/bench_envs.py --steps 2000 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import mujoco
import numpy as np

import envs

AGENTS = ["hopper_5", "walker_7", "humanoid_9", "cheetah_14"]


def bare_loop(model: mujoco.MjModel, qpos, qvel, ctrls: np.ndarray, frame_skip: int) -> float:
    """Seconds for len(ctrls) env-equivalent steps of plain mj_step."""
    data = mujoco.MjData(model)
    data.qpos[:], data.qvel[:] = qpos, qvel
    mujoco.mj_forward(model, data)
    start = time.perf_counter()
    for ctrl in ctrls:
        data.ctrl[:] = ctrl
        mujoco.mj_step(model, data, nstep=frame_skip)
    return time.perf_counter() - start


def env_loop(env, qpos, qvel, actions: np.ndarray) -> float:
    """Seconds for len(actions) env.step calls from the given state."""
    env.reset(seed=0)
    env.unwrapped.set_state(qpos, qvel)
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    return time.perf_counter() - start


def bench(agent: str, steps: int, repeats: int) -> dict[str, float]:
    wrapped = envs.make(envs.env_id(agent))
    raw = wrapped.unwrapped
    raw.reset(seed=0)
    qpos, qvel = raw.data.qpos.copy(), raw.data.qvel.copy()
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, raw.action_space.shape[0]))
    n = raw.morph.num_limbs
    ctrls = np.zeros((steps, raw.model.nu))
    ctrls[:, raw._act_rows] = actions.reshape(steps, -1, 3)[:, 1:n].reshape(steps, -1)
    rows: dict[str, list[float]] = {"bare": [], "env": [], "wrapped": []}
    for _ in range(repeats):
        rows["bare"].append(steps / bare_loop(raw.model, qpos, qvel, ctrls, raw.frame_skip))
        rows["env"].append(steps / env_loop(raw, qpos, qvel, actions))
        rows["wrapped"].append(steps / env_loop(wrapped, qpos, qvel, actions))
    med = {k: statistics.median(v) for k, v in rows.items()}
    med["ratio_env"] = statistics.median(e / b for e, b in zip(rows["env"], rows["bare"],
                                                               strict=True))  # fmt: skip
    med["ratio_wrapped"] = statistics.median(w / b for w, b in zip(rows["wrapped"], rows["bare"],
                                                                   strict=True))  # fmt: skip
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--agents", nargs="+", default=AGENTS)
    args = parser.parse_args()
    print("| agent | limbs | bare mj_step (steps/s) | env (steps/s) | ratio | "
          "envs.make (steps/s) | ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for agent in args.agents:
        r = bench(agent, args.steps, args.repeats)
        limbs = envs.get_morphology(agent).num_limbs
        print(f"| {agent} | {limbs} | {r['bare']:.0f} | {r['env']:.0f} | {r['ratio_env']:.2f} | "
              f"{r['wrapped']:.0f} | {r['ratio_wrapped']:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
