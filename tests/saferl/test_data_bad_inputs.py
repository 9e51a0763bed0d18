"""Bad dataset inputs found by a hostile-input pass: each is refused with an error that names
the problem, before any work (each of these tests failed before the data-model redesign)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from saferl.data import REQUIRED_KEYS, DatasetMetadata, infer_metadata, load_dataset, save_dataset
from saferl.offline import BCQLagConfig, load_tasks, train_bcq_lag


def _data(n: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = {k: np.zeros(n, np.float32) for k in REQUIRED_KEYS}
    for key, dim in (("observations", 3), ("next_observations", 3), ("actions", 2)):
        data[key] = rng.normal(size=(n, dim)).astype(np.float32)
    data["rewards"] = rng.normal(size=n).astype(np.float32)
    data["timeouts"][[5, n - 1]] = 1
    return data


def _write_raw(path, data: dict, attrs: dict | None = None) -> None:
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            f[key] = value
        for key, value in (attrs or {}).items():
            f.attrs[key] = value


def test_out_of_range_float64_is_refused_not_turned_into_inf(tmp_path):
    data = {k: v.astype(np.float64) for k, v in _data().items()}
    data["rewards"][3] = 1e300  # finite in float64, inf in float32
    _write_raw(tmp_path / "d.hdf5", data)
    with pytest.raises(ValueError, match="'rewards'.*float32"):
        load_dataset(tmp_path / "d.hdf5")


def test_metadata_of_the_wrong_type_names_the_field(tmp_path):
    data = _data()
    meta = json.loads(infer_metadata(data, "SaferlPlanar-HopperVelocity-v1").to_json())
    for field, bad in (("max_episode_steps", "long"), ("reward_min", "low"),
                       ("cost_thresholds", 10.0), ("env_kwargs", [1])):  # fmt: skip
        _write_raw(tmp_path / "d.hdf5", data, {"saferl_metadata": json.dumps({**meta, field: bad})})
        with pytest.raises(TypeError, match=f"metadata.{field} must be"):
            load_dataset(tmp_path / "d.hdf5")
    _write_raw(tmp_path / "d.hdf5", data, {"saferl_metadata": "{not json"})
    with pytest.raises(ValueError, match="not valid JSON"):
        load_dataset(tmp_path / "d.hdf5")


def test_empty_cost_thresholds_fail_at_once():
    with pytest.raises(ValueError, match="cost_thresholds must be a non-empty list"):
        DatasetMetadata("SaferlPlanar-HopperVelocity-v1", 10, 0.0, 1.0, 0.0, cost_thresholds=[])


def test_a_huge_declared_array_is_refused_before_reading(tmp_path):
    data = _data()
    with h5py.File(tmp_path / "huge.hdf5", "w") as f:
        for key in REQUIRED_KEYS:
            shape = (2**40,) + data[key].shape[1:]
            f.create_dataset(key, shape=shape, dtype="f4", chunks=(1024,) + data[key].shape[1:])
    assert (tmp_path / "huge.hdf5").stat().st_size < 1_000_000  # nothing allocated on disk
    with pytest.raises(ValueError, match="declares 1099511627776 transitions"):
        load_dataset(tmp_path / "huge.hdf5")


def test_truncated_and_inconsistent_files(tmp_path):
    data = _data()
    save_dataset(tmp_path / "ok.hdf5", data, infer_metadata(data, "SaferlPlanar-HopperVelocity-v1"))
    raw = (tmp_path / "ok.hdf5").read_bytes()
    (tmp_path / "cut.hdf5").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="cut.hdf5"):
        load_dataset(tmp_path / "cut.hdf5")
    _write_raw(tmp_path / "short.hdf5", {**data, "costs": data["costs"][:-1]})
    with pytest.raises(ValueError, match="'costs' has shape"):
        load_dataset(tmp_path / "short.hdf5")


def test_bench_refuses_two_datasets_with_one_name(tmp_path):
    data = _data()
    meta = infer_metadata(data, "SaferlPlanar-HopperVelocity-v1")
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        save_dataset(tmp_path / sub / "hopper.hdf5", data, meta)
    with pytest.raises(ValueError, match="distinct file names"):
        load_tasks([tmp_path / "a" / "hopper.hdf5", tmp_path / "b" / "hopper.hdf5"])


def test_bcq_lag_stops_when_training_diverges():
    """Huge rewards used to train BCQ-Lag to NaN weights that were returned as a policy."""
    data = _data(n=64)
    data["rewards"][:] = 3e38
    meta = infer_metadata(data, "SaferlPlanar-HopperVelocity-v1")
    config = BCQLagConfig(steps=20, batch_size=16, hidden=(16,), vae_hidden=(16,), log_every=5)
    with pytest.raises(FloatingPointError, match="BCQ-Lag training diverged"):
        train_bcq_lag(data, meta, config, device="cpu")
