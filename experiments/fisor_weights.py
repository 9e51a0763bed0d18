"""Why FISOR's hopper falls at a small CPU budget: the effective sample size of its actor weights.

FISOR extracts its policy by weighted diffusion behaviour cloning (Zheng et al., ICLR 2024,
Eq. 13-14): weights ``clip(exp(3 (Q_r − V_r)), 0, 100)`` on feasible data and
``clip(exp(5 (V_h − Q_h)), 0, 150)`` on infeasible data. Such heavy-tailed weights leave few
effective samples in each actor update — Kish's effective sample size
``ESS = (Σ w)² / Σ w²`` of the update's batch — so a small actor batch clones a handful of
transitions per step. This script trains FISOR on one dataset at the CPU bench's sizes (LN-ResNet
width 64, 2e4 iterations, critic batch 256) under four variants and scores each by the DSRL
protocol (20 episodes, every threshold of the dataset):

* ``batch 2x128``: the actor batch the CPU bench used before (2 updates of 128 rows);
* ``batch 2x512``: the CPU bench's actor batch since these measurements;
* ``batch 2x1024``: the reference's actor batch;
* ``uniform 2x128``: α_r = α_h = 0, i.e. every weight 1 except the zero on actions that leave
  the feasible region — feasibility-masked behaviour cloning, the same critics and selection.

Besides the scores, each row holds the weights' statistics on the whole dataset after training:
the median ESS of an actor update's batch (over 200 random batches), the fraction of weights at
the upper clip, the feasible fraction ``V_h ≤ 0`` and the standard deviation of the reward
advantage ``Q_r − V_r``; and, on the evaluation episodes, the feasibility value V_h over the
last 5 states before each fall against its mean on the episodes that ran the full 1000 steps (a
V_h that took falling for safety, e.g. through terminal states, would be low before falls).
Cells run through saferl.grid (resumable).
Writes ``experiments/results/offline/fisor_weights.{json,md}``.

    python experiments/fisor_weights.py                     # planar Hopper v1, seed 0
    python experiments/fisor_weights.py --seeds 0 1 2 --variants "batch 2x1024"
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from saferl.common.io import write_json, write_text
from saferl.data.rollout import rollout
from saferl.grid import Cell, run_grid
from saferl.offline import dsrl_scores, load_tasks, train_fisor
from saferl.offline.bench import dataset_digest
from saferl.offline.fisor import policy_weights, target_critics

sys.path.insert(0, str(Path(__file__).parent))
from bench_offline import CPU_BUDGET, bench_config  # noqa: E402

OUT = Path(__file__).parent / "results" / "offline"
DATA = "data/SaferlPlanar-HopperVelocity-v1.hdf5"
VARIANTS = {
    "batch 2x128": {"actor_batch_size": 256},
    "batch 2x512": {"actor_batch_size": 1024},
    "batch 2x1024": {"actor_batch_size": 2048},
    "uniform 2x128": {"actor_batch_size": 256, "reward_temperature": 0.0, "cost_temperature": 0.0},
}


def weight_stats(agent, data, config, batches: int = 200, seed: int = 0) -> dict[str, float]:
    """Median ESS of one actor update's batch, fraction at the upper clip, feasible fraction."""
    obs = torch.as_tensor(data["observations"], dtype=torch.float32)
    act = torch.as_tensor(data["actions"], dtype=torch.float32)
    with torch.no_grad():  # the critics' pass of actor_weights, kept for the advantage spread
        q_r, q_h = target_critics(obs, act, agent.nets)
        v = agent.nets.value(obs)
    w = policy_weights(q_r, v[0], q_h, v[1], config).numpy().astype(np.float64)
    v_h = v[1].numpy()
    size = config.actor_batch_size // config.actor_splits
    rng = np.random.default_rng(seed)
    ess = []
    for _ in range(batches):
        b = w[rng.integers(0, len(w), size)]
        ess.append(b.sum() ** 2 / max((b**2).sum(), 1e-300))
    return {
        "update_batch": size,
        "ess_median": float(np.median(ess)),
        "at_clip": float(np.mean(w >= config.feasible_weight_max)),
        "mean_weight": float(w.mean()),
        "feasible_fraction": float(np.mean(v_h <= 0)),
        "advantage_sd": float((q_r - v[0]).std()),
    }


def feasibility_probe(agent, episodes: list[dict[str, np.ndarray]], tail: int = 5) -> dict:
    """Mean V_h over the last ``tail`` states of each episode that ended by a fall (terminal)
    and over every state of the episodes that ran to the time limit (NaN where none did):
    a feasibility value that mistook falling for safety would be low before falls."""
    falls, full = [], []
    for ep in episodes:
        with torch.no_grad():
            v_h = agent.nets.value(torch.as_tensor(ep["observations"]))[1].numpy()
        if ep["terminals"][-1]:
            falls.append(v_h[-tail:].mean())
        elif ep["timeouts"][-1]:
            full.append(v_h.mean())
    return {
        "v_h_before_fall": float(np.mean(falls)) if falls else float("nan"),
        "v_h_full_length": float(np.mean(full)) if full else float("nan"),
        "falls": len(falls),
        "full_length": len(full),
    }


def variant_cell(payload, *, variant: str, seed: int, episodes: int, steps: int) -> list[dict]:
    """Train one variant with one seed, score it at every threshold, add the weight stats."""
    data, meta = payload
    base = bench_config(CPU_BUDGET, "cpu", None).configs["fisor"]
    config = replace(base, seed=seed, steps=steps, log_every=steps, **VARIANTS[variant])
    start = time.perf_counter()
    agent, _ = train_fisor(data, meta, config, "cpu")
    train_s = time.perf_counter() - start
    res = rollout(agent.act, meta.make_env, episodes, seed=1000 * seed, record=True,
                  max_steps=meta.max_episode_steps)  # fmt: skip
    stats = {**weight_stats(agent, data, config), **feasibility_probe(agent, res.episodes())}
    return [{"variant": variant, "seed": seed, "iterations": config.steps, "train_s": train_s,
             **stats, **row} for row in dsrl_scores(res, meta, meta.cost_thresholds)]  # fmt: skip


def table(rows: list[dict]) -> str:
    """One line per variant: scores averaged over thresholds and seeds, stats over seeds."""
    lines = [
        "| variant | seeds | actor update batch | median ESS per update | weights ≥ 100 "
        "| A_r sd | V_h: last 5 before a fall / full-length episodes "
        "| reward / cost | return | episode length | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        group = [r for r in rows if r["variant"] == variant]
        if not group:
            continue

        def mean(key: str, g=group) -> float:
            return float(np.mean([r[key] for r in g]))

        def nanmean(key: str, g=group) -> str:
            values = [r[key] for r in g if r.get(key) is not None and np.isfinite(r[key])]
            return f"{np.mean(values):.1f}" if values else "–"

        seeds = sorted({r["seed"] for r in group})
        lines.append(
            f"| {variant} | {len(seeds)} | {group[0]['update_batch']} | {mean('ess_median'):.1f} "
            f"| {100 * mean('at_clip'):.1f}% | {mean('advantage_sd'):.2f} "
            f"| {nanmean('v_h_before_fall')} / {nanmean('v_h_full_length')} "
            f"| {mean('reward'):.2f} / {mean('cost'):.2f} "
            f"| {mean('raw_return'):.0f} | {mean('length'):.0f} | {mean('train_s'):.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DATA)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--steps", type=int, default=CPU_BUDGET["fisor_steps"], help="iterations")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    if args.episodes < 1 or args.steps < 1:
        raise SystemExit(f"--episodes and --steps must be >= 1, got {args.episodes}, {args.steps}")
    (name, data, meta), = load_tasks([args.data])  # fmt: skip
    digest = dataset_digest(data, meta)
    cells = [Cell(f"{name}__{v.replace(' ', '_')}__seed{s}", variant_cell,
                  {"variant": v, "seed": s, "episodes": args.episodes, "steps": args.steps},
                  shared=name, shared_digest=digest)
             for v in args.variants for s in args.seeds]  # fmt: skip
    out = Path(args.out)
    grid = run_grid(cells, out / "fisor_weights_grid", shared={name: (data, meta)})
    if grid.failed:
        raise SystemExit(f"{len(grid.failed)} cells failed: {grid.failed}")
    header = (f"FISOR on {name} at the CPU bench's sizes (LN-ResNet width "
              f"{CPU_BUDGET['fisor_nets']['actor_width']}, {args.steps} "
              f"iterations, critic batch {CPU_BUDGET['fisor_critic_batch']}); {args.episodes} "
              f"episodes per seed, normalised reward / cost averaged over κ = "
              f"{'/'.join(f'{k:g}' for k in meta.cost_thresholds)}; one torch thread.")  # fmt: skip
    text = header + "\n\n" + table(grid.rows) + "\n"
    write_json(out / "fisor_weights.json", {"header": header, "rows": grid.rows})
    write_text(out / "fisor_weights.md", text)
    print(text)
    return text


if __name__ == "__main__":
    main()
