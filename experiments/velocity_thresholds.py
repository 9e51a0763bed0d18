"""Choose the velocity-cost thresholds of the 3D families as Safety-Gymnasium did.

Safety-Gymnasium's velocity tasks put the threshold at half the speed an unconstrained PPO agent
reaches. For one agent per family this script trains Stable-Baselines3 PPO (default
hyperparameters, reward only, no cost) for ``--steps`` environment steps, evaluates the
deterministic policy on ``--episodes`` episodes, and reports the mean horizontal torso speed and
half of it. The thresholds in ``envs.catalogue.FAMILIES`` come from this script's output; the
budget and seeds are in the README. Rows are written after each family, and a re-run with the
same ``--out``, budget and seed keeps the finished families (so a killed run resumes).

    python experiments/velocity_thresholds.py --steps 100000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

import envs
from saferl.common.io import write_text

AGENTS = {"hopper": "hopper_4", "walker": "walker_7", "humanoid": "humanoid_9",
          "cheetah": "cheetah_14"}  # fmt: skip


def mean_speed(model: PPO, env_id: str, limbs: int, episodes: int, seed: int) -> float:
    """Mean horizontal torso speed of the deterministic policy over whole episodes."""
    env = envs.make(env_id, max_limbs=limbs)
    speeds = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + 1000 + ep)
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, _, term, trunc, info = env.step(action)
            speeds.append(info.get("speed", 0.0))
            done = term or trunc
    return float(np.mean(speeds))


def measure(family: str, steps: int, episodes: int, seed: int) -> dict:
    agent = AGENTS[family]
    env_id = envs.env_id(agent)
    limbs = envs.get_morphology(agent).num_limbs
    vec = make_vec_env(env_id, n_envs=4, seed=seed, env_kwargs={"max_limbs": limbs})
    model = PPO("MlpPolicy", vec, seed=seed, verbose=0, device="cpu")
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    speed = mean_speed(model, env_id, limbs, episodes, seed)
    return {"family": family, "agent": agent, "steps": steps, "seed": seed,
            "ppo_mean_speed": speed, "threshold": 0.5 * speed,
            "train_seconds": time.perf_counter() - start}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000, help="PPO steps per family")
    parser.add_argument("--episodes", type=int, default=5, help="evaluation episodes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", nargs="+", default=list(AGENTS))
    parser.add_argument("--out", default="experiments/results/velocity_thresholds.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    done = {}  # rows of an earlier (interrupted) run with the same budget and seed are kept
    if os.path.exists(args.out):
        with open(args.out) as fh:
            done = {r["family"]: r for r in json.load(fh)
                    if r["steps"] == args.steps and r["seed"] == args.seed}  # fmt: skip
    print("| family | agent | PPO steps | PPO mean speed (m/s) | threshold = 0.5 x speed |")
    print("|---|---|---|---|---|")
    for family in args.families:
        row = done.get(family) or measure(family, args.steps, args.episodes, args.seed)
        done[family] = row
        _write_rows(args.out, list(done.values()))  # after every family: a killed run resumes
        print(f"| {family} | {row['agent']} | {row['steps']} | {row['ppo_mean_speed']:.3f} | "
              f"{row['threshold']:.3f} |", flush=True)  # fmt: skip


def _write_rows(path: str, rows: list[dict]) -> None:
    """Write the rows as JSON atomically (``saferl.common.io.write_text``)."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    write_text(path, json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
