"""DSRL-style benchmark grid: tasks × methods × thresholds × seeds, from dataset files.

Cost-blind or hard-constraint methods (BC-All, FISOR) are trained once per (task, seed) and
their episodes scored at every threshold; threshold-conditioned methods (BC-Safe, BCQ-Lag, CPQ) are
trained once per (task, threshold, seed). Each such training is a cell of a
:mod:`saferl.grid` grid: in this process or as Ray tasks, resumable cell by cell. Results: one
row per (task, method, threshold, seed), summarised as threshold- and seed-averaged normalised
(reward, cost), a markdown table and a reward-vs-cost scatter plot.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saferl.common.io import save_figure, write_json, write_text
from saferl.data.dsrl import DatasetMetadata, validate_data
from saferl.data.rollout import rollout
from saferl.grid import Cell, GridResult, run_grid
from saferl.offline.evaluate import dsrl_scores, summarize
from saferl.offline.registry import METHODS, get_method, make_config


@dataclass
class BenchConfig:
    """A benchmark grid and its training budgets."""

    methods: tuple[str, ...] = tuple(METHODS)
    """Methods to run (names of :data:`saferl.offline.registry.METHODS`)."""
    thresholds: tuple[float, ...] | None = None
    """Cost thresholds κ; None = each dataset's ``cost_thresholds``."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training and evaluation seeds."""
    episodes: int = 20
    """Evaluation episodes per (method, threshold, seed)."""
    max_eval_steps: int | None = None
    """Evaluation episode length (None: the dataset's ``max_episode_steps``)."""
    configs: dict[str, Any] = field(default_factory=dict)
    """Per method name, its base config (instance or dict; default: the reference config);
    the grid sets seed and, for threshold-conditioned methods, the cost threshold."""
    device: str | None = None
    """Torch device (default: cuda if available)."""
    cpus_per_cell: float = 1.0
    """CPUs a grid cell reserves (and its torch threads)."""
    gpus_per_cell: float = 0.0
    """GPUs a grid cell reserves (a fraction packs several cells on one GPU)."""

    def __post_init__(self) -> None:
        unknown = sorted((set(self.methods) | set(self.configs)) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown methods {unknown}; expected some of {sorted(METHODS)}")
        if not self.seeds or self.episodes < 1:
            raise ValueError("need at least one seed and one episode")
        if not (self.cpus_per_cell > 0 and self.gpus_per_cell >= 0):
            raise ValueError("cpus_per_cell must be > 0 and gpus_per_cell >= 0")
        if self.thresholds is not None and any(k < 0 for k in self.thresholds):
            raise ValueError(f"thresholds must be >= 0, got {self.thresholds}")


Task = tuple[str, Mapping[str, np.ndarray], DatasetMetadata]
"""(task name, DSRL dict, metadata)."""


def bench_cell(
    payload: tuple[Mapping[str, np.ndarray], DatasetMetadata],
    *,
    task: str,
    method: str,
    seed: int,
    group: tuple[float, ...],
    base: Any,
    episodes: int,
    max_eval_steps: int | None,
    device: str | None,
) -> list[dict[str, Any]]:
    """One cell of the grid: train ``method`` (through the registry, from its ``base`` config)
    on the task's data with ``seed`` — threshold-conditioned methods at κ = ``group[0]`` — and
    score it on ``episodes`` episodes at every κ of ``group``; one row per κ."""
    data, meta = payload
    spec = get_method(method)
    kappa = group[0] if spec.threshold_conditioned else None
    config = make_config(method, base, seed=seed, cost_limit=kappa)
    start = time.perf_counter()
    agent, log = spec.train(data, meta, config, device)
    train_s = time.perf_counter() - start
    res = rollout(agent.act, meta.make_env, episodes, seed=1000 * seed, record=False,
                  max_steps=max_eval_steps or meta.max_episode_steps)  # fmt: skip
    stats = training_stats(log)
    return [{"task": task, "method": method, "seed": seed, "iterations": config.steps,
             "train_s": train_s, **r, **stats} for r in dsrl_scores(res, meta, group)]  # fmt: skip


def training_stats(log: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """A training log's last logged statistics (``train_final``) and each statistic's maximum
    over the logged steps (``train_max``): e.g. whether a Lagrange multiplier ever rose above
    0 (``train_max["values/lambda"]``). Empty dicts for an empty log."""
    if not log:
        return {"train_final": {}, "train_max": {}}
    keys = [k for k in log[-1] if k != "step"]
    return {
        "train_final": {k: float(log[-1][k]) for k in keys},
        "train_max": {k: max(float(row[k]) for row in log if k in row) for k in keys},
    }


def dataset_digest(data: Mapping[str, np.ndarray], meta: DatasetMetadata) -> str:
    """A short hash of a dataset's arrays (names, dtypes, shapes, bytes) and its scoring
    metadata (env, R_min/R_max, thresholds, episode length)."""
    h = hashlib.sha256()
    for key in sorted(data):
        arr = np.ascontiguousarray(data[key])
        h.update(f"{key}:{arr.dtype.str}:{arr.shape}".encode())
        h.update(arr.tobytes())
    scoring = (meta.env_id, meta.reward_min, meta.reward_max, list(meta.cost_thresholds),
               meta.max_episode_steps)  # fmt: skip
    h.update(repr(scoring).encode())
    return h.hexdigest()[:16]


def bench_cells(tasks: Sequence[Task], config: BenchConfig) -> tuple[list[Cell], dict[str, Any]]:
    """The grid's cells (task × method × seed, × κ for threshold-conditioned methods) and the
    data they share (one dataset per task). A cell's fingerprint holds its dataset's
    :func:`dataset_digest`: finished cells run again when their data changed."""
    cells, shared = [], {}
    for name, data, meta in tasks:
        validate_data(data, strict_dtype=False, extra_keys=True)
        shared[name] = (data, meta)
        digest = dataset_digest(data, meta)
        kappas = config.thresholds or tuple(meta.cost_thresholds)
        for method in config.methods:
            conditioned = get_method(method).threshold_conditioned
            groups = [(k,) for k in kappas] if conditioned else [tuple(kappas)]
            for seed in config.seeds:
                for group in groups:
                    key = f"{name}__{method}__seed{seed}" + (
                        f"__k{group[0]:g}" if conditioned else ""
                    )
                    kwargs = {"task": name, "method": method, "seed": seed, "group": group,
                              "base": config.configs.get(method), "episodes": config.episodes,
                              "max_eval_steps": config.max_eval_steps,
                              "device": config.device}  # fmt: skip
                    resources = {"cpus": config.cpus_per_cell, "gpus": config.gpus_per_cell}
                    cells.append(Cell(key, bench_cell, kwargs, shared=name,
                                      shared_digest=digest, **resources))  # fmt: skip
    return cells, shared


def run_bench(
    tasks: Sequence[Task],
    config: BenchConfig,
    out: str | Path,
    workers: int = 1,
    address: str | None = None,
    log: Callable[[str], None] = print,
) -> GridResult:
    """Run the grid (:func:`saferl.grid.run_grid`): one row per (task, method, threshold, seed);
    each finished cell's rows land in ``<out>/cells/`` at once, and a re-run with the same
    ``out`` runs only the cells not done yet. ``workers`` > 1 or an ``address`` runs the cells as
    Ray tasks (this machine, or a cluster)."""
    cells, shared = bench_cells(tasks, config)
    return run_grid(cells, out, workers=workers, address=address, shared=shared, log=log)


def load_tasks(paths: Sequence[str | Path], dsrl: Sequence[str | None] | None = None) -> list[Task]:
    """Read DSRL-format files with :func:`saferl.data.load_dataset` (``dsrl[i]``: the DSRL
    task of file i, its ``task=``); task name = file stem.

    Two files with the same stem would merge their rows in the tables: ValueError before any
    file is read."""
    from saferl.data import load_dataset

    stems: dict[str, list[str]] = {}
    for p in paths:
        stems.setdefault(Path(p).stem, []).append(str(p))
    clashes = {stem: files for stem, files in stems.items() if len(files) > 1}
    if clashes:
        raise ValueError(f"datasets must have distinct file names (a task is named after its "
                         f"file's stem); these clash: {clashes}")  # fmt: skip
    if dsrl is not None and len(dsrl) != len(paths):
        raise ValueError(f"{len(dsrl)} DSRL task(s) for {len(paths)} dataset(s)")
    dsrl = list(dsrl) if dsrl is not None else [None] * len(paths)
    return [(Path(p).stem, *load_dataset(p, task=t)) for p, t in zip(paths, dsrl, strict=True)]


def markdown_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """Tasks as rows, methods as columns; cells ``reward / cost``, safe results in bold."""
    tasks = list(dict.fromkeys(r["task"] for r in summary))
    methods = [m for m in METHODS if any(r["method"] == m for r in summary)]
    cell = {(r["task"], r["method"]): r for r in summary}
    lines = [
        "| task | " + " | ".join(METHODS[m].label for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for t in tasks:
        cells = []
        for m in methods:
            r = cell.get((t, m))
            if r is None:
                cells.append("–")
                continue
            txt = f"{r['reward']:.2f}/{r['cost']:.2f}"
            cells.append(f"**{txt}**" if r["safe"] else txt)
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scatter_plot(summary: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Normalised reward vs normalised cost, one marker per (task, method); cost = 1 dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    markers = "osD^v<>p*"
    tasks = list(dict.fromkeys(r["task"] for r in summary))
    colors = {"bc_all": "tab:gray", "bc_safe": "tab:blue", "bcq_lag": "tab:orange",
              "cpq": "tab:purple", "fisor": "tab:green"}  # fmt: skip
    for m in METHODS:
        color = colors.get(m, "tab:red")
        for ti, t in enumerate(tasks):
            pts = [r for r in summary if r["method"] == m and r["task"] == t]
            if pts:
                ax.scatter(
                    [p["cost"] for p in pts],
                    [p["reward"] for p in pts],
                    color=color,
                    marker=markers[ti % len(markers)],
                    label=f"{METHODS[m].label} · {t}",
                )
    ax.axvline(1.0, color="k", ls="--", lw=1)
    ax.set_xlabel("normalised cost (safe ≤ 1)")
    ax.set_ylabel("normalised reward")
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def dsrl_summary(
    rows: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """One row per (task, method) as DSRL tables report it: ``normalized_reward`` and
    ``normalized_cost`` averaged over thresholds and seeds (:func:`summarize`, or its result
    ``summary`` when already computed), their spread over seeds, the ``seeds`` and
    ``thresholds`` averaged over, and the training ``iterations`` (gradient steps per training
    run; a list when the rows disagree)."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"]), []).append(r)
    out = []
    for s in summarize(rows) if summary is None else summary:
        group = groups[(s["task"], s["method"])]
        iterations = sorted({r["iterations"] for r in group if "iterations" in r})
        out.append({
            "task": s["task"], "method": s["method"],
            "normalized_reward": s["reward"], "normalized_cost": s["cost"],
            "normalized_reward_std": s["reward_std"], "normalized_cost_std": s["cost_std"],
            "safe": s["safe"],
            "seeds": sorted({r.get("seed", 0) for r in group}),
            "thresholds": sorted({r["threshold"] for r in group if "threshold" in r}),
            "iterations": iterations[0] if len(iterations) == 1 else iterations,
        })  # fmt: skip
    return out


def result_path(out_dir: str | Path, prefix: str, name: str) -> Path:
    """``out_dir/{prefix}_{name}``, or ``out_dir/{name}`` with an empty ``prefix``."""
    return Path(out_dir) / (f"{prefix}_{name}" if prefix else name)


def write_results(rows: Sequence[Mapping[str, Any]], out_dir: str | Path, prefix: str = "bench"):
    """Write ``{prefix}_rows.json``, ``{prefix}_table.md``, ``{prefix}_scatter.png`` and
    ``{prefix}_summary.json`` (:func:`dsrl_summary`; plain ``rows.json``, … with an empty
    ``prefix``: :func:`result_path`); returns (summary, markdown table)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    table = markdown_table(summary)
    write_json(result_path(out_dir, prefix, "rows.json"), {"rows": list(rows), "summary": summary},
               indent=1)  # fmt: skip
    write_json(result_path(out_dir, prefix, "summary.json"), dsrl_summary(rows, summary), indent=1)
    write_text(result_path(out_dir, prefix, "table.md"), table + "\n")
    scatter_plot(summary, result_path(out_dir, prefix, "scatter.png"))
    return summary, table
