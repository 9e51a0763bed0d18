"""Real DSRL files (no saferl metadata) are recognised by task and scored exactly as DSRL does.

The files here are written in DSRL's layout: the seven top-level arrays, flags as bool, no
attributes. DSRL's constants (``dsrl/infos.py`` of liuzuxin/DSRL) for HopperVelocity:
R_min 37.05154800415039, R_max 1911.396728515625, max cost 250, 1000 steps; κ 20/40/80.
"""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pytest

from saferl.cli import main
from saferl.data import (
    DSRL_TASKS,
    find_dsrl_task,
    load_dataset,
    make_env,
    save_dataset,
    trajectory_returns,
)
from saferl.offline import random_rollouts

HOPPER_FILE = "SafetyHopperVelocityGymnasium-v1-250-2240.hdf5"
R_MIN, R_MAX = 37.05154800415039, 1911.396728515625


@pytest.fixture(scope="module")
def hopper():
    """A small DSRL dict of the Hopper velocity task (its metadata is not written)."""
    return random_rollouts("SaferlPlanar-HopperVelocity-v1", transitions=200, max_steps=20,
                           seed=0)  # fmt: skip


def write_dsrl_file(path, data) -> None:
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            flag = key in ("terminals", "timeouts")
            f.create_dataset(key, data=value.astype(bool) if flag else value)


def load_quietly(path, **kwargs):
    """``load_dataset``, failing on any warning (a recognised file needs no fallback)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_dataset(path, **kwargs)


def assert_dsrl_hopper(meta) -> None:
    assert meta.env_id == "SaferlPlanar-HopperVelocity-v1"
    assert (meta.reward_min, meta.reward_max, meta.max_cost) == (R_MIN, R_MAX, 250.0)
    assert meta.cost_thresholds == [20.0, 40.0, 80.0]
    assert meta.max_episode_steps == 1000
    assert meta.extra["dsrl_task"] == "OfflineHopperVelocityGymnasium-v1"


def test_dsrl_file_recognised_by_its_name(tmp_path, hopper) -> None:
    data, _ = hopper
    path = tmp_path / HOPPER_FILE
    write_dsrl_file(path, data)
    loaded, meta = load_quietly(path)
    assert_dsrl_hopper(meta)
    assert meta.num_trajectories == len(trajectory_returns(data)[0])
    np.testing.assert_array_equal(loaded["rewards"], data["rewards"])
    assert meta.make_env().spec.id == "SaferlPlanar-HopperVelocity-v1"


@pytest.mark.parametrize(
    ("name", "task"),
    [
        ("OfflineHopperVelocityGymnasium-v1", "OfflineHopperVelocityGymnasium-v1"),
        ("OfflineHopperVelocity-v1", "OfflineHopperVelocityGymnasium-v1"),
        ("SafetyHopperVelocity-v1", "OfflineHopperVelocityGymnasium-v1"),
        ("HopperVelocity", "OfflineHopperVelocityGymnasium-v1"),
        ("/data/dsrl/" + HOPPER_FILE, "OfflineHopperVelocityGymnasium-v1"),
        ("SafetyAntVelocityGymnasium-v1-250-2249.hdf5", "OfflineAntVelocityGymnasium-v1"),
        ("OfflineHalfCheetahVelocityGymnasium-v1_density0.5", "OfflineHalfCheetahVelocity-v1"),
        ("offlineswimmervelocitygymnasium-v1", "OfflineSwimmerVelocityGymnasium-v1"),
        ("SafetyWalker2dVelocityGymnasium-v1-300-2729.h5", "OfflineWalker2dVelocityGymnasium-v1"),
        ("SafetyHopperVelocity-v0", None),  # Safety-Gymnasium v0: other thresholds
        ("SaferlPlanar-HopperVelocity-v1", None),  # ours, not a DSRL name
        ("OfflineCarCircle-v0", None),  # a DSRL task we do not have
        ("hopper", None),
    ],
)  # fmt: skip
def test_find_dsrl_task(name: str, task: str | None) -> None:
    found = find_dsrl_task(name)
    assert (found.name if found else None) == (task and find_dsrl_task(task).name)


@pytest.mark.parametrize("name", ["HopperVelocity.hdf5", "SafetyHopperVelocity.hdf5"])
def test_short_names_are_no_dsrl_file_names(name: str) -> None:
    """A file of one's own named after the task is not taken for DSRL's (only ``task=`` is)."""
    assert find_dsrl_task(name, file_name=True) is None
    assert find_dsrl_task(name).name == "OfflineHopperVelocityGymnasium-v1"
    assert find_dsrl_task(HOPPER_FILE, file_name=True).name == "OfflineHopperVelocityGymnasium-v1"


def test_every_dsrl_task_has_its_published_constants() -> None:
    """The table of ``dsrl/infos.py`` (MIN/MAX_EPISODE_REWARD, MAX_EPISODE_COST)."""
    expected = {
        "Ant": (6.1519012451171875, 2976.276611328125, 250.0, 27, 8),
        "HalfCheetah": (5.7509765625, 2806.93310546875, 250.0, 17, 6),
        "Hopper": (37.05154800415039, 1911.396728515625, 250.0, 11, 3),
        "Swimmer": (0.07114458084106445, 238.95831298828125, 200.0, 8, 2),
        "Walker2d": (18.668498992919922, 3418.223876953125, 300.0, 17, 6),
    }
    assert sorted(DSRL_TASKS) == sorted(f"Offline{r}VelocityGymnasium-v1" for r in expected)
    for robot, values in expected.items():
        t = DSRL_TASKS[f"Offline{robot}VelocityGymnasium-v1"]
        assert (t.reward_min, t.reward_max, t.max_cost, t.obs_dim, t.act_dim) == values
        assert t.env_id == f"SaferlPlanar-{robot}Velocity-v1"
        assert t.cost_thresholds == (20.0, 40.0, 80.0) and t.max_episode_steps == 1000
        assert find_dsrl_task(t.dataset_file) is t
        env = make_env(t.name)
        assert env.observation_space.shape == (t.obs_dim,)
        assert env.action_space.shape == (t.act_dim,)


@pytest.mark.parametrize("task", ["OfflineHopperVelocityGymnasium-v1", "HopperVelocity"])
def test_renamed_file_recognised_by_explicit_task(tmp_path, hopper, task: str) -> None:
    path = tmp_path / "my_hopper.hdf5"
    write_dsrl_file(path, hopper[0])
    _, meta = load_quietly(path, task=task)
    assert_dsrl_hopper(meta)


def test_explicit_task_overrides_our_metadata(tmp_path, hopper) -> None:
    path = tmp_path / "ours.hdf5"
    save_dataset(path, *hopper)
    assert load_quietly(path)[1].reward_min != R_MIN
    assert_dsrl_hopper(load_quietly(path, task="OfflineHopperVelocityGymnasium-v1")[1])


def test_unknown_task_is_an_error_listing_the_known_ones(tmp_path, hopper) -> None:
    path = tmp_path / HOPPER_FILE
    write_dsrl_file(path, hopper[0])
    with pytest.raises(KeyError, match="OfflineAntVelocityGymnasium-v1.*OfflineWalker2d"):
        load_dataset(path, task="OfflineHopperVelocityGymnasium-v0")
    with pytest.raises(ValueError, match="not both"):
        load_dataset(path, metadata=hopper[1], task="HopperVelocity")


def test_unknown_name_falls_back_to_the_data_with_a_warning(tmp_path, hopper) -> None:
    data, _ = hopper
    path = tmp_path / "hopper_runs.hdf5"
    write_dsrl_file(path, data)
    with pytest.warns(UserWarning, match=r"no DSRL task's.*pass task=.*OfflineHopperVelocity"):
        _, meta = load_dataset(path)
    returns, _ = trajectory_returns(data)
    assert meta.env_id == "hopper_runs"
    assert (meta.reward_min, meta.reward_max) == (returns.min(), returns.max())
    assert meta.cost_thresholds == [10.0, 20.0, 40.0]


def test_file_of_another_size_than_its_task_is_refused(tmp_path, hopper) -> None:
    data, _ = hopper
    wide = {k: np.concatenate([v, v[:, :6]], 1) if "observations" in k else v
            for k, v in data.items()}  # fmt: skip
    path = tmp_path / HOPPER_FILE
    write_dsrl_file(path, wide)
    with pytest.raises(ValueError, match=r"size \(17, 3\).*OfflineHopperVelocityGymnasium-v1"):
        load_dataset(path)


def _bench(path, out, *extra: str) -> int:
    argv = ["bench", str(path), "--methods", "bc_all", "--seeds", "0", "--episodes", "2",
            "--max-eval-steps", "15", "--bc-steps", "5", "--out", str(out), *extra]  # fmt: skip
    return main(argv)


def _assert_scored_as_dsrl(rows) -> None:
    """DSRL's ``get_normalized_score`` by hand: (R − R_min)/(R_max − R_min), C/κ (κ > 0)."""
    assert sorted(r["threshold"] for r in rows) == [20.0, 40.0, 80.0]
    for r in rows:
        assert r["reward"] == pytest.approx((r["raw_return"] - R_MIN) / (R_MAX - R_MIN), 1e-12)
        assert r["cost"] == pytest.approx(r["raw_cost"] / r["threshold"], rel=1e-12)
        assert r["safe"] == (r["cost"] <= 1.0)


def test_bench_scores_a_dsrl_file_as_dsrl_does(tmp_path, hopper) -> None:
    path = tmp_path / HOPPER_FILE
    write_dsrl_file(path, hopper[0])
    assert _bench(path, tmp_path / "by_name") == 0
    rows = json.loads((tmp_path / "by_name" / "bench_rows.json").read_text())["rows"]
    assert {r["task"] for r in rows} == {HOPPER_FILE.removesuffix(".hdf5")}
    _assert_scored_as_dsrl(rows)


def test_bench_task_flag(tmp_path, hopper, capsys) -> None:
    path = tmp_path / "renamed.hdf5"
    write_dsrl_file(path, hopper[0])
    assert _bench(path, tmp_path / "flag", "--task", "OfflineHopperVelocityGymnasium-v1") == 0
    _assert_scored_as_dsrl(json.loads((tmp_path / "flag" / "bench_rows.json").read_text())["rows"])
    assert _bench(path, tmp_path / "bad", "--task", "NoSuchVelocity") == 2
    assert "unknown DSRL task 'NoSuchVelocity'" in capsys.readouterr().err
    assert _bench(path, tmp_path / "two", "--task", "HopperVelocity", "AntVelocity") == 2
    assert "one per dataset" in capsys.readouterr().err
