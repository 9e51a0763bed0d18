"""End to end: a tiny dataset from the real env, FISOR for a few hundred steps, DSRL
metrics; the same path ``saferl demo`` runs."""

from __future__ import annotations

import math

from saferl.offline import FISORConfig, demo_stage, random_rollouts


def test_random_rollouts_are_a_valid_dsrl_dataset():
    from saferl.data import validate_data

    data, meta = random_rollouts(transitions=300, max_steps=60, seed=1)
    assert validate_data(data) == len(data["rewards"]) >= 300
    assert meta.max_episode_steps == 60 and meta.reward_max > meta.reward_min
    assert data["observations"].shape[1] == 11 and data["actions"].shape[1] == 3


def test_fisor_quick_run_produces_dsrl_metrics():
    small = FISORConfig(actor_width=32, actor_blocks=1, critic_hidden=(32, 32), time_dim=8,
                        actor_batch_size=64, critic_batch_size=64, actor_splits=1)  # fmt: skip
    out = demo_stage(steps=300, episodes=3, max_eval_steps=60, config=small, device="cpu")
    assert out["steps"] == 300 and out["env_id"] == "SaferlPlanar-HopperVelocity-v1"
    # scored at the dataset's own thresholds (its metadata), whatever saferl.data's default is
    assert [r["threshold"] for r in out["scores"]] == list(out["metadata"].cost_thresholds)
    assert len(out["scores"]) == 3
    for row in out["scores"]:
        assert set(row) >= {"reward", "cost", "safe", "raw_return", "raw_cost"}
        assert math.isfinite(row["reward"]) and row["cost"] >= 0
        assert row["safe"] == (row["cost"] <= 1.0)
    # the data's own episodes, for context: random rollouts of at most 60 steps
    assert 0 < out["data_length_mean"] <= 60 and math.isfinite(out["data_return_mean"])
    stats = out["train_stats"]
    assert stats["step"] == 300 and all(math.isfinite(v) for v in stats.values())
    assert 0.0 <= stats["values/feasible_fraction"] <= 1.0
