"""Grids on a local Ray (2 CPUs) and in-process: same rows, a killed worker loses no row, a
finished grid does no work on a re-run, a failing cell is reported and the rest complete."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from saferl.grid import cell_file
from saferl.offline import BenchConfig, make_config, random_rollouts
from saferl.offline.bench import bench_cells, run_bench

ray = pytest.importorskip("ray", reason="Ray is the scale-out engine (pip install 'saferl[ray]')")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs) for the module; run_grid uses it and leaves it running."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tasks():
    out = []
    for name, seed in (("hopper-a", 1), ("hopper-b", 2)):
        data, meta = random_rollouts(transitions=200, max_steps=30, seed=seed)
        meta.cost_thresholds = [5.0, 50.0]
        out.append((name, data, meta))
    return out


def tiny(**kw) -> BenchConfig:
    configs = {"bc_all": {"steps": 20, "batch_size": 32, "hidden": (16,)},
               "bc_safe": {"steps": 20, "batch_size": 32, "hidden": (16,)},
               "fisor": {"steps": 150, "actor_batch_size": 32, "critic_batch_size": 32,
                         "actor_width": 16, "critic_hidden": (16,), "log_every": 50}}  # fmt: skip
    base = {"methods": ("bc_all", "bc_safe"), "seeds": (0, 1), "episodes": 2,
            "max_eval_steps": 10, "configs": configs, "device": "cpu"}  # fmt: skip
    return BenchConfig(**{**base, **kw})


def comparable(rows):
    return sorted((r["task"], r["method"], r["seed"], r["threshold"], r["reward"], r["cost"],
                   r["raw_return"]) for r in rows)  # fmt: skip


def test_ray_grid_gives_the_in_process_rows(tasks, tmp_path, local_ray):
    here = run_bench(tasks, tiny(), tmp_path / "here", workers=1, log=lambda _: None)
    there = run_bench(tasks, tiny(), tmp_path / "ray", workers=2, log=lambda _: None)
    # 2 tasks × (bc_all: 2 seeds, 1 cell each, scored at 2 κ; bc_safe: 2 seeds × 2 κ)
    assert len(here.rows) == len(there.rows) == 2 * (2 * 2 + 2 * 2)
    assert comparable(here.rows) == comparable(there.rows)
    assert not here.failed and not there.failed and len(there.ran) == 12


def test_a_finished_grid_does_no_work_on_a_rerun(tasks, tmp_path, monkeypatch):
    first = run_bench(tasks, tiny(), tmp_path, log=lambda _: None)
    import saferl.offline.bench as bench

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished cell ran again")

    monkeypatch.setattr(bench, "make_config", forbidden)  # every cell starts with it
    again = run_bench(tasks, tiny(), tmp_path, log=lambda _: None)
    assert again.ran == [] and len(again.skipped) == 12 and not again.failed
    assert comparable(again.rows) == comparable(first.rows)
    # other settings for one method: just its cells run again
    monkeypatch.setattr(bench, "make_config", make_config)
    configs = {**tiny().configs, "bc_all": {"steps": 21, "batch_size": 32, "hidden": (16,)}}
    changed = run_bench(tasks, tiny(configs=configs), tmp_path, log=lambda _: None)
    assert sorted(changed.ran) == sorted(c.key for c in bench_cells(tasks, tiny())[0]
                                         if "bc_all" in c.key)  # fmt: skip


def test_a_failing_cell_is_reported_and_the_rest_complete(tasks, tmp_path, local_ray):
    from dataclasses import replace

    name, data, meta = tasks[0]
    broken = ("broken", data, replace(meta, env_id="SaferlPlanar-NoSuchRobotVelocity-v0"))
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        grid = run_bench([*tasks, broken], tiny(), out, workers=workers, log=lambda _: None)
        assert sorted(grid.failed) == sorted(c.key for c in bench_cells([broken], tiny())[0])
        assert all("unknown env id" in e for e in grid.failed.values())
        assert len(grid.ran) == 12 and len(grid.rows) == 2 * 8  # the two good tasks, whole
        assert not any(cell_file(out, key).exists() for key in grid.failed)


def _ray_cell_workers() -> list[int]:
    """PIDs of Ray workers running a grid cell (Ray sets their title to ray::run_cell)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::run_cell"):
                pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's workers through /proc")
def test_a_killed_worker_loses_no_row(tasks, tmp_path, local_ray):
    config = tiny(methods=("fisor",), seeds=(0, 1))  # 4 cells of a few seconds each
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(
            grid=run_bench(tasks, config, tmp_path, workers=2, log=lambda _: None)
        )  # fmt: skip
    )
    thread.start()
    killed, deadline = None, time.time() + 60
    while killed is None and time.time() < deadline and thread.is_alive():
        pids = _ray_cell_workers()
        if pids:
            time.sleep(0.3)  # let it get into the cell's training
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.05)
    thread.join(timeout=180)
    assert killed is not None, "no worker was seen running a cell"
    grid = result["grid"]
    assert not grid.failed and len(grid.ran) == 4
    assert len(grid.rows) == 4 * 2  # every (task, seed) cell scored at both κ
