"""Grids of independent cells — benchmark cells, dataset collections, training seeds — run in
this process or as Ray tasks, resumable, with no finished cell's rows ever lost.

A :class:`Cell` is one unit of work: a top-level function returning a list of row dicts, its
keyword arguments and the resources it needs. :func:`run_grid` runs the cells and writes each
finished cell's rows to ``<out>/cells/<key>.json`` (atomically, as soon as the cell ends), so a
killed grid resumes where it stopped: a re-run with the same ``out`` skips every finished cell —
unless its arguments changed since (a fingerprint is kept with its rows) or one of the files it
declares as outputs is gone. ``workers=1`` runs the cells one after another in this process,
without Ray; otherwise Ray runs them as tasks — on this machine (``ray.init(num_cpus=workers)``,
the embedded default) or on an existing cluster (``address="auto"`` or ``"ray://HOST:PORT"``).
Ray packs the cells by their declared CPUs and GPUs, retries a cell whose worker died (OOM,
SIGKILL) up to ``retries`` times, and a cell whose own code raises is reported with its error
while the rest of the grid completes. Each cell runs with as many torch threads as it declares
CPUs.

Large inputs shared by many cells (a dataset) are passed once: ``shared={"name": value}`` and
``Cell(shared="name")`` give the value as the cell function's first argument (through Ray's
object store when Ray runs the grid).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from saferl.common.io import write_json
from saferl.common.runtime import torch_threads

Rows = list[dict[str, Any]]
_KEY = re.compile(r"^[A-Za-z0-9._=+-]+$")


@dataclass(frozen=True)
class Cell:
    """One unit of a grid: ``fn([shared value,] **kwargs) -> rows``.

    ``key`` names the cell's row file (letters, digits and ``._=+-``); ``fn`` must be a
    top-level (importable) function so Ray workers can run it; ``cpus``/``gpus`` are what Ray
    reserves for it (a GPU fraction packs several cells on one GPU); ``outputs`` are files the
    cell writes — a finished cell one of whose outputs is gone is run again; ``volatile`` names
    arguments that do not change its results (left out of its fingerprint); ``shared_digest``
    identifies the shared value the cell reads (e.g. a hash of its dataset), so that a finished
    cell runs again when that value changed.
    """

    key: str
    fn: Callable[..., Rows]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    shared: str | None = None
    cpus: float = 1.0
    gpus: float = 0.0
    outputs: tuple[str, ...] = ()
    volatile: tuple[str, ...] = ()
    shared_digest: str = ""

    def fingerprint(self) -> str:
        """A short hash of the cell's function and arguments (but the ``volatile`` ones, such as
        a verbosity flag) and of its ``shared_digest``: a finished cell whose fingerprint changed
        is run again."""
        kwargs = {k: v for k, v in self.kwargs.items() if k not in self.volatile}
        payload = {"fn": f"{self.fn.__module__}.{self.fn.__qualname__}", "kwargs": kwargs}
        if self.shared_digest:  # absent otherwise, so grids without one keep their fingerprints
            payload["shared_digest"] = self.shared_digest
        text = json.dumps(payload, sort_keys=True, default=_jsonable)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not _KEY.match(self.key):
            raise ValueError(f"cell key {self.key!r} must be letters, digits and ._=+- only "
                             "(it names the cell's row file)")  # fmt: skip
        if not (self.cpus > 0 and self.gpus >= 0):
            raise ValueError(f"cell {self.key}: need cpus > 0 and gpus >= 0, got "
                             f"{self.cpus}, {self.gpus}")  # fmt: skip


@dataclass
class GridResult:
    """What a grid run did: every finished cell's rows (cell order), and which cells ran now,
    were already done, or failed (key -> one-line error)."""

    rows: Rows
    ran: list[str]
    skipped: list[str]
    failed: dict[str, str]
    seconds: float
    startup_seconds: float = 0.0


def cell_file(out: str | Path, key: str) -> Path:
    """The row file of cell ``key`` under grid folder ``out``."""
    return Path(out) / "cells" / f"{key}.json"


def run_cell(fn: Callable[..., Rows], payload: Any, kwargs: Mapping[str, Any], cpus: float,
             has_payload: bool) -> tuple[Rows, float]:  # fmt: skip
    """Run one cell with ``max(1, int(cpus))`` torch threads; (rows, seconds)."""
    start = time.perf_counter()
    with torch_threads(max(1, int(cpus))):
        rows = fn(payload, **kwargs) if has_payload else fn(**kwargs)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise TypeError(f"a cell function must return a list of dicts, got {type(rows).__name__}")
    return rows, time.perf_counter() - start


def run_grid(
    cells: Sequence[Cell],
    out: str | Path,
    workers: int = 1,
    address: str | None = None,
    shared: Mapping[str, Any] | None = None,
    retries: int = 2,
    log: Callable[[str], None] = print,
) -> GridResult:
    """Run the cells not yet done under ``out`` (see the module docstring)."""
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise ValueError(f"cell keys must be unique, got duplicates in {keys}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")
    shared = dict(shared or {})
    missing = sorted({c.shared for c in cells if c.shared is not None} - set(shared))
    if missing:
        raise KeyError(f"cells name shared values {missing} that were not given")
    (Path(out) / "cells").mkdir(parents=True, exist_ok=True)
    done = {}
    for cell in cells:
        rows, stale = _finished(out, cell)
        if stale:
            log(f"[grid] {cell.key}: {stale}; running it again")
        elif rows is not None:
            done[cell.key] = rows
    todo = [c for c in cells if c.key not in done]
    start = time.perf_counter()
    progress = _Progress(len(cells), len(done), log)
    if todo and (workers > 1 or address is not None):
        failed, startup = _run_ray(todo, out, workers, address, shared, retries, done, progress)
    else:
        failed, startup = _run_here(todo, out, shared, done, progress), 0.0
    rows = [row for c in cells if c.key in done for row in done[c.key]]
    ran = [c.key for c in todo if c.key not in failed]
    skipped = [c.key for c in cells if c.key not in failed and c.key not in ran]
    return GridResult(rows, ran, skipped, failed, time.perf_counter() - start, startup)


def _finished(out: str | Path, cell: Cell) -> tuple[Rows | None, str | None]:
    """(the rows of a finished cell, None) — or (None, why it must run again), or (None, None)
    when it has not run."""
    path = cell_file(out, cell.key)
    if not path.exists():
        return None, None
    try:
        record = json.loads(path.read_text())
        rows, fingerprint = record["rows"], record.get("fingerprint")
    except (json.JSONDecodeError, KeyError, TypeError):
        return None, f"its row file {str(path)!r} is unreadable"
    if fingerprint != cell.fingerprint():
        return None, "its settings changed since it ran"
    missing = [name for name in cell.outputs if not Path(name).exists()]
    if missing:
        return None, f"its output {missing[0]!r} is gone"
    return rows, None


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def _finish(out, cell: Cell, rows: Rows, seconds: float, done: dict, progress) -> None:
    record = {"key": cell.key, "fingerprint": cell.fingerprint(), "rows": rows,
              "seconds": seconds}  # fmt: skip
    write_json(cell_file(out, cell.key), record, indent=1)
    done[cell.key] = rows
    progress.finished(cell.key, seconds)


def _run_here(todo, out, shared, done, progress) -> dict[str, str]:
    failed: dict[str, str] = {}
    for cell in todo:
        payload = shared.get(cell.shared) if cell.shared else None
        progress.started(1)
        try:
            rows, seconds = run_cell(
                cell.fn, payload, cell.kwargs, cell.cpus, cell.shared is not None
            )
        except Exception as exc:  # a failing cell is reported; the grid goes on
            failed[cell.key] = f"{type(exc).__name__}: {exc}"
            # a cell stopped at a checkpoint (``exc.resumable``) is logged as stopped (a re-run
            # resumes it)
            progress.failed(cell.key, failed[cell.key], getattr(exc, "resumable", False))
            continue
        _finish(out, cell, rows, seconds, done, progress)
    return failed


def _run_ray(todo, out, workers, address, shared, retries, done, progress):
    import ray
    from ray.exceptions import RayError, RayTaskError

    start = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        options = {"address": address} if address else {"num_cpus": workers}
        ray.init(include_dashboard=False, log_to_driver=False, **options)
    startup = time.perf_counter() - start
    log_line = f"[grid] Ray ready in {startup:.1f} s"
    progress.log(log_line + (f" (cluster {address})" if address else f" ({workers} workers)"))
    try:
        refs = {name: ray.put(value) for name, value in shared.items()}
        task = ray.remote(run_cell)
        pending = {}
        for cell in todo:
            payload = refs[cell.shared] if cell.shared else None
            ref = task.options(num_cpus=cell.cpus, num_gpus=cell.gpus, max_retries=retries,
                               retry_exceptions=False).remote(
                cell.fn, payload, dict(cell.kwargs), cell.cpus, cell.shared is not None
            )  # fmt: skip
            pending[ref] = cell
        progress.started(len(pending))
        failed: dict[str, str] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                cell = pending.pop(ref)
                try:
                    rows, seconds = ray.get(ref)
                except RayTaskError as exc:  # the cell's own code raised
                    cause = exc.as_instanceof_cause()
                    failed[cell.key] = f"{type(cause).__name__}: {str(cause).splitlines()[-1]}"
                    progress.failed(cell.key, failed[cell.key])
                    continue
                except RayError as exc:  # its worker died more than `retries` times
                    failed[cell.key] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                    progress.failed(cell.key, failed[cell.key])
                    continue
                _finish(out, cell, rows, seconds, done, progress)
        return failed, startup
    finally:
        if started_here:
            ray.shutdown()


class _Progress:
    """One readable line per event: cells done / running / failed, and an ETA."""

    def __init__(self, total: int, done: int, log: Callable[[str], None]) -> None:
        self.total, self.done, self.running, self.nfailed = total, done, 0, 0
        self.log, self.start, self.fresh = log, time.perf_counter(), 0
        if done:
            log(f"[grid] {done}/{total} cells already done (row files found); running the rest")

    def started(self, n: int) -> None:
        self.running += n

    def _line(self, what: str) -> None:
        left = self.total - self.done - self.nfailed
        eta = ""
        if self.fresh and left:
            eta = f", ETA {(time.perf_counter() - self.start) / self.fresh * left:.0f} s"
        self.log(f"[grid] {what} | {self.done}/{self.total} done, {self.running} pending, "
                 f"{self.nfailed} failed{eta}")  # fmt: skip

    def finished(self, key: str, seconds: float) -> None:
        self.done, self.running, self.fresh = self.done + 1, self.running - 1, self.fresh + 1
        self._line(f"{key} ({seconds:.1f} s)")

    def failed(self, key: str, error: str, resumable: bool = False) -> None:
        self.nfailed, self.running = self.nfailed + 1, self.running - 1
        self._line(f"{key} {'stopped (resumable)' if resumable else 'FAILED'}: {error}")
