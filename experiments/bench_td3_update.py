"""Benchmark: milliseconds per TD3 update (``train`` of the model training builds:
:class:`saferl.online.td3.LimbTD3`, SB3's TD3 update arranged for limb-graph nets) for SET, the
limb transformer and the MLP, side by side on the Hopper++ padding (5 limbs: the suite's agents
incl. held-out).

A replay buffer is filled with random transitions whose mask and parents are those of the
suite's training agents (vectors and scalars are Gaussian noise); each repeat times
``model.train(gradient_steps=G, batch_size=256)`` for every policy kind in turn (interleaved,
so a load change on the shared machine hits every kind alike). One update = the critic step,
plus the actor step and the target updates every ``policy_delay`` = 2 updates, as in training.
Reported: medians over repeats of ms/update, wall clock and CPU time of the training thread
(on a shared machine CPU time is the steadier of the two: it leaves out the time other jobs
hold the core), and the median per-repeat ratios SET/MLP and transformer/MLP of both; the load
average at start and end is recorded with them.

    python experiments/bench_td3_update.py            # small and reference configs, writes JSON
    python experiments/bench_td3_update.py --quick    # a few seconds, prints only
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv

import envs
from envs.layout import ObsLayout
from saferl.common.io import write_json
from saferl.common.runtime import seeded, torch_threads, versions
from saferl.online.td3 import TD3Config, build_model, suite_agents, suite_max_limbs

RESULTS = Path(__file__).resolve().parent / "results" / "td3_update_speed_cpu.json"

CONFIGS: dict[str, dict[str, Any]] = {
    "small": {
        "set": {"width": 32, "ff": 64, "heads": 2, "layers": 2, "channels": 8},
        "transformer": {"width": 32, "layers": 2},
        "mlp": {"hidden": [256, 256]},
    },
    "reference": {"set": None, "transformer": None, "mlp": None},  # each kind's defaults
}
"""Config name -> policy kind -> net_config."""

QUICK = {
    "quick": {
        "set": {"width": 8, "ff": 16, "heads": 2, "layers": 1, "channels": 4},
        "transformer": {"width": 8, "ff": 16, "layers": 1},
        "mlp": {"hidden": [32, 32]},
    }
}


class _Spaces(gym.Env):
    """An env that only carries the flat spaces (the benchmark never steps it)."""

    def __init__(self, layout: ObsLayout) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (layout.flat_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (layout.action_dim,), np.float32)

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[Any, dict]:
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> Any:  # pragma: no cover - never stepped
        raise NotImplementedError


def random_obs(agents: list[str], max_limbs: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` flat observations: Gaussian vectors and scalars, mask and parents of ``agents``
    (cycled; padded rows zero, parents -1)."""
    layout = ObsLayout(max_limbs)
    _, v1, s1, m1, p1 = layout.bounds()
    obs = rng.standard_normal((n, layout.flat_dim)).astype(np.float32)
    obs[:, s1:p1] = 0.0
    obs[:, m1:p1] = -1.0
    for i in range(n):
        limbs = envs.get_morphology(agents[i % len(agents)]).limbs
        obs[i, :v1].reshape(max_limbs, -1)[len(limbs) :] = 0.0
        obs[i, v1:s1].reshape(max_limbs, -1)[len(limbs) :] = 0.0
        obs[i, s1 : s1 + len(limbs)] = 1.0
        obs[i, m1 : m1 + len(limbs)] = [limb.parent for limb in limbs]
    return obs


def build(kind: str, net_config: Any, agents: list[str], max_limbs: int, transitions: int,
          seed: int = 0) -> Any:  # fmt: skip
    """A TD3 model of ``kind`` with ``transitions`` random transitions in its replay buffer."""
    layout = ObsLayout(max_limbs)
    vec = DummyVecEnv([lambda: _Spaces(layout) for _ in agents])
    cfg = TD3Config(policy=kind, net_config=net_config, buffer_size=transitions, seed=seed,
                    learning_starts=0)  # fmt: skip
    with seeded(seed):
        model = build_model(cfg, vec, device="cpu")
    model.set_logger(configure(None, []))  # train() records its losses there
    rng = np.random.default_rng(seed)
    n_env = len(agents)
    steps = transitions // n_env
    obs = random_obs(agents, max_limbs, steps * n_env + n_env, rng).reshape(steps + 1, n_env, -1)
    act_mask = obs[..., ObsLayout(max_limbs).bounds()[2] :][..., :max_limbs] > 0.5
    for t in range(steps):
        actions = rng.uniform(-1, 1, (n_env, max_limbs, 3)).astype(np.float32)
        actions *= act_mask[t][..., None]
        rewards = rng.standard_normal(n_env).astype(np.float32)
        dones = rng.random(n_env) < 0.02
        infos = [{} for _ in range(n_env)]
        model.replay_buffer.add(obs[t], obs[t + 1], actions.reshape(n_env, -1), rewards, dones,
                                infos)  # fmt: skip
    return model


def time_updates(model: Any, gradient_steps: int, batch: int) -> tuple[float, float]:
    """Milliseconds per update over one ``model.train(gradient_steps, batch)`` call: wall
    clock and CPU time of this thread."""
    wall, cpu = time.perf_counter(), time.thread_time()
    model.train(gradient_steps=gradient_steps, batch_size=batch)
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    return 1000.0 * wall / gradient_steps, 1000.0 * cpu / gradient_steps


def _ratios(times: dict[str, list[float]], kind: str) -> dict[str, Any]:
    """Median and range of the per-repeat ratios ``kind`` / MLP."""
    ratios = [a / b for a, b in zip(times[kind], times["mlp"], strict=True)]
    return {"median": float(np.median(ratios)), "range": [min(ratios), max(ratios)]}


def bench_config(models: dict[str, Any], repeats: int, gradient_steps: int, batch: int
                 ) -> dict[str, Any]:  # fmt: skip
    """Interleaved repeats over the kinds; medians and per-repeat ratios to the MLP."""
    for model in models.values():  # warm-up (allocator, first-call overheads)
        model.train(gradient_steps=2, batch_size=batch)
    wall: dict[str, list[float]] = {k: [] for k in models}
    cpu: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(repeats):
        for kind, model in models.items():
            ms_wall, ms_cpu = time_updates(model, gradient_steps, batch)
            wall[kind].append(ms_wall)
            cpu[kind].append(ms_cpu)
    out: dict[str, Any] = {"ms_per_update": {k: float(np.median(v)) for k, v in wall.items()}}
    out["cpu_ms_per_update"] = {k: float(np.median(v)) for k, v in cpu.items()}
    out["all_ms"], out["all_cpu_ms"] = wall, cpu
    out["params"] = {k: sum(p.numel() for p in m.policy.parameters()) for k, m in models.items()}
    out["over_mlp"] = {k: _ratios(wall, k) for k in models if k != "mlp"}
    out["over_mlp_cpu"] = {k: _ratios(cpu, k) for k in models if k != "mlp"}
    out["set_over_mlp"] = out["over_mlp"]["set"]["median"]
    out["set_over_mlp_range"] = out["over_mlp"]["set"]["range"]
    return out


def _ratio_text(ratio: dict[str, Any]) -> str:
    lo, hi = ratio["range"]
    return f"{ratio['median']:.2f}x ({lo:.2f}-{hi:.2f})"


def table(results: dict[str, Any]) -> str:
    """Markdown table: medians per kind, per-repeat ratios to the MLP (median, range)."""
    rows = [
        "| config | policy | params | ms / update | CPU ms / update | / MLP (wall) | / MLP (CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        for kind, ms in res["ms_per_update"].items():
            cpu = res["cpu_ms_per_update"][kind]
            vs_wall = vs_cpu = "1.00x"
            if kind != "mlp":
                vs_wall = _ratio_text(res["over_mlp"][kind])
                vs_cpu = _ratio_text(res["over_mlp_cpu"][kind])
            rows.append(f"| {name} | {kind} | {res['params'][kind]:,} | {ms:.1f} | {cpu:.1f} | "
                        f"{vs_wall} | {vs_cpu} |")  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--suite", default="Hopper++")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--gradient-steps", type=int, default=20)
    p.add_argument("--transitions", type=int, default=3000)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON written when not --quick")
    p.add_argument("--quick", action="store_true", help="tiny nets, few steps, no file written")
    args = p.parse_args(argv)
    configs = {k: CONFIGS[k] for k in args.configs}
    if args.quick:
        configs = QUICK
        args.batch, args.repeats, args.gradient_steps, args.transitions = 32, 2, 2, 120
    if not args.quick and not args.out.parent.is_dir():
        p.error(f"--out folder {args.out.parent} does not exist")
    train = suite_agents(args.suite, "train")
    max_limbs = suite_max_limbs(train + suite_agents(args.suite, "heldout"))
    results: dict[str, Any] = {}
    load_start = os.getloadavg()  # other jobs on a shared machine: recorded beside the times
    with torch_threads(args.threads):
        for name, kinds in configs.items():
            models = {kind: build(kind, cfg, train, max_limbs, args.transitions)
                      for kind, cfg in kinds.items()}  # fmt: skip
            timed = bench_config(models, args.repeats, args.gradient_steps, args.batch)
            results[name] = {"net_configs": kinds, **timed}
    print(f"TD3 update (SB3 TD3.train), {args.suite} padding {max_limbs} limbs "
          f"(obs {ObsLayout(max_limbs).flat_dim}), batch {args.batch}, {args.threads} thread(s), "
          f"median of {args.repeats} x {args.gradient_steps} updates\n")  # fmt: skip
    print(table(results))
    if not args.quick:
        record = {"suite": args.suite, "max_limbs": max_limbs, "batch": args.batch,
                  "threads": args.threads, "repeats": args.repeats,
                  "gradient_steps": args.gradient_steps, "versions": versions(),
                  "load_average_1_5_15min": {"start": load_start, "end": os.getloadavg()},
                  "cpus": os.cpu_count(), "results": results}  # fmt: skip
        write_json(args.out, record)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
