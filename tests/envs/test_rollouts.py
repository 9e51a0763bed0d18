"""Long random rollouts stay finite; a diverging simulation ends the episode with a flag."""

from __future__ import annotations

import numpy as np
import pytest

import envs


def _random_rollout(agent: str, steps: int, seed: int) -> None:
    env = envs.make(envs.env_id(agent))
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert np.all(np.isfinite(obs)) and np.isfinite(reward) and np.isfinite(info["cost"])
        assert not info["diverged"]
        if terminated or truncated:
            obs, _ = env.reset()


@pytest.mark.parametrize("agent", sorted(envs.catalogue().agents))
def test_random_rollout_is_finite(agent: str) -> None:
    _random_rollout(agent, steps=400, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("agent", sorted(envs.catalogue().agents))
def test_long_random_rollouts_are_finite(agent: str) -> None:
    for seed in range(5):
        _random_rollout(agent, steps=2000, seed=seed)


def test_divergence_ends_episode_with_flag() -> None:
    env = envs.make("Saferl3D-Humanoid9-v0")
    obs, _ = env.reset(seed=0)
    sim = env.unwrapped
    qvel = sim.data.qvel.copy()
    qvel[:] = 1e12
    sim.set_state(sim.data.qpos.copy(), qvel)
    _, reward, terminated, _, info = env.step(np.ones(env.action_space.shape))
    assert terminated and info["diverged"] is True and reward == 0.0
    # the observation returned is the last finite one, and a reset recovers
    obs, _ = env.reset(seed=1)
    assert np.all(np.isfinite(obs))
