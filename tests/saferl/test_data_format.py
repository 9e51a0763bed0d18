"""DSRL-format save/load: round trip, validation naming the key, trajectory helpers."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saferl.data import (
    REQUIRED_KEYS,
    DatasetMetadata,
    infer_metadata,
    load_dataset,
    save_dataset,
    select_trajectories,
    split_trajectories,
    trajectory_returns,
)


def make_data(lengths=(3, 5, 2), obs_dim=4, act_dim=2, seed=0, last_terminal=True):
    """A small dataset with trajectories of the given lengths (the last ends by terminal)."""
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    terminals = np.zeros(n, np.float32)
    timeouts = np.zeros(n, np.float32)
    ends = np.cumsum(lengths) - 1
    timeouts[ends[:-1]] = 1.0
    (terminals if last_terminal else timeouts)[ends[-1]] = 1.0
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "next_observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "costs": rng.integers(0, 2, size=n).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }


def make_meta(**kw):
    values = dict(
        env_id="SaferlPlanar-HopperVelocity-v1",
        max_episode_steps=5,
        reward_min=-1.0,
        reward_max=2.0,
        max_cost=4.0,
        cost_thresholds=[1.0, 2.0],
        collection="test",
    )
    values.update(kw)
    return DatasetMetadata(**values)


def test_round_trip(tmp_path):
    data = make_data()
    path = tmp_path / "sub" / "d.hdf5"
    save_dataset(path, data, make_meta(seed=3, env_kwargs={"max_limbs": 3}))
    loaded, meta = load_dataset(path)
    assert set(loaded) == set(REQUIRED_KEYS)
    for k in REQUIRED_KEYS:
        assert loaded[k].dtype == np.float32
        np.testing.assert_array_equal(loaded[k], data[k])
    assert meta.env_id == "SaferlPlanar-HopperVelocity-v1"
    assert (meta.obs_dim, meta.act_dim, meta.num_trajectories) == (4, 2, 3)
    assert meta.cost_thresholds == [1.0, 2.0] and meta.seed == 3
    assert meta.env_kwargs == {"max_limbs": 3}
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_missing_key_named(tmp_path, key):
    data = make_data()
    del data[key]
    with pytest.raises(KeyError, match=key):
        save_dataset(tmp_path / "d.hdf5", data, make_meta())
    assert not (tmp_path / "d.hdf5").exists()


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_nan_named(tmp_path, key):
    data = make_data()
    data[key] = data[key].copy()
    data[key].flat[1] = np.nan
    with pytest.raises(ValueError, match=f"'{key}'.*NaN"):
        save_dataset(tmp_path / "d.hdf5", data, make_meta())


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_length_mismatch_named(tmp_path, key):
    data = make_data()
    data[key] = data[key][:-1]
    with pytest.raises(ValueError, match=key if key != "rewards" else "length"):
        save_dataset(tmp_path / "d.hdf5", data, make_meta())


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_dtype_mismatch_named(tmp_path, key):
    data = make_data()
    data[key] = data[key].astype(np.float64)
    with pytest.raises(TypeError, match=f"'{key}'.*float32"):
        save_dataset(tmp_path / "d.hdf5", data, make_meta())


def test_shape_errors(tmp_path):
    data = make_data()
    data["rewards"] = data["rewards"][:, None]
    with pytest.raises(ValueError, match="'rewards'.*\\(N,\\)"):
        save_dataset(tmp_path / "d.hdf5", data, make_meta())
    data = make_data()
    data["next_observations"] = data["next_observations"][:, :3]
    with pytest.raises(ValueError, match="next_observations"):
        save_dataset(tmp_path / "d.hdf5", data, make_meta())
    data = make_data()
    data["terminals"][0] = 0.5
    with pytest.raises(ValueError, match="terminals"):
        save_dataset(tmp_path / "d.hdf5", data, make_meta())
    data = make_data()
    data["extra"] = data["rewards"]
    with pytest.raises(KeyError, match="extra"):
        save_dataset(tmp_path / "d.hdf5", data, make_meta())


def test_metadata_errors(tmp_path):
    data = make_data()
    with pytest.raises(ValueError, match="reward_max"):
        save_dataset(tmp_path / "d.hdf5", data, make_meta(reward_max=-5.0))
    with pytest.raises(ValueError, match="obs_dim"):
        save_dataset(tmp_path / "d.hdf5", data, make_meta(obs_dim=7))
    with pytest.raises(ValueError, match="max_episode_steps"):
        save_dataset(tmp_path / "d.hdf5", data, make_meta(max_episode_steps=0))
    with pytest.raises(TypeError, match="DatasetMetadata"):
        save_dataset(tmp_path / "d.hdf5", data, {"env_id": "x"})


def test_load_checks_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "none.hdf5")
    data = make_data()
    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        for k in REQUIRED_KEYS[:-1]:
            f[k] = data[k]
    with pytest.raises(KeyError, match="timeouts"):
        load_dataset(tmp_path / "bad.hdf5")
    # a file of ours with a NaN written behind save_dataset's back
    save_dataset(tmp_path / "ok.hdf5", data, make_meta())
    with h5py.File(tmp_path / "ok.hdf5", "a") as f:
        f["costs"][0] = np.nan
    with pytest.raises(ValueError, match="'costs'.*NaN"):
        load_dataset(tmp_path / "ok.hdf5")


def test_real_dsrl_style_file(tmp_path):
    """A DSRL file: 7 top-level keys, bool flags, float64 here and there, extra keys, no
    metadata. Loads as float32 with inferred metadata, or with the caller's."""
    data = make_data(lengths=(4, 6))
    path = tmp_path / "HopperVelocity.hdf5"
    with h5py.File(path, "w") as f:
        for k in REQUIRED_KEYS:
            v = data[k].astype(bool) if k in ("terminals", "timeouts") else data[k]
            f[k] = v.astype(np.float64) if k == "rewards" else v
        f["infos/velocity"] = np.zeros(10)
    loaded, meta = load_dataset(path)
    assert all(loaded[k].dtype == np.float32 for k in REQUIRED_KEYS)
    rets, costs = trajectory_returns(data)
    assert meta.env_id == "HopperVelocity"
    assert meta.max_episode_steps == 6 and meta.num_trajectories == 2
    assert meta.reward_min == pytest.approx(rets.min()) and meta.reward_max == pytest.approx(
        rets.max()
    )
    assert meta.max_cost == pytest.approx(costs.max())
    given_meta = make_meta(reward_min=37.05, reward_max=1911.4)
    _, meta2 = load_dataset(path, metadata=given_meta)
    assert meta2.reward_min == 37.05
    assert infer_metadata(loaded, "x", reward_min=37.05, reward_max=1911.4).reward_min == 37.05
    with pytest.raises(ValueError, match="reward_max"):  # an override that contradicts the data
        infer_metadata(loaded, "x", reward_min=37.05)


def test_split_and_returns():
    data = make_data(lengths=(3, 5, 2))
    ranges = split_trajectories(data)
    np.testing.assert_array_equal(ranges, [[0, 3], [3, 8], [8, 10]])
    rets, costs = trajectory_returns(data)
    np.testing.assert_allclose(rets[1], data["rewards"][3:8].sum(dtype=np.float64))
    np.testing.assert_allclose(costs[2], data["costs"][8:10].sum())
    # trailing steps without a flag form a final trajectory
    data["terminals"][-1] = 0.0
    np.testing.assert_array_equal(split_trajectories(data)[-1], [8, 10])


def test_select_trajectories():
    data = make_data(lengths=(3, 5, 2))
    sub = select_trajectories(data, np.array([True, False, True]))
    assert len(sub["rewards"]) == 5
    np.testing.assert_array_equal(sub["rewards"][3:], data["rewards"][8:])
    with pytest.raises(ValueError, match="one per trajectory"):
        select_trajectories(data, np.array([True, False]))


def test_normalisation():
    meta = make_meta(reward_min=10.0, reward_max=20.0)
    assert meta.normalized_reward(15.0) == pytest.approx(0.5)
    assert meta.normalized_cost(10.0, 20.0) == pytest.approx(0.5)
    assert meta.normalized_cost(0.0, 0.0) == pytest.approx(1.0)  # ε = 1 when κ = 0
    with pytest.raises(ValueError):
        meta.normalized_cost(1.0, -1.0)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 7), min_size=1, max_size=8), st.integers(0, 2**16))
def test_split_property(lengths, seed):
    """Ranges tile [0, N) in order; returns sum to the total reward; lengths match."""
    data = make_data(lengths=tuple(lengths), seed=seed, last_terminal=bool(seed % 2))
    ranges = split_trajectories(data)
    np.testing.assert_array_equal(ranges[:, 1] - ranges[:, 0], lengths)
    assert ranges[0, 0] == 0 and ranges[-1, 1] == sum(lengths)
    np.testing.assert_array_equal(ranges[1:, 0], ranges[:-1, 1])
    rets, costs = trajectory_returns(data)
    assert rets.sum() == pytest.approx(data["rewards"].astype(np.float64).sum(), abs=1e-6)
    assert costs.sum() == pytest.approx(float(data["costs"].sum()))


def test_public_api_reexports():
    import saferl.data as d

    for name in d.__all__:
        assert getattr(d, name) is not None
    with pytest.raises(AttributeError, match="nope"):
        d.nope  # noqa: B018


def test_metadata_make_env():
    meta = make_meta(max_episode_steps=7)
    env = meta.make_env()
    env.reset(seed=0)
    steps = 0
    done = False
    while not done:
        _, _, term, trunc, info = env.step(env.action_space.sample() * 0)
        steps += 1
        done = term or trunc
        assert "cost" in info
    assert steps <= 7 and env.observation_space.shape == (11,)
