"""The committed datasets (``data/*.hdf5``) hold what their summaries say.

Collection is not bit-reproducible across machines, so the benchmark's results are tied to these
files; these tests guard them: every trajectory's (cost, return) equals the one its collection
recorded, the normalisation constants are the rolled trajectories' extremes, observations chain
(``observations[t + 1] == next_observations[t]`` inside a trajectory), and episodes end the way
the env ends them (a terminal step or the 1000-step limit).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from saferl.data import load_dataset, split_trajectories, trajectory_returns

DATA = Path(__file__).resolve().parents[2] / "data"
DATASETS = sorted(DATA.glob("*.hdf5"))


def test_datasets_are_committed():
    assert DATASETS, f"no dataset under {DATA}; the benchmark's datasets are committed there"


@pytest.fixture(scope="module", params=DATASETS, ids=lambda p: p.stem)
def committed(request):
    path: Path = request.param
    summary_path = path.with_suffix(".json")
    assert summary_path.exists(), f"{path.name} has no summary {summary_path.name}"
    data, meta = load_dataset(path)
    return path, data, meta, json.loads(summary_path.read_text())


def test_trajectories_match_the_collection_record(committed):
    path, data, meta, summary = committed
    rolled = np.asarray(summary["returns_cost_reward"], dtype=np.float64)
    kept = np.asarray(summary["kept"], dtype=bool)
    returns, costs = trajectory_returns(data)
    assert len(returns) == kept.sum() == meta.num_trajectories
    np.testing.assert_allclose(costs, rolled[kept, 0], atol=1e-6)
    np.testing.assert_allclose(returns, rolled[kept, 1], atol=1e-3, rtol=1e-6)
    assert meta.reward_min == pytest.approx(rolled[:, 1].min(), abs=1e-3)
    assert meta.reward_max == pytest.approx(rolled[:, 1].max(), abs=1e-3)
    assert meta.max_cost == pytest.approx(costs.max())
    assert meta.env_id == path.stem


def test_observations_chain_and_episodes_end_as_the_env_ends_them(committed):
    _, data, meta, _ = committed
    ranges = split_trajectories(data)
    obs, nxt = data["observations"], data["next_observations"]
    for start, end in ranges:
        np.testing.assert_array_equal(obs[start + 1 : end], nxt[start : end - 1])
    last = ranges[:, 1] - 1
    lengths = ranges[:, 1] - ranges[:, 0]
    terminals, timeouts = data["terminals"] > 0, data["timeouts"] > 0
    assert terminals.sum() == terminals[last].sum() and timeouts.sum() == timeouts[last].sum()
    assert np.all(terminals[last] ^ timeouts[last]), "each trajectory ends exactly once"
    np.testing.assert_array_equal(timeouts[last], lengths == meta.max_episode_steps)
    assert lengths.max() <= meta.max_episode_steps
