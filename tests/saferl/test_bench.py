"""``saferl bench`` / ``saferl train-offline`` driven through the real CLI at tiny budgets."""

from __future__ import annotations

import json

import pytest

from saferl.cli import main
from saferl.offline import BC, markdown_table, random_rollouts


@pytest.fixture(scope="module")
def dataset_file(tmp_path_factory):
    from saferl.data import save_dataset

    data, meta = random_rollouts(transitions=400, max_steps=40, seed=3)
    meta.cost_thresholds = [2.0, 5.0]
    path = tmp_path_factory.mktemp("data") / "tiny-hopper.hdf5"
    save_dataset(path, data, meta)
    return path


def test_bench_cli_writes_table_plot_and_rows(dataset_file, tmp_path):
    out = tmp_path / "bench"
    argv = ["bench", str(dataset_file), "--seeds", "0", "--episodes", "2",
            "--max-eval-steps", "8", "--fisor-steps", "5", "--fisor-actor-batch", "32",
            "--fisor-critic-batch", "32", "--fisor-width", "16", "--bc-steps", "5",
            "--bcq-steps", "3", "--bcq-batch", "32", "--cpq-steps", "3", "--cpq-batch", "32",
            "--out", str(out), "--prefix", "t"]  # fmt: skip
    assert main(argv) == 0
    table = (out / "t_table.md").read_text()
    assert table.splitlines()[0] == "| task | BC-All | BC-Safe | BCQ-Lag | CPQ | FISOR |"
    assert "tiny-hopper" in table
    assert (out / "t_scatter.png").stat().st_size > 1000
    rows = json.loads((out / "t_rows.json").read_text())["rows"]
    # threshold-free methods: one training, scored at both κ; the others: one per κ
    assert len(rows) == 5 * 2
    assert {r["method"] for r in rows} == {"bc_all", "bc_safe", "bcq_lag", "cpq", "fisor"}
    assert {r["threshold"] for r in rows} == {2.0, 5.0}
    for r in rows:
        assert r["safe"] == (r["cost"] <= 1.0)
        # each row carries its training's last and largest logged statistics
        assert set(r["train_final"]) == set(r["train_max"]) and r["train_final"]
        assert all(r["train_max"][k] >= r["train_final"][k] for k in r["train_final"])
    bcq = [r for r in rows if r["method"] == "bcq_lag"]
    assert all("values/lambda" in r["train_max"] for r in bcq)


def test_training_stats_keeps_the_last_row_and_each_maximum():
    from saferl.offline.bench import training_stats

    log = [{"values/lambda": 0.0, "losses/q": 3.0, "step": 1},
           {"values/lambda": 0.4, "losses/q": 1.0, "step": 2},
           {"values/lambda": 0.1, "losses/q": 2.0, "step": 3}]  # fmt: skip
    assert training_stats(log) == {
        "train_final": {"values/lambda": 0.1, "losses/q": 2.0},
        "train_max": {"values/lambda": 0.4, "losses/q": 3.0},
    }
    assert training_stats([]) == {"train_final": {}, "train_max": {}}


def test_train_offline_cli_saves_a_loadable_checkpoint(dataset_file, tmp_path):
    ckpt = tmp_path / "bc"
    argv = ["train-offline", "bc_safe", str(dataset_file), "--out", str(ckpt),
            "--steps", "5", "--episodes", "0"]  # fmt: skip
    assert main(argv) == 0
    agent = BC.load(ckpt, device="cpu")
    assert agent.config.cost_limit == 2.0 and agent.config.steps == 5
    assert json.loads((ckpt / "metrics.json").read_text())["method"] == "bc_safe"


def test_markdown_table_bolds_safe_cells():
    summary = [
        {"task": "A", "method": "fisor", "reward": 0.5, "cost": 0.2, "safe": True},
        {"task": "A", "method": "bc_all", "reward": 0.9, "cost": 3.0, "safe": False},
    ]
    lines = markdown_table(summary).splitlines()
    assert lines[0] == "| task | BC-All | FISOR |"
    assert lines[2] == "| A | 0.90/3.00 | **0.50/0.20** |"


def test_bench_grid_reruns_cells_whose_dataset_changed(tmp_path):
    """Finished cells are kept while their dataset is unchanged and run again once it changed
    (the dataset's digest is part of each cell's fingerprint)."""
    from saferl.offline import BCConfig, BenchConfig, run_bench

    data, meta = random_rollouts(transitions=200, max_steps=20, seed=5)
    meta.cost_thresholds = [2.0]
    config = BenchConfig(methods=("bc_all",), seeds=(0,), episodes=1, max_eval_steps=4,
                         configs={"bc_all": BCConfig(steps=2)})  # fmt: skip
    out, log = tmp_path / "grid", (lambda _: None)
    first = run_bench([("t", data, meta)], config, out, log=log)
    assert first.ran == ["t__bc_all__seed0"]
    again = run_bench([("t", data, meta)], config, out, log=log)
    assert again.ran == [] and again.rows == first.rows
    changed = {**data, "rewards": data["rewards"] + 1.0}
    third = run_bench([("t", changed, meta)], config, out, log=log)
    assert third.ran == ["t__bc_all__seed0"]
