"""Regenerate the toolkit's DSRL-format datasets and their table and spread plots.

    python experiments/collect_datasets.py                     # every task, full (small) budget
    python experiments/collect_datasets.py --tasks SaferlPlanar-HopperVelocity-v1
    python experiments/collect_datasets.py --table-only        # table from existing summaries
    python experiments/collect_datasets.py --quick --data-dir /tmp/d --out /tmp/r

Datasets go to ``--data-dir`` (default ``data/``, git-ignored), each with a JSON summary and a
spread plot; plots are copied to ``--out`` (default ``experiments/results``) as
``datasets_<task>.png`` and the table to ``datasets_table.md``. Budget per task: BUDGETS below
(2-core shared CPU, one torch thread).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from saferl.commands.collect import write_summary
from saferl.common.io import write_text
from saferl.data import load_dataset, save_dataset, trajectory_returns
from saferl.data.collection import CollectConfig, collect
from saferl.data.plot import plot_spread

# task -> (episode steps, PPO training steps, PPO overrides, cost thresholds κ); rollouts: 10
# checkpoints x 3 modes (deterministic, deterministic + noise 0.3, stochastic) x 6 episodes = 180
# trajectories. κ None: DSRL's 20/40/80 per 1000 steps, scaled to the episode length. The 3D
# walkers rarely go below 12 per 300 steps, so their κ are 20/30/40 (6-32 % of trajectories safe).
_KAPPA_3D = (20.0, 30.0, 40.0)
BUDGETS: dict[str, tuple[int, int, dict, tuple[float, ...] | None]] = {
    "SaferlPlanar-HopperVelocity-v1": (500, 80_000, {}, None),
    "SaferlPlanar-SwimmerVelocity-v1": (500, 60_000, {"gamma": 0.9999}, None),  # RL-Zoo's γ
    "Saferl3D-Hopper3-v0": (300, 60_000, {}, _KAPPA_3D),
    "Saferl3D-Walker2-v0": (300, 60_000, {}, _KAPPA_3D),
    "Saferl3D-Walker3-v0": (300, 60_000, {}, _KAPPA_3D),
}
QUICK_TASK = "SaferlPlanar-HopperVelocity-v1"


def config_for(task: str, quick: bool, seed: int) -> CollectConfig:
    """The collection config of a task at the full or the quick budget."""
    if quick:
        tiny = {"total_timesteps": 128, "num_checkpoints": 2, "episodes_per_mode": 1}
        return CollectConfig.for_task(task, 30, grid_bins=3, seed=seed, verbose=0, **tiny)
    steps, total, ppo, kappas = BUDGETS[task]
    return CollectConfig.for_task(task, steps, total_timesteps=total, num_checkpoints=10,
                                  episodes_per_mode=6, anneal_fraction=0.5, seed=seed,
                                  learner_kwargs=ppo, cost_thresholds=kappas)  # fmt: skip


def retag(path: Path, quick: bool, seed: int) -> None:
    """Rewrite only the cost thresholds of an existing dataset (and its summary and plot) to the
    current config's; κ plays no part in collection, so this equals recollecting."""
    kappas = [float(k) for k in config_for(path.stem, quick, seed).cost_thresholds]
    data, meta = load_dataset(path)
    meta.cost_thresholds = kappas
    meta.extra.setdefault("collect_config", {})["cost_thresholds"] = kappas
    save_dataset(path, data, meta)
    summary_path = path.with_suffix(".json")
    summary = json.loads(summary_path.read_text())
    summary["metadata"]["cost_thresholds"] = kappas
    summary["metadata"]["extra"] = meta.extra
    write_text(summary_path, json.dumps(summary, indent=1))
    title = f"{path.stem}: {meta.num_trajectories}/{len(summary['kept'])} trajectories kept"
    plot_spread(summary["returns_cost_reward"], summary["kept"], summary["checkpoint"], kappas,
                path.with_suffix(".png"), title=title)  # fmt: skip


def run_task(task: str, data_dir: Path, quick: bool, seed: int) -> Path:
    """Collect one task's dataset; write its HDF5, JSON summary and spread plot."""
    result = collect(config_for(task, quick, seed))
    path = data_dir / f"{task}.hdf5"
    save_dataset(path, result.data, result.metadata)
    write_summary(path.with_suffix(".json"), result)
    title = f"{task}: {result.metadata.num_trajectories}/{len(result.kept)} trajectories kept"
    plot_spread(result.all_returns, result.kept, result.checkpoint,
                result.metadata.cost_thresholds, path.with_suffix(".png"), title=title)  # fmt: skip
    return path


def table_row(path: Path) -> dict[str, object]:
    """One table row from a dataset file and its JSON summary."""
    data, meta = load_dataset(path)
    summary = json.loads(path.with_suffix(".json").read_text())
    rets, costs = trajectory_returns(data)
    cfg = meta.extra.get("collect_config", {})
    row: dict[str, object] = {
        "task": meta.env_id,
        "obs/act": f"{meta.obs_dim}/{meta.act_dim}",
        "ep. steps": meta.max_episode_steps,
        "train steps": cfg.get("total_timesteps", "?"),
        "traj. kept/rolled": f"{meta.num_trajectories}/{len(summary['kept'])}",
        "transitions": len(data["rewards"]),
        "MB": f"{path.stat().st_size / 2**20:.1f}",
        "R_min / R_max": f"{meta.reward_min:.0f} / {meta.reward_max:.0f}",
        "max cost": f"{meta.max_cost:.0f}",
        "κ": "/".join(f"{k:g}" for k in meta.cost_thresholds),
    }
    safe = [costs <= k for k in meta.cost_thresholds]
    row["safe % at κ"] = "/".join(f"{100 * m.mean():.0f}" for m in safe)
    row["best safe R at κ"] = "/".join(f"{rets[m].max():.0f}" if m.any() else "-" for m in safe)
    row["time s"] = f"{summary['seconds']:.0f}"
    return row


def markdown(rows: list[dict[str, object]]) -> str:
    """Rows (dicts with the same keys) as one markdown table."""
    keys = list(rows[0])
    header = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    return header + "".join("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |\n"
                            for r in rows)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=None, help=f"default: {list(BUDGETS)}")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="one task, a few hundred steps")
    p.add_argument("--table-only", action="store_true", help="only rebuild table and plots")
    p.add_argument(
        "--retag",
        action="store_true",
        help="rewrite existing datasets' cost thresholds to BUDGETS', then the table",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    tasks = args.tasks or ([QUICK_TASK] if args.quick else list(BUDGETS))
    unknown = [t for t in tasks if t not in BUDGETS]
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; expected some of {list(BUDGETS)}")
    data_dir, out = Path(args.data_dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for task in tasks if args.retag else []:
        if (data_dir / f"{task}.hdf5").exists():
            retag(data_dir / f"{task}.hdf5", args.quick, args.seed)
    for task in [] if (args.table_only or args.retag) else tasks:
        start = time.perf_counter()
        path = run_task(task, data_dir, args.quick, args.seed)
        print(f"{task}: {path} in {time.perf_counter() - start:.0f} s", flush=True)
    paths = [data_dir / f"{t}.hdf5" for t in tasks if (data_dir / f"{t}.hdf5").exists()]
    if not paths:
        print("no datasets found", file=sys.stderr)
        return 1
    for path in paths:
        shutil.copyfile(path.with_suffix(".png"), out / f"datasets_{path.stem}.png")
    table = markdown([table_row(path) for path in paths])
    write_text(out / "datasets_table.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
