"""Offline safe-RL benchmark (DSRL protocol) on the toolkit's own DSRL-format datasets.

Runs BC-All, BC-Safe, BCQ-Lag, CPQ and FISOR on every dataset under data/ (or --datasets) at the
budget below, and prints the table (normalised reward / normalised cost averaged over the
thresholds and seeds; bold = safe, cost ≤ 1) beside FISOR's published table for context.
Writes experiments/results/offline/{summary.json,table.md,scatter.png,rows.json}: summary.json
holds one row per (task, method) with normalized_reward, normalized_cost, seeds and iterations.
The grid's cells run
through saferl.grid: finished cells are kept in <out>/<prefix>_grid/cells, so a killed run
resumes where it stopped, and --workers N (or --address of a Ray cluster) runs cells side by side.

    python experiments/bench_offline.py                          # all datasets, CPU budget
    python experiments/bench_offline.py --workers 2              # two cells at a time (Ray)
    python experiments/bench_offline.py --quick --out /tmp/x     # seconds; what the test runs
"""

from __future__ import annotations

import argparse
import glob
from dataclasses import replace
from pathlib import Path

from saferl.common.io import write_text
from saferl.offline import (
    BCConfig,
    BCQLagConfig,
    BenchConfig,
    CPQConfig,
    FISORConfig,
    load_tasks,
    result_path,
    run_bench,
    write_results,
)

RESULTS = Path(__file__).parent / "results"

CPU_BUDGET = {
    "fisor_steps": 20_000,
    # 2 actor updates of 512 (reference: 2 × 1024); 2 × 128 left about 11 effective samples per
    # update under FISOR's peaked weights (experiments/fisor_weights.py, docs/offline.md)
    "fisor_actor_batch": 1024,
    "fisor_critic_batch": 256,
    "fisor_nets": {"actor_width": 64},  # LN-ResNet 64 → 256 → 64 (reference: 256 → 1024 → 256)
    "bc_steps": 10_000,
    "bcq_steps": 2_000,
    "bcq_batch": 256,
    "bcq_nets": {"vae_hidden": (256, 256), "num_samples": 4},  # reference: 400, 400; 10
    "cpq_steps": 2_000,
    "cpq_batch": 256,
    "episodes": 20,
    "seeds": (0, 1, 2),
}
"""The budget of the committed table (machine and wall time in docs/offline.md); the reference
is FISOR 1e6 steps, BC / BCQ-Lag / CPQ 1e5 steps. On one contended CPU thread FISOR makes about
30 iterations/s at these sizes, BCQ-Lag 11 and CPQ 15 (BCQ-Lag at OSRL's sizes: under 3)."""


PUBLISHED = """FISOR's published results (ICLR 2024, DSRL datasets; normalised reward / cost,
3 thresholds × 3 seeds; cost ≤ 1 is safe):

| task | BC | BCQ-Lag | CPQ | FISOR |
|---|---|---|---|---|
| AntVel | 0.99/12.19 | 0.85/18.54 | −1.01/0.00 | 0.89/0.00 |
| HalfCheetahVel | 0.97/17.93 | 1.04/57.06 | 0.08/2.56 | 0.89/0.00 |
| SwimmerVel | 0.38/2.98 | 0.29/4.10 | 0.31/11.58 | −0.04/0.00 |
| SafetyGym avg (9) | 0.35/6.05 | 0.38/11.38 | 0.02/10.58 | 0.30/0.35 |
| BulletGym avg (8) | 0.72/10.58 | 0.71/10.63 | 0.32/5.28 | 0.39/0.10 |"""


def bench_config(budget: dict, device: str | None, max_eval_steps: int | None) -> BenchConfig:
    fisor = FISORConfig(
        steps=budget["fisor_steps"],
        actor_batch_size=budget["fisor_actor_batch"],
        critic_batch_size=budget["fisor_critic_batch"],
        log_every=max(1, budget["fisor_steps"] // 5),
        **budget.get("fisor_nets", {}),
    )
    return BenchConfig(
        seeds=tuple(budget["seeds"]),
        episodes=budget["episodes"],
        max_eval_steps=max_eval_steps,
        configs={
            "fisor": fisor,
            "bc_all": BCConfig(steps=budget["bc_steps"]),
            "bc_safe": BCConfig(steps=budget["bc_steps"]),
            "bcq_lag": BCQLagConfig(
                steps=budget["bcq_steps"],
                batch_size=budget["bcq_batch"],
                **budget.get("bcq_nets", {}),
            ),  # fmt: skip
            "cpq": CPQConfig(steps=budget["cpq_steps"], batch_size=budget["cpq_batch"]),
        },
        device=device,
    )


def quick_tasks(tmp: Path) -> list[str]:
    """One tiny random-rollout dataset written with saferl.data (for --quick)."""
    from saferl.data import save_dataset
    from saferl.offline import random_rollouts

    data, meta = random_rollouts(transitions=300, max_steps=30, seed=0)
    meta.cost_thresholds = [2.0, 5.0]
    path = tmp / "quick-hopper.hdf5"
    save_dataset(path, data, meta)
    return [str(path)]


def budget_text(
    budget: dict, tasks, methods=("bc_all", "bc_safe", "bcq_lag", "cpq", "fisor")
) -> str:
    sizes = ", ".join(
        f"{name}: {len(d['rewards'])} transitions / {m.num_trajectories} trajectories, "
        f"κ = {'/'.join(f'{k:g}' for k in m.cost_thresholds)}"
        for name, d, m in tasks
    )
    return (
        f"Methods {', '.join(methods)}. "
        f"Budget: FISOR {budget['fisor_steps']} steps (actor batch "
        f"{budget['fisor_actor_batch']} in 2 updates, critic batch {budget['fisor_critic_batch']}"
        f", nets {budget.get('fisor_nets', 'reference')}), BC-All/BC-Safe {budget['bc_steps']} "
        f"steps, BCQ-Lag {budget['bcq_steps']} steps (batch {budget['bcq_batch']}, "
        f"{budget.get('bcq_nets', 'reference nets')}), CPQ {budget['cpq_steps']} steps (batch "
        f"{budget['cpq_batch']}); seeds {list(budget['seeds'])}; "
        f"{budget['episodes']} episodes per evaluation. Datasets: {sizes}."
    )


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=None, help="default: data/*.hdf5")
    p.add_argument("--out", default=str(RESULTS / "offline"))
    p.add_argument("--prefix", default="", help="file-name prefix of the results (default none)")
    p.add_argument("--device", default=None)
    p.add_argument("--workers", type=int, default=1, help="cells side by side (Ray); 1: no Ray")
    p.add_argument("--address", default=None, help="an existing Ray cluster ('auto', ray://…)")
    p.add_argument("--max-eval-steps", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--methods", nargs="+", default=None, help="subset of the methods")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the seeds")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=INT",
                   help="override integer budget entries, e.g. bcq_steps=300")  # fmt: skip
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = dict(CPU_BUDGET)
    for item in args.set:
        key, value = item.split("=")
        if key not in budget:
            raise SystemExit(f"unknown budget key {key!r}; expected one of {sorted(budget)}")
        budget[key] = int(value)
    if args.seeds:
        budget["seeds"] = tuple(args.seeds)
    if args.quick:
        budget.update(fisor_steps=5, fisor_actor_batch=32, fisor_critic_batch=32,
                      bc_steps=5, bcq_steps=3, bcq_batch=32, cpq_steps=3, cpq_batch=32,
                      episodes=2, seeds=(0,),
                      fisor_nets={"actor_width": 16, "critic_hidden": (16, 16)})  # fmt: skip
        args.max_eval_steps = args.max_eval_steps or 8
        paths = quick_tasks(out)
    else:
        paths = args.datasets or sorted(glob.glob("data/*.hdf5"))
    if not paths:
        raise SystemExit("no datasets: pass --datasets or create data/*.hdf5 (saferl collect)")
    tasks = load_tasks(paths)
    config = bench_config(budget, args.device, args.max_eval_steps)
    if args.methods:
        config = replace(config, methods=tuple(args.methods))
    header = budget_text(budget, tasks, config.methods)
    grid_dir = result_path(out, args.prefix, "grid")
    grid = run_bench(tasks, config, grid_dir, args.workers, args.address)
    if grid.failed:
        raise SystemExit(f"{len(grid.failed)} cells failed: {grid.failed}; re-run to retry them")
    header += (f" Wall time {grid.seconds:.0f} s for the {len(grid.ran)} cells run now"
               f" ({len(grid.skipped)} were already done); {args.workers} worker(s).")  # fmt: skip
    _, table = write_results(grid.rows, out, args.prefix)
    report = f"{header}\n\n{table}\n\n{PUBLISHED}"
    write_text(result_path(out, args.prefix, "table.md"), report + "\n")
    print(report)
    return report


if __name__ == "__main__":
    main()
