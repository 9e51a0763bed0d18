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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saferl.common.io import save_figure, write_json, write_text
from saferl.data.dsrl import DatasetMetadata, validate_data
from saferl.data.rollout import rollout
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

    def __post_init__(self) -> None:
        unknown = sorted((set(self.methods) | set(self.configs)) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown methods {unknown}; expected some of {sorted(METHODS)}")
        if not self.seeds or self.episodes < 1:
            raise ValueError("need at least one seed and one episode")
        if self.thresholds is not None and any(k < 0 for k in self.thresholds):
            raise ValueError(f"thresholds must be >= 0, got {self.thresholds}")


Task = tuple[str, Mapping[str, np.ndarray], DatasetMetadata]
"""(task name, DSRL dict, metadata)."""


def _train(name: str, data, meta, cfg: BenchConfig, seed: int, kappa: float | None):
    """Train one method (through the registry); returns its batched ``act`` function."""
    method = get_method(name)
    config = make_config(name, cfg.configs.get(name), seed=seed,
                         cost_limit=kappa if method.threshold_conditioned else None)  # fmt: skip
    agent, _ = method.train(data, meta, config, cfg.device)
    return agent.act


def run_bench(
    tasks: Sequence[Task],
    config: BenchConfig,
    env_fn: Callable[[Any], Callable] | None = None,
    log: Callable[[str], None] = print,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the grid; returns one row per (task, method, threshold, seed).

    ``env_fn(metadata)`` returns a zero-argument env factory (default: the dataset's own task,
    ``metadata.make_env``). ``on_row`` is called with each row as soon as it
    exists (e.g. to append it to a file, so that a long grid's partial results survive).
    """
    rows: list[dict[str, Any]] = []
    for name, data, meta in tasks:
        validate_data(data, strict_dtype=False, extra_keys=True)
        kappas = config.thresholds or tuple(meta.cost_thresholds)
        factory = env_fn(meta) if env_fn else meta.make_env
        for method in config.methods:
            conditioned = get_method(method).threshold_conditioned
            for seed in config.seeds:
                groups = [(k,) for k in kappas] if conditioned else [tuple(kappas)]
                for group in groups:
                    start = time.perf_counter()
                    act = _train(method, data, meta, config, seed, group[0])
                    train_s = time.perf_counter() - start
                    res = rollout(
                        act,
                        factory,
                        config.episodes,
                        seed=1000 * seed,
                        record=False,
                        max_steps=config.max_eval_steps or meta.max_episode_steps,
                    )
                    for r in dsrl_scores(res, meta, group):
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


def load_tasks(paths: Sequence[str | Path]) -> list[Task]:
    """Read DSRL-format files with :func:`saferl.data.load_dataset`; task name = file stem.

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
    return [(Path(p).stem, *load_dataset(p)) for p in paths]


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
    for m, color in zip(METHODS, ("tab:gray", "tab:blue", "tab:orange", "tab:green"), strict=True):
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
