"""``saferl collect TASK...`` and ``saferl train-online --seeds ...`` run on the grid engine: the
same results in-process (``--workers 1``) and as Ray tasks (``--workers 2``), a re-run of a
finished grid does no work, a changed setting or a lost file re-runs just that cell, and every
output path is checked before any work. Tiny budgets: the whole file runs in well under a minute.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from saferl.cli import main
from saferl.common.runtime import torch_threads
from saferl.data import REQUIRED_KEYS, load_dataset

TASKS = ["SaferlPlanar-SwimmerVelocity-v1", "SaferlPlanar-HopperVelocity-v1"]
TINY_COLLECT = ["--steps", "64", "--checkpoints", "2", "--episodes", "1",
                "--max-episode-steps", "20", "--quiet"]  # fmt: skip
TINY_ONLINE = ["--suite", "Hopper++", "--agents", "hopper_3", "--policy", "mlp",
               "--net-config", '{"hidden": [16]}', "--steps", "60", "--learning-starts", "40",
               "--batch-size", "16", "--eval-episodes", "1", "--eval-max-steps", "20",
               "--buffer-size", "100", "--device", "cpu"]  # fmt: skip
DATASET_FILES = (".hdf5", ".json", ".png")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) for the module: the commands' grids use it and leave it running,
    so its start-up and its workers' imports are paid once."""
    ray = pytest.importorskip(
        "ray", reason="Ray is the scale-out engine (pip install 'saferl[ray]')"
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def mtimes(folder: Path, tasks=TASKS) -> dict[str, int]:
    return {
        f"{t}{s}": (folder / f"{t}{s}").stat().st_mtime_ns for t in tasks for s in DATASET_FILES
    }


# --------------------------------------------------------------------------- collect


def test_collect_runs_two_tasks_alike_in_process_and_on_ray_and_resumes(capsys, tmp_path,
                                                                        local_ray):  # fmt: skip
    results = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        code, stdout, err = run(capsys, "collect", *TASKS, "--out", out, "--workers", workers,
                                *TINY_COLLECT)  # fmt: skip
        assert code == 0, err
        assert "2 cells ran, 0 were already done, 0 failed" in stdout
        assert sorted(p.name for p in (out / "collect_grid" / "cells").iterdir()) == sorted(
            f"{t}.json" for t in TASKS
        )
        results[workers] = {t: load_dataset(out / f"{t}.hdf5") for t in TASKS}
        for t in TASKS:
            assert (out / f"{t}.png").stat().st_size > 1000
            summary = json.loads((out / f"{t}.json").read_text())
            assert summary["metadata"]["env_id"] == t
    for t in TASKS:  # same seeds, same arrays, whichever process collected them
        (data1, meta1), (data2, meta2) = results[1][t], results[2][t]
        assert meta1 == meta2 and meta1.env_id == t and meta1.max_episode_steps == 20
        for key in REQUIRED_KEYS:
            np.testing.assert_array_equal(data1[key], data2[key])
    assert not np.array_equal(results[1][TASKS[0]][0]["rewards"][:5],
                              results[1][TASKS[1]][0]["rewards"][:5])  # fmt: skip

    # a re-run of the finished collection does no work: every dataset file is left untouched
    out = tmp_path / "w2"
    before = mtimes(out)
    code, stdout, err = run(capsys, "collect", *TASKS, "--out", out, "--workers", 2,
                            *TINY_COLLECT)  # fmt: skip
    assert code == 0, err
    assert "0 cells ran, 2 were already done, 0 failed" in stdout
    assert stdout.count("already collected:") == 2
    assert mtimes(out) == before


def test_collect_recollects_a_task_whose_files_or_settings_changed(capsys, tmp_path):
    """One task (``--out`` a dataset path, as before the grid): the grid folder lies beside the
    dataset; a lost summary or a new seed collects the task again, nothing else does."""
    out = tmp_path / "d" / "swimmer.hdf5"
    argv = ["collect", TASKS[0], "--out", out, *TINY_COLLECT]
    assert run(capsys, *argv)[0] == 0
    assert (tmp_path / "d" / "collect_grid" / "cells" / f"{TASKS[0]}.json").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        ["collect_grid", "swimmer.hdf5", "swimmer.json", "swimmer.png"]
    )
    first = load_dataset(out)[0]["observations"]
    stamp = out.stat().st_mtime_ns

    code, stdout, _ = run(capsys, *argv)
    assert code == 0 and "0 cells ran, 1 were already done" in stdout
    assert out.stat().st_mtime_ns == stamp

    out.with_suffix(".json").unlink()  # a lost file: collected again (same seed, same data)
    code, stdout, _ = run(capsys, *argv)
    assert code == 0 and "1 cells ran, 0 were already done" in stdout
    assert out.with_suffix(".json").exists()
    np.testing.assert_array_equal(load_dataset(out)[0]["observations"], first)

    code, stdout, _ = run(capsys, *argv, "--seed", "5")  # other settings: collected again
    assert code == 0 and "1 cells ran, 0 were already done" in stdout
    assert load_dataset(out)[1].seed == 5


def test_a_failing_task_is_reported_and_the_other_is_collected(capsys, tmp_path, monkeypatch):
    from saferl.data import collection

    real = collection.collect

    def collect(config, **kwargs):
        if config.env_id == TASKS[0]:
            raise RuntimeError("the simulator broke")
        return real(config, **kwargs)

    monkeypatch.setattr(collection, "collect", collect)
    code, stdout, err = run(capsys, "collect", *TASKS, "--out", tmp_path, *TINY_COLLECT)
    assert code == 1 and "1 cells ran, 0 were already done, 1 failed" in stdout
    assert f"failed task {TASKS[0]}: RuntimeError: the simulator broke" in err
    assert (tmp_path / f"{TASKS[1]}.hdf5").exists() and not (tmp_path / f"{TASKS[0]}.hdf5").exists()
    monkeypatch.setattr(collection, "collect", real)  # a re-run collects just the failed task
    code, stdout, err = run(capsys, "collect", *TASKS, "--out", tmp_path, *TINY_COLLECT)
    assert code == 0 and "1 cells ran, 1 were already done, 0 failed" in stdout, err
    assert (tmp_path / f"{TASKS[0]}.hdf5").exists()


def assert_user_error(result: tuple[int, str, str], *words: str) -> None:
    code, _, err = result
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word.lower() in err.lower(), err


@pytest.mark.parametrize(
    ("tasks", "out", "words"),
    [
        (TASKS, "all.hdf5", ["folder"]),
        ([TASKS[0], TASKS[0]], "d", ["once"]),
        ([TASKS[0]], "d", [".hdf5"]),  # one task: --out is the dataset path, as before
        ([TASKS[0], "Nope-v0"], "d", ["Nope-v0"]),
    ],
    ids=["several-tasks-one-file", "a-task-twice", "one-task-a-folder", "an-unknown-task"],
)
def test_collect_checks_every_task_and_path_before_any_work(capsys, tmp_path, tasks, out, words):
    assert_user_error(run(capsys, "collect", *tasks, "--out", tmp_path / out, *TINY_COLLECT),
                      *words)  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_collect_refuses_a_grid_folder_that_is_a_file(capsys, tmp_path):
    (tmp_path / "collect_grid").write_text("not a folder\n")
    result = run(capsys, "collect", *TASKS, "--out", tmp_path, *TINY_COLLECT)
    assert_user_error(result, "grid folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["collect_grid"]


# --------------------------------------------------------------------------- train-online


def seed_rows(folder: Path) -> list[tuple]:
    rows = json.loads((folder / "seeds_summary.json").read_text())["rows"]
    keys = ("seed", "agent", "split", "return_mean", "return_sd", "cost_mean")
    return sorted(tuple(r[k] for k in keys) for r in rows)


def test_train_online_seeds_give_the_same_rows_in_process_and_on_ray(capsys, tmp_path,
                                                                     local_ray):  # fmt: skip
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        code, stdout, err = run(capsys, "train-online", *TINY_ONLINE, "--seeds", "0", "1",
                                "--workers", workers, "--out", out)  # fmt: skip
        assert code == 0, err
        assert "2 cells ran, 0 were already done, 0 failed" in stdout
        assert "mean ± sd over seeds" in stdout
        for seed in (0, 1):
            assert (out / f"seed{seed}" / "model.safetensors").exists()
            assert (out / "seeds_grid" / "cells" / f"seed{seed}.json").exists()
    rows = seed_rows(tmp_path / "w1")
    assert rows == seed_rows(tmp_path / "w2")
    # one row per (seed, evaluated agent): hopper_3 trained, hopper_4b held out
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (0, "hopper_3", "train"), (0, "hopper_4b", "heldout"),
        (1, "hopper_3", "train"), (1, "hopper_4b", "heldout"),
    ]  # fmt: skip
    summary = json.loads((tmp_path / "w1" / "seeds_summary.json").read_text())["summary"]
    train = next(s for s in summary if s["agent"] == "hopper_3")
    returns = [r[3] for r in rows if r[1] == "hopper_3"]
    assert train["seeds"] == 2 and train["return_mean"] == pytest.approx(np.mean(returns))
    assert train["return_sd"] == pytest.approx(np.std(returns))

    # --seed N is the one-seed run of --seeds ... N (same threads, same numbers)
    with torch_threads(1):
        code, _, err = run(capsys, "train-online", *TINY_ONLINE, "--seed", "1",
                           "--out", tmp_path / "one")  # fmt: skip
    assert code == 0, err
    evaluation = json.loads((tmp_path / "one" / "metrics.json").read_text())["evaluation"]
    assert [(1, a, s["split"], s["return_mean"], s["return_sd"], s["cost_mean"])
            for a, s in evaluation.items()] == [r for r in rows if r[0] == 1]  # fmt: skip

    # a re-run trains nothing; one more seed trains just that seed
    code, stdout, _ = run(capsys, "train-online", *TINY_ONLINE, "--seeds", "0", "1", "2",
                          "--out", tmp_path / "w1")  # fmt: skip
    assert code == 0 and "1 cells ran, 2 were already done" in stdout
    assert len(seed_rows(tmp_path / "w1")) == 6


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--seed", "1", "--seeds", "2"], ["not allowed"]),
        (["--workers", "2"], ["--seeds"]),
        (["--seeds", "1", "1"], ["once"]),
    ],
    ids=["seed-and-seeds", "workers-without-seeds", "a-seed-twice"],
)
def test_train_online_seed_flags_are_checked_before_any_work(capsys, tmp_path, extra, words):
    result = run(capsys, "train-online", *TINY_ONLINE, *extra, "--out", tmp_path / "o")
    assert_user_error(result, *words)
    assert not list(tmp_path.iterdir())
