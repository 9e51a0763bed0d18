"""COLEP vs single-model robust CP for "will the cost constraint be violated within k steps?"

    python experiments/colep_hopper.py             # full: 4000 states, 200 splits
    python experiments/colep_hopper.py --quick --out /tmp/r

Task: ``envs.make("SaferlPlanar-HopperVelocity-v0")`` (Gymnasium Hopper-v5 with Safety-
Gymnasium's cost 1{x-velocity > 0.7402}). States come from seeded episodes of perturbed random
policies (a = clip(b + s·N(0, I)), b ~ U(−0.6, 0.6)³, s ~ U(0.2, 1) per episode, ≤ 150 steps),
run through the toolkit's one rollout.
Label: 1 if any step among the next k = 10 has cost 1 ("violation"), else 0 ("safe").
Attributes of the current state: speed above the threshold (the constraint itself), fast
(speed > threshold / 2), torso tilted forward (pitch > 0.05), pitching forward (pitch rate
> 0.5), torso tilted backward (pitch < −0.05). Knowledge rules: safe ⇒ ¬(speed above threshold),
safe ⇒ ¬fast, safe ⇒ ¬tilted forward, safe ⇒ ¬pitching forward, violation ⇒ fast,
violation ⇒ ¬tilted backward (weights learned). Inputs: the 11 observations standardised with
training statistics; ε is in standardised units. Train/fit/pool are split by episode.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from colep_benchmark import BenchConfig, Task, markdown_table, run_benchmark, write_results  # noqa: E402

from saferl.data import make_env, rollout_transitions, unsafe_within  # noqa: E402

TASK_ID = "SaferlPlanar-HopperVelocity-v0"
THRESHOLD = 0.7402  # Safety-Gymnasium's Hopper velocity threshold
HORIZON = 10
MAX_STEPS = 150
ATTRIBUTES = ["speed > threshold", "fast", "tilted forward", "pitching forward", "tilted back"]
RULES = [[-1, -1, -1, -1, 0], [0, 1, 0, 0, -1]]  # rows: safe, violation


def rollouts(n_states: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(observations (N, 11), per-step costs (N,), episode ids (N,)) from perturbed policies,
    through the toolkit's one rollout (``saferl.data.rollout_transitions``)."""
    rng = np.random.default_rng(seed)
    params: dict[int, tuple[np.ndarray, float]] = {}

    def policy(obs: np.ndarray, episodes: np.ndarray) -> np.ndarray:
        rows = [params.setdefault(int(e), (rng.uniform(-0.6, 0.6, 3), rng.uniform(0.2, 1.0)))
                for e in episodes]  # fmt: skip
        return np.stack([bias + scale * rng.standard_normal(3) for bias, scale in rows])

    runs = rollout_transitions(policy, lambda: make_env(TASK_ID), n_states, seed,
                               max_steps=MAX_STEPS, episode_index=True)  # fmt: skip
    d = runs.data
    return d["observations"][:n_states], d["costs"][:n_states], runs.episode_ids()[:n_states]


def hopper_task(n_states: int, seed: int) -> Task:
    obs, cost, episode = rollouts(n_states, seed)
    y = unsafe_within(cost, episode, HORIZON)
    v, pitch, pitch_rate = obs[:, 5], obs[:, 1], obs[:, 7]
    attrs = np.stack([v > THRESHOLD, v > THRESHOLD / 2, pitch > 0.05, pitch_rate > 0.5,
                      pitch < -0.05], 1)  # fmt: skip
    x = torch.tensor(obs, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    return Task("hopper", x, torch.tensor(y, dtype=torch.long), torch.tensor(attrs).float(),
                torch.tensor(RULES), ["safe", "violation"], ATTRIBUTES,
                groups=torch.tensor(episode))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget (for the tests)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=0.1, help="miscoverage level")
    parser.add_argument("--states", type=int, default=4000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    eps = [0.0, 0.02, 0.05, 0.1]
    cfg = BenchConfig(seed=args.seed, alpha=args.alpha, eps=eps, noise_std=0.05)
    n_states = args.states
    if args.quick:
        cfg = BenchConfig(seed=args.seed, alpha=args.alpha, eps=[0.05], train_steps=20,
                          n_splits=10, pgd_steps=2, hidden=8, fit_steps=20)  # fmt: skip
        n_states = 300
    start = time.time()
    task = hopper_task(n_states, args.seed)
    rows, models = run_benchmark(task, cfg)
    acc = ", ".join(f"{k} {v:.3f}" for k, v in models.accuracy.items())
    text = (
        f"Hopper velocity task ({TASK_ID}), label = cost within {HORIZON} steps "
        f"(rate {task.y.float().mean():.3f} over {n_states} states), α = {cfg.alpha}, "
        f"{cfg.n_splits} random calibration/test splits, ℓ∞ ε in standardised units, bounds: "
        f"{cfg.method}. Pool accuracy: {acc}. Runtime {time.time() - start:.0f} s (2-core shared "
        f"CPU, 1 thread).\n\n{markdown_table(rows)}\n"
    )
    print(text)
    write_results(
        args.out, "colep_hopper", text, rows, "hopper: violation within 10 steps", cfg.alpha
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
