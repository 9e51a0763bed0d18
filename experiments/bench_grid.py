"""Scale-out benchmark: one offline benchmark grid run in-process (``--workers 1``) and as Ray
tasks on this machine (``--workers N``), side by side.

The grid: 2 tasks (random-rollout datasets of planar Hopper, 1500 transitions each) × BC-All and
FISOR × 2 seeds = 8 cells, each training a small FISOR (``--fisor-steps``) or BC and evaluating
it on 5 episodes. Every repeat runs the grid from scratch in fresh folders with each worker count
(interleaved), times the whole call (Ray's start-up and shut-down included) and checks that both
give the same rows. Reports the medians and the median of per-repeat ratios, and Ray's start-up
(``ray.init`` to ready) and shut-down on their own.

    python experiments/bench_grid.py --workers 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from saferl.common.io import write_text
from saferl.offline import BenchConfig, random_rollouts
from saferl.offline.bench import run_bench

RESULTS = Path(__file__).parent / "results"


def grid_tasks(transitions: int) -> list:
    tasks = []
    for name, seed in (("hopper-a", 1), ("hopper-b", 2)):
        data, meta = random_rollouts(transitions=transitions, max_steps=100, seed=seed)
        tasks.append((name, data, meta))
    return tasks


def grid_config(fisor_steps: int) -> BenchConfig:
    configs = {
        "bc_all": {"steps": 2 * fisor_steps, "batch_size": 256, "hidden": (128, 128)},
        "fisor": {"steps": fisor_steps, "actor_batch_size": 256, "critic_batch_size": 256,
                  "actor_width": 64, "log_every": fisor_steps},
    }  # fmt: skip
    return BenchConfig(methods=("bc_all", "fisor"), seeds=(0, 1), episodes=5,
                       max_eval_steps=100, configs=configs, device="cpu")  # fmt: skip


def timed_grid(tasks, config, workers: int) -> tuple[float, list, float]:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        grid = run_bench(tasks, config, folder, workers=workers, log=lambda _: None)
        seconds = time.perf_counter() - start
    if grid.failed:
        raise RuntimeError(f"cells failed: {grid.failed}")
    rows = sorted((r["task"], r["method"], r["seed"], r["threshold"], r["reward"], r["cost"])
                  for r in grid.rows)  # fmt: skip
    return seconds, rows, grid.startup_seconds


def ray_overhead() -> tuple[float, float]:
    """Seconds to start a local Ray (2 CPUs) and to shut it down."""
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    up = time.perf_counter() - start
    start = time.perf_counter()
    ray.shutdown()
    return up, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fisor-steps", type=int, default=400)
    p.add_argument("--transitions", type=int, default=1500)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true", help="tiny grid, one repeat (a test runs it)")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.fisor_steps, args.transitions = 1, 20, 300
    tasks, config = grid_tasks(args.transitions), grid_config(args.fisor_steps)
    one, many, ratios = [], [], []
    for _ in range(args.repeats):
        t1, rows1, _ = timed_grid(tasks, config, 1)
        tn, rows_n, _ = timed_grid(tasks, config, args.workers)
        if rows1 != rows_n:
            raise RuntimeError("the Ray grid's rows differ from the in-process grid's")
        one.append(t1)
        many.append(tn)
        ratios.append(t1 / tn)
    up, down = ray_overhead()
    result = {
        "cells": 8, "workers": args.workers, "repeats": args.repeats,
        "fisor_steps": args.fisor_steps, "seconds_workers_1": statistics.median(one),
        f"seconds_workers_{args.workers}": statistics.median(many),
        "speedup_median": statistics.median(ratios), "ray_init_seconds": up,
        "ray_shutdown_seconds": down, "same_rows": True,
    }  # fmt: skip
    table = (
        "| grid | --workers 1 (s) | --workers {w} (s) | speed-up (median of ratios) | Ray start-up "
        "(s) | Ray shut-down (s) |\n|---|---|---|---|---|---|\n"
        "| 8 cells (2 tasks × BC-All, FISOR × 2 seeds) | {a:.1f} | {b:.1f} | {r:.2f}× | {u:.1f} "
        "| {d:.1f} |"
    ).format(w=args.workers, a=statistics.median(one), b=statistics.median(many),
             r=result["speedup_median"], u=up, d=down)  # fmt: skip
    print(table)
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        write_text(
            args.out / f"bench_grid_workers{args.workers}.json", json.dumps(result, indent=1)
        )
    return result


if __name__ == "__main__":
    main()
