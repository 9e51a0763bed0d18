"""The ``saferl`` CLI refuses bad input before any work: one line on stderr, exit status 2.

Every case here used to train first, lose data, print a traceback or silently do something
else. Budgets are tiny everywhere, so that even a command that wrongly starts working returns
quickly; the checks themselves take well under a second.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from saferl.cli import build_parser, main

PLANAR = "SaferlPlanar-HopperVelocity-v1"
TINY_COLLECT = ["--steps", "64", "--max-episode-steps", "20", "--checkpoints", "1", "--episodes",
                "1", "--max-per-cell", "1", "--grid-bins", "2", "--quiet"]  # fmt: skip
TINY_BENCH = ["--seeds", "0", "--episodes", "1", "--max-eval-steps", "5", "--fisor-steps",
              "2", "--fisor-actor-batch", "8", "--fisor-critic-batch", "8", "--fisor-width", "8",
              "--bc-steps", "2", "--bcq-steps", "2", "--bcq-batch", "8"]  # fmt: skip
TINY_OFFLINE = ["--steps", "3", "--episodes", "0"]
TINY_ONLINE = ["--suite", "Hopper++", "--agents", "hopper_3", "--policy", "mlp", "--steps", "20",
               "--learning-starts", "10", "--batch-size", "8", "--buffer-size", "50",
               "--eval-episodes", "1", "--eval-max-steps", "5"]  # fmt: skip
TINY_EP = ["--epochs", "1", "--hidden", "4", "--t1", "3", "--t2", "2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A valid two-trajectory dataset of the planar hopper (cost returns 2 and 6)."""
    from saferl.data import infer_metadata, save_dataset

    rng = np.random.default_rng(0)
    n = 40
    data = {
        "observations": rng.normal(size=(n, 11)).astype(np.float32),
        "next_observations": rng.normal(size=(n, 11)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 3)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "costs": np.zeros(n, np.float32),
        "terminals": np.zeros(n, np.float32),
        "timeouts": np.zeros(n, np.float32),
    }
    data["costs"][:2] = 1.0
    data["costs"][20:26] = 1.0
    data["timeouts"][[19, 39]] = 1.0
    meta = infer_metadata(data, env_id=PLANAR, cost_thresholds=[3.0, 10.0])
    path = tmp_path_factory.mktemp("data") / "tiny.hdf5"
    save_dataset(path, data, meta)
    return path


@pytest.fixture
def files(tmp_path, dataset) -> dict[str, Path]:
    """Bad inputs: a file where a folder is expected, random bytes and a truncated dataset."""
    (tmp_path / "file.txt").write_text("not a folder\n")
    junk = np.random.default_rng(1).integers(0, 256, 37, dtype=np.uint8)
    (tmp_path / "junk.hdf5").write_bytes(junk.tobytes())
    raw = dataset.read_bytes()
    (tmp_path / "truncated.hdf5").write_bytes(raw[: len(raw) // 2])
    return {
        "file": tmp_path / "file.txt",
        "under_file": tmp_path / "file.txt" / "sub",
        "junk": tmp_path / "junk.hdf5",
        "truncated": tmp_path / "truncated.hdf5",
        "missing": tmp_path / "missing.hdf5",
    }


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(result: tuple[int, str, str], *words: str) -> str:
    code, _, err = result
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert code == 2, err
    for word in words:
        assert word.lower() in err.lower(), err
    return lines[0]


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# --------------------------------------------------------------------------- 1. data loss


@pytest.mark.parametrize("name", ["d.json", "d.png", "d", "d.HDF"])
def test_collect_refuses_a_path_its_summary_or_plot_would_overwrite(capsys, tmp_path, name):
    out = tmp_path / name
    assert_user_error(run(capsys, "collect", PLANAR, "--out", out, *TINY_COLLECT), ".hdf5")
    assert not list(tmp_path.iterdir())  # nothing written


def test_collect_refuses_a_summary_path_that_is_the_dataset(capsys, tmp_path):
    """d.json is a symlink to d.hdf5: writing the summary would replace the dataset."""
    (tmp_path / "d.json").symlink_to(tmp_path / "d.hdf5")
    result = run(capsys, "collect", PLANAR, "--out", tmp_path / "d.hdf5", *TINY_COLLECT)
    assert_user_error(result, "summary", "dataset")
    assert not (tmp_path / "d.hdf5").exists()


# --------------------------------------------------------------------------- 2. output paths


def test_train_offline_refuses_a_file_as_its_out_folder(capsys, dataset, files):
    result = run(capsys, "train-offline", "bc_all", dataset, "--out", files["file"], *TINY_OFFLINE)
    assert_user_error(result, "file.txt", "folder")
    assert files["file"].read_text() == "not a folder\n"


@pytest.mark.parametrize("where", ["under_file", "proc"])
def test_train_offline_refuses_an_unwritable_out_folder(capsys, dataset, files, where):
    out = files["under_file"] if where == "under_file" else Path("/proc/saferl-test/ckpt")
    result = run(capsys, "train-offline", "bc_all", dataset, "--out", out, *TINY_OFFLINE)
    assert_user_error(result, "cannot write", str(out))


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_bench_refuses_a_bad_out_folder_before_training(capsys, dataset, files, where):
    result = run(capsys, "bench", dataset, "--out", files[where], *TINY_BENCH)
    assert_user_error(result, "--out")


def test_bench_refuses_a_prefix_with_a_folder(capsys, dataset, tmp_path):
    result = run(capsys, "bench", dataset, "--out", tmp_path, "--prefix", "a/b", *TINY_BENCH)
    assert_user_error(result, "--prefix")


def test_collect_refuses_an_unwritable_dataset_path(capsys, files):
    out = files["under_file"] / "d.hdf5"
    assert_user_error(run(capsys, "collect", PLANAR, "--out", out, *TINY_COLLECT), "cannot write")


@pytest.mark.parametrize("command", ["ep", "train-online"])
def test_ep_and_train_online_refuse_an_unwritable_out_folder(capsys, files, command):
    tiny = TINY_EP if command == "ep" else TINY_ONLINE
    result = run(capsys, command, *tiny, "--device", "cpu", "--out", files["under_file"])
    assert_user_error(result, "cannot write")


# ------------------------------------------------------------------ 3. errors after parsing


@pytest.mark.parametrize("kind", ["missing", "junk", "truncated"])
def test_train_offline_reports_a_missing_or_corrupt_dataset_in_one_line(capsys, tmp_path, files,
                                                                        kind):  # fmt: skip
    result = run(capsys, "train-offline", "bc_all", files[kind], "--out", tmp_path / "o",
                 *TINY_OFFLINE)  # fmt: skip
    assert_user_error(result, files[kind].name)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["missing", "junk", "truncated"])
def test_bench_checks_every_dataset_before_training(capsys, tmp_path, dataset, files, kind):
    """The bad file comes second: the first must not be trained on before it is read."""
    result = run(capsys, "bench", dataset, files[kind], "--out", tmp_path / "b", *TINY_BENCH)
    assert_user_error(result, files[kind].name)
    assert not (tmp_path / "b").exists()


def test_bench_refuses_two_datasets_with_one_name(capsys, tmp_path, dataset):
    twin = tmp_path / "other" / dataset.name
    twin.parent.mkdir()
    twin.write_bytes(dataset.read_bytes())
    result = run(capsys, "bench", dataset, twin, "--out", tmp_path / "b", *TINY_BENCH)
    assert_user_error(result, "same name")


def test_bc_safe_refuses_a_threshold_no_trajectory_meets(capsys, tmp_path, dataset):
    result = run(capsys, "train-offline", "bc_safe", dataset, "--out", tmp_path / "o",
                 "--threshold", "1", *TINY_OFFLINE)  # fmt: skip
    assert_user_error(result, "cost return")


@pytest.mark.parametrize("env_id", ["Nope-v0", "SaferlPlanar-HoperVelocity-v1"])
def test_collect_reports_an_unknown_env_id_in_one_line(capsys, tmp_path, env_id):
    result = run(capsys, "collect", env_id, "--out", tmp_path / "d.hdf5", *TINY_COLLECT)
    assert_user_error(result, "unknown env id", env_id)


def test_demo_reports_an_unknown_env_id_in_one_line(capsys):
    result = run(capsys, "demo", "--env-id", "Saferl3D-Nope-v0", "--quick", "--stages", "rollout")
    assert_user_error(result, "unknown env id")


def test_train_offline_refuses_a_dataset_whose_env_does_not_exist(capsys, tmp_path, dataset):
    from saferl.data import load_dataset, save_dataset

    data, meta = load_dataset(dataset)
    meta.env_id = "Saferl3D-Gone-v0"
    path = tmp_path / "gone.hdf5"
    save_dataset(path, data, meta)
    result = run(capsys, "train-offline", "bc_all", path, "--out", tmp_path / "o",
                 "--steps", "3", "--episodes", "1")  # fmt: skip
    assert_user_error(result, "Saferl3D-Gone-v0")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["bench", "train-offline", "collect"])
def test_threads_must_be_positive(capsys, tmp_path, dataset, command):
    argv = {
        "bench": ["bench", dataset, "--out", tmp_path / "b", *TINY_BENCH],
        "train-offline": ["train-offline", "bc_all", dataset, "--out", tmp_path / "o",
                          *TINY_OFFLINE],
        "collect": ["collect", PLANAR, "--out", tmp_path / "d.hdf5", *TINY_COLLECT],
    }[command]  # fmt: skip
    assert_user_error(run(capsys, *argv, "--threads", "0"), "--threads")


@pytest.mark.parametrize("net", ["{width: 8}", "[8]", "8", '{"no_such_field": 8}'])
def test_train_online_refuses_a_bad_net_config(capsys, net):
    result = run(capsys, "train-online", *TINY_ONLINE, "--device", "cpu", "--net-config", net)
    assert_user_error(result)


def test_collect_refuses_max_limbs_on_a_planar_task(capsys, tmp_path):
    result = run(capsys, "collect", PLANAR, "--max-limbs", "2", "--out", tmp_path / "d.hdf5",
                 *TINY_COLLECT)  # fmt: skip
    assert_user_error(result, "--max-limbs")


def test_collect_refuses_max_limbs_below_the_agents_limbs(capsys, tmp_path):
    result = run(capsys, "collect", "Saferl3D-Hopper3-v0", "--max-limbs", "2",
                 "--out", tmp_path / "d.hdf5", *TINY_COLLECT)  # fmt: skip
    assert_user_error(result, "--max-limbs")


def test_train_offline_refuses_negative_episodes(capsys, tmp_path, dataset):
    result = run(capsys, "train-offline", "bc_all", dataset, "--out", tmp_path / "o",
                 "--steps", "3", "--episodes", "-3")  # fmt: skip
    assert_user_error(result, "--episodes")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["ep", "--epochs", "0"],
        ["ep", "--activation", "relu", "--n-points", "2"],
        ["ep", "--activation", "no_such"],
        ["train-online", "--suite", "Nope++"],
        ["train-online", "--agents", "hopper_99"],
        ["demo", "--episodes", "0"],
        ["collect", PLANAR, "--noise", "-1"],
        ["bench", "x.hdf5", "--thresholds", "nan"],
    ],
    ids=lambda a: " ".join(a),
)
def test_other_bad_arguments_are_one_line(capsys, argv):
    assert_user_error(run(capsys, *argv))


# --------------------------------------------------------------------------- 4. --device cuda


@pytest.mark.parametrize("command", ["bench", "train-offline", "ep", "train-online"])
def test_device_cuda_without_cuda_is_a_user_error(capsys, tmp_path, dataset, no_cuda, command):
    argv = {
        "bench": ["bench", dataset, "--out", tmp_path / "b", *TINY_BENCH],
        "train-offline": ["train-offline", "bc_all", dataset, "--out", tmp_path / "o",
                          *TINY_OFFLINE],
        "ep": ["ep", *TINY_EP],
        "train-online": ["train-online", *TINY_ONLINE],
    }[command]  # fmt: skip
    assert_user_error(run(capsys, *argv, "--device", "cuda"), "CUDA")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- 5. help


def _commands() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def _shown(default) -> bool:
    """Whether help must show this default (None/False/empty mean "unset", said in the text)."""
    if default is None or default is False or default is argparse.SUPPRESS:
        return False
    return not (isinstance(default, (str, list, tuple)) and len(default) == 0)


def test_every_command_has_a_description_and_a_help_line(capsys):
    commands = _commands()
    assert {"ep", "demo", "bench", "collect", "train-offline", "train-online"} <= set(commands)
    for name, sub in commands.items():
        assert sub.description, f"`saferl {name} --help` has no description"
    assert run(capsys, "ep", "--help")[0] == 0
    code, out, _ = run(capsys, "ep", "--help")
    assert "equilibrium propagation" in out.split("options:")[0].lower()
    code, out, _ = run(capsys, "demo", "--help")
    assert code == 0 and "certify" in out.split("options:")[0]
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in ("ep", "demo"):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(name + " "))
        assert len(line.split()) > 2, f"`saferl --help` lists {name} without a description"


def test_help_shows_every_default(capsys):
    code, out, _ = run(capsys, "bench", "--help")
    assert code == 0 and "(default: 20)" in out and "(default: 0 1 2)" in out
    for name, sub in _commands().items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if not action.option_strings or not _shown(action.default):
                continue
            text = formatter._format_action(action)
            assert "default" in text, f"`saferl {name} --help` hides the default of {action.dest}"


def test_no_command_is_a_one_line_error(capsys):
    assert_user_error(run(capsys), "command", "bench")
    assert_user_error(run(capsys, "no-such-command"), "no-such-command")


def test_the_cli_knows_every_offline_method():
    from saferl.commands import bench, train_offline
    from saferl.offline import METHODS

    assert set(bench.METHODS) == set(train_offline.METHODS) == set(METHODS)


# --------------------------------------------------------------------------- internal errors


def test_a_bug_is_one_line_and_a_traceback_only_with_debug(capsys, monkeypatch):
    import envs

    def broken():
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(envs, "registered_ids", broken)
    code, _, err = run(capsys, "envs")
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "internal error" in err and "--debug" in err and "something inside broke" in err
    code, _, err = run(capsys, "--debug", "envs")
    assert code == 1 and "Traceback" in err and "something inside broke" in err


def test_debug_adds_the_traceback_to_a_user_error(capsys, tmp_path):
    code, _, err = run(capsys, "--debug", "train-offline", "bc_all", tmp_path / "none.hdf5",
                       "--out", tmp_path / "o")  # fmt: skip
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].endswith("exist")


def test_the_console_command_prints_one_line(tmp_path):
    """The real process: exit status 2 and one line, no traceback (``python -m saferl.cli``)."""
    proc = subprocess.run(
        [sys.executable, "-m", "saferl.cli", "train-offline", "bc_all", "nope.hdf5", "--out", "o"],
        cwd=tmp_path, capture_output=True, text=True, env=os.environ.copy(), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "saferl train-offline: error: dataset 'nope.hdf5' does not exist"
    ]


# --------------------------------------------------------------------------- process state


def test_train_offline_leaves_the_thread_count_as_it_was(capsys, tmp_path, dataset):
    before = torch.get_num_threads()
    threads = 2 if before != 2 else 3
    code, _, err = run(capsys, "train-offline", "bc_all", dataset, "--out", tmp_path / "o",
                       "--threads", threads, *TINY_OFFLINE)  # fmt: skip
    assert code == 0, err
    assert torch.get_num_threads() == before
    assert (tmp_path / "o" / "metrics.json").exists()


def test_demo_leaves_the_global_rng_as_it_was(capsys):
    state = np.random.get_state()[1].copy()
    torch_state = torch.get_rng_state().clone()
    code, _, err = run(capsys, "demo", "--quick", "--stages", "rollout", "--episodes", "1",
                       "--seed", "123")  # fmt: skip
    assert code == 0, err
    assert np.array_equal(np.random.get_state()[1], state)
    assert torch.equal(torch.get_rng_state(), torch_state)
