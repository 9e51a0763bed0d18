"""Collection: PID Lagrangian by hand, annealing, reward shaping, grid filter, tiny end to end."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saferl.common.lagrangian import PIDLagrangian, PIDLagrangianConfig, annealed_limit
from saferl.data import load_dataset, split_trajectories, trajectory_returns
from saferl.data.collection import (
    CollectConfig,
    LagrangeState,
    LagrangianRewardWrapper,
    grid_filter,
)
from saferl.data.rollout import rollout

PLANAR = "SaferlPlanar-HopperVelocity-v1"


def test_pid_by_hand():
    pid = PIDLagrangian(PIDLagrangianConfig(kp=0.1, ki=0.003, kd=0.001, p_ema=0.5, d_ema=0.5))
    # step 1: J = 30, d = 10 -> Δ = 20; I = 0.06; Δ̄ = 10; J̄ = 30 (first), rise 0
    assert pid.update(30.0, 10.0) == pytest.approx(0.1 * 10 + 0.06)
    # step 2: J = 50 -> Δ = 40; I = 0.18; Δ̄ = 25; J̄ = 40, rise 10
    assert pid.update(50.0, 10.0) == pytest.approx(0.1 * 25 + 0.18 + 0.001 * 10)
    # step 3: J = 0 -> Δ = -10; I = 0.15; Δ̄ = 7.5; J̄ = 20, rise 0
    assert pid.update(0.0, 10.0) == pytest.approx(0.1 * 7.5 + 0.15)


def test_pid_clips_and_validates():
    pid = PIDLagrangian(PIDLagrangianConfig(lambda_max=0.5))
    assert pid.update(1e6, 0.0) == 0.5
    pid = PIDLagrangian()
    for _ in range(50):
        lam = pid.update(0.0, 100.0)
    assert lam == 0.0 and pid.integral == 0.0
    with pytest.raises(ValueError, match="kp"):
        PIDLagrangianConfig(kp=-1.0)
    with pytest.raises(ValueError, match="finite"):
        pid.update(float("nan"), 1.0)


def test_annealed_limit():
    assert annealed_limit(0.0, 250, 10, 0.8) == 250
    assert annealed_limit(0.4, 250, 10, 0.8) == pytest.approx(130)
    assert annealed_limit(0.9, 250, 10, 0.8) == 10
    with pytest.raises(ValueError):
        annealed_limit(0.5, 1, 0, 0.0)


class _ConstCost(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (2,))
    action_space = gym.spaces.Box(-1, 1, (1,))

    def reset(self, seed=None, options=None):
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(2, np.float32), 2.0, False, self.t == 3, {"cost": 1.0}


def test_reward_wrapper_shapes_and_sums():
    state = LagrangeState()
    env = LagrangianRewardWrapper(_ConstCost(), state)
    env.reset()
    state.multiplier = 0.5
    _, r, *_ = env.step(np.zeros(1))
    assert r == pytest.approx(2.0 - 0.5)
    env.step(np.zeros(1))
    *_, info = env.step(np.zeros(1))
    assert info["episode_reward"] == 6.0 and info["episode_cost"] == 3.0 and info["reward"] == 2.0


def test_rollout_records_flags():
    trajs = rollout(lambda o: np.zeros((len(o), 1)), _ConstCost, 2, seed=0, noise_std=0.1)
    trajs = trajs.episodes()
    assert len(trajs) == 2
    for t in trajs:
        assert t["rewards"].shape == (3,) and t["actions"].shape == (3, 1)
        np.testing.assert_array_equal(t["timeouts"], [0, 0, 1])
        assert t["terminals"].sum() == 0 and np.all(np.abs(t["actions"]) <= 1)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 200), st.integers(1, 6), st.integers(1, 5), st.integers(0, 10_000))
def test_grid_filter_caps_cells(n, bins, cap, seed):
    """At most ``cap`` kept per cell; a cell keeps min(count, cap); deterministic per seed."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 20, n).astype(float)
    r = rng.normal(size=n) * 10
    keep = grid_filter(c, r, bins, cap, np.random.default_rng(seed))
    np.testing.assert_array_equal(keep, grid_filter(c, r, bins, cap, np.random.default_rng(seed)))

    def cell_of(x):
        lo, hi = x.min(), x.max()
        return (
            np.zeros(n, int)
            if hi <= lo
            else np.minimum(((x - lo) / (hi - lo) * bins), bins - 1).astype(int)
        )

    cells = cell_of(c) * bins + cell_of(r)
    for cell in np.unique(cells):
        in_cell = cells == cell
        assert keep[in_cell].sum() == min(in_cell.sum(), cap)


def test_config_validation():
    with pytest.raises(ValueError, match="algo"):
        CollectConfig(env_id=PLANAR, algo="trpo")
    with pytest.raises(ValueError, match="total_timesteps"):
        CollectConfig(env_id=PLANAR, total_timesteps=0)
    cfg = CollectConfig.for_task("Saferl3D-Hopper3-v0", 300)
    assert cfg.env_kwargs == {"max_limbs": 3}
    assert cfg.cost_limit_start == pytest.approx(75) and cfg.cost_thresholds == pytest.approx(
        (6, 12, 24)
    )


def test_cli_tiny_collection_end_to_end(tmp_path):
    """``saferl collect`` with a few hundred steps: dataset, summary and plot all consistent."""
    from saferl.cli import main

    out = tmp_path / "hopper.hdf5"
    argv = ["collect", PLANAR, "--out", str(out), "--steps", "256", "--max-episode-steps", "40",
            "--checkpoints", "2", "--episodes", "2", "--max-per-cell", "1", "--grid-bins", "3",
            "--seed", "1", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    data, meta = load_dataset(out)
    assert meta.env_id == PLANAR and meta.max_episode_steps == 40
    assert meta.cost_thresholds == pytest.approx([0.8, 1.6, 3.2])
    assert (meta.obs_dim, meta.act_dim) == (11, 3)
    ranges = split_trajectories(data)
    assert len(ranges) == meta.num_trajectories and (ranges[:, 1] - ranges[:, 0]).max() <= 40
    rets, costs = trajectory_returns(data)
    assert meta.reward_min <= rets.min() and rets.max() <= meta.reward_max
    assert costs.max() == pytest.approx(meta.max_cost)
    summary = json.loads(out.with_suffix(".json").read_text())
    # 2 checkpoints x 3 modes x 2 episodes rolled out; at most 1 per cell of the 3x3 grid kept
    assert len(summary["kept"]) == 12 and sum(summary["kept"]) == meta.num_trajectories <= 9
    assert out.with_suffix(".png").stat().st_size > 1000


def test_experiment_script_quick(tmp_path):
    """experiments/collect_datasets.py --quick writes a dataset, a plot and the table."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parents[2] / "experiments" / "collect_datasets.py"
    spec = importlib.util.spec_from_file_location("collect_datasets", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "results"
    argv = ["--quick", "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    assert module.main(argv) == 0
    table = (out / "datasets_table.md").read_text()
    assert PLANAR in table and "safe % at κ" in table and "zero-torque R" in table
    assert (out / f"datasets_{PLANAR}.png").exists()


def test_collect_is_seeded():
    """Two runs with one seed give identical datasets; another seed differs."""
    import torch

    from saferl.data import collect

    torch.set_num_threads(1)

    def run(seed):
        cfg = CollectConfig.for_task(PLANAR, 20, total_timesteps=64, n_envs=2, num_checkpoints=2,
                                     episodes_per_mode=1, seed=seed, verbose=0)  # fmt: skip
        return collect(cfg)

    a, b, c = run(3), run(3), run(4)
    for key in ("observations", "actions", "rewards", "costs"):
        np.testing.assert_array_equal(a.data[key], b.data[key])
    assert a.metadata.reward_max == b.metadata.reward_max
    assert not np.array_equal(a.data["observations"][:5], c.data["observations"][:5])
