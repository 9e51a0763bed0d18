"""DSRL-style benchmark grid: tasks × methods × thresholds × seeds, from dataset files.

Cost-blind or hard-constraint methods (BC-All, FISOR) are trained once per (task, seed) and
their episodes scored at every threshold; threshold-conditioned methods (BC-Safe, BCQ-Lag) are
trained once per (task, threshold, seed). Results: one row per (task, method, threshold, seed),
summarised as threshold- and seed-averaged normalised (reward, cost), a markdown table and a
reward-vs-cost scatter plot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from saferl.common.io import save_figure, write_json, write_text
from saferl.offline.bc import BCConfig, train_bc
from saferl.offline.bcq_lag import BCQLagConfig, train_bcq_lag
from saferl.offline.dataset import TaskInfo, check_data, task_info
from saferl.offline.evaluate import dsrl_scores, evaluate_policy, make_env, summarize
from saferl.offline.fisor import FISORConfig, train_fisor

METHODS = ("bc_all", "bc_safe", "bcq_lag", "fisor")
"""Method names the grid knows."""
THRESHOLD_FREE = {"bc_all", "fisor"}
"""Methods whose training ignores the cost threshold κ."""


@dataclass
class BenchConfig:
    """A benchmark grid and its training budgets."""

    methods: tuple[str, ...] = METHODS
    """Methods to run (subset of :data:`METHODS`)."""
    thresholds: tuple[float, ...] | None = None
    """Cost thresholds κ; None = each dataset's ``cost_thresholds``."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training and evaluation seeds."""
    episodes: int = 20
    """Evaluation episodes per (method, threshold, seed)."""
    max_eval_steps: int | None = None
    """Evaluation episode length (None: the dataset's ``max_episode_steps``)."""
    fisor: FISORConfig = field(default_factory=FISORConfig)
    """FISOR budget and hyperparameters (its seed is replaced by the grid's)."""
    bc: BCConfig = field(default_factory=BCConfig)
    """BC-All / BC-Safe budget (seed and cost_limit replaced by the grid's)."""
    bcq_lag: BCQLagConfig = field(default_factory=BCQLagConfig)
    """BCQ-Lag budget (seed and cost_limit replaced by the grid's)."""
    device: str | None = None
    """Torch device (default: cuda if available)."""

    def __post_init__(self) -> None:
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; expected a subset of {METHODS}")
        if not self.seeds or self.episodes < 1:
            raise ValueError("need at least one seed and one episode")
        if self.thresholds is not None and any(k < 0 for k in self.thresholds):
            raise ValueError(f"thresholds must be >= 0, got {self.thresholds}")


Task = tuple[str, Mapping[str, np.ndarray], Any]
"""(task name, DSRL dict, metadata)."""


def _train(method: str, data, meta, cfg: BenchConfig, seed: int, kappa: float | None):
    """Train one method; returns its batched ``act`` function."""
    dev = cfg.device
    if method == "fisor":
        agent, _ = train_fisor(data, meta, replace(cfg.fisor, seed=seed), dev)
    elif method in ("bc_all", "bc_safe"):
        limit = kappa if method == "bc_safe" else None
        agent, _ = train_bc(data, meta, replace(cfg.bc, seed=seed, cost_limit=limit), dev)
    else:
        bcfg = replace(cfg.bcq_lag, seed=seed, cost_limit=float(kappa))
        agent, _ = train_bcq_lag(data, meta, bcfg, dev)
    return agent.act


def run_bench(
    tasks: Sequence[Task],
    config: BenchConfig,
    env_fn: Callable[[Any], Callable] | None = None,
    log: Callable[[str], None] = print,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the grid; returns one row per (task, method, threshold, seed).

    ``env_fn(metadata)`` returns a zero-argument env factory (default: ``make_env`` with the
    metadata's ``env_id`` and ``env_kwargs``). ``on_row`` is called with each row as soon as it
    exists (e.g. to append it to a file, so that a long grid's partial results survive).
    """
    rows: list[dict[str, Any]] = []
    for name, data, meta in tasks:
        check_data(data)
        info = task_info(meta)
        kappas = config.thresholds or tuple(getattr(meta, "cost_thresholds", (10.0, 20.0, 40.0)))
        factory = env_fn(meta) if env_fn else _default_env_fn(meta, info)
        for method in config.methods:
            for seed in config.seeds:
                groups = [tuple(kappas)] if method in THRESHOLD_FREE else [(k,) for k in kappas]
                for group in groups:
                    start = time.perf_counter()
                    act = _train(method, data, meta, config, seed, group[0])
                    train_s = time.perf_counter() - start
                    res = evaluate_policy(
                        act,
                        factory,
                        config.episodes,
                        seed=1000 * seed,
                        max_steps=config.max_eval_steps or info.max_episode_steps,
                    )
                    for r in dsrl_scores(res, info, group):
                        rows.append(
                            {"task": name, "method": method, "seed": seed, "train_s": train_s, **r}
                        )
                        log(
                            f"{name} {method} seed={seed} κ={r['threshold']:g}: reward "
                            f"{r['reward']:.3f} cost {r['cost']:.3f} ({train_s:.0f}s train)"
                        )
                        if on_row is not None:
                            on_row(rows[-1])
    return rows


def _default_env_fn(meta: Any, info: TaskInfo) -> Callable:
    kwargs = dict(getattr(meta, "env_kwargs", {}) or {})
    return lambda: make_env(info.env_id, **kwargs)


def load_tasks(paths: Sequence[str | Path]) -> list[Task]:
    """Read DSRL-format files with :func:`saferl.data.load_dataset`; task name = file stem."""
    from saferl.data import load_dataset

    tasks = []
    for p in paths:
        data, meta = load_dataset(p)
        tasks.append((Path(p).stem, data, meta))
    return tasks


METHOD_LABELS = {"bc_all": "BC-All", "bc_safe": "BC-Safe", "bcq_lag": "BCQ-Lag", "fisor": "FISOR"}


def markdown_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """Tasks as rows, methods as columns; cells ``reward / cost``, safe results in bold."""
    tasks = list(dict.fromkeys(r["task"] for r in summary))
    methods = [m for m in METHODS if any(r["method"] == m for r in summary)]
    cell = {(r["task"], r["method"]): r for r in summary}
    lines = [
        "| task | " + " | ".join(METHOD_LABELS[m] for m in methods) + " |",
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
    for m, color in zip(METHODS, ("tab:gray", "tab:blue", "tab:orange", "tab:green"), strict=True):
        for ti, t in enumerate(tasks):
            pts = [r for r in summary if r["method"] == m and r["task"] == t]
            if pts:
                ax.scatter(
                    [p["cost"] for p in pts],
                    [p["reward"] for p in pts],
                    color=color,
                    marker=markers[ti % len(markers)],
                    label=f"{METHOD_LABELS[m]} · {t}",
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


def write_results(rows: Sequence[Mapping[str, Any]], out_dir: str | Path, prefix: str = "bench"):
    """Write ``{prefix}_rows.json``, ``{prefix}_table.md`` and ``{prefix}_scatter.png``;
    returns (summary, markdown table)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    table = markdown_table(summary)
    write_json(out / f"{prefix}_rows.json", {"rows": list(rows), "summary": summary}, indent=1)
    write_text(out / f"{prefix}_table.md", table + "\n")
    scatter_plot(summary, out / f"{prefix}_scatter.png")
    return summary, table
