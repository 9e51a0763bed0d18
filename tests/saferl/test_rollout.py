"""The one rollout: flags, seeds, batching, truncation, per-episode policies and labels."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs
from saferl.data import make_env, rollout, rollout_transitions, unsafe_within, validate_data


class Countdown(gym.Env):
    """Observation = (seed, t); episode ``i`` ends by failure after ``3 + seed % 3`` steps when
    the seed is even, else by its time limit after 4; cost 1 on odd steps."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,))
    action_space = gym.spaces.Box(-1, 1, (1,))

    def reset(self, seed=None, options=None):
        self.seed_, self.t = int(seed), 0
        return np.array([self.seed_, 0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        fail = self.seed_ % 2 == 0 and self.t == 3 + self.seed_ % 3
        obs = np.array([self.seed_, self.t], np.float32)
        return obs, float(action[0]), fail, self.t == 4 and not fail, {"cost": float(self.t % 2)}


def test_flags_seeds_and_sums():
    calls = []

    def policy(obs):
        calls.append(len(obs))
        return np.full((len(obs), 1), 0.5)

    runs = rollout(policy, Countdown, episodes=3, seed=10)
    # seeds 10, 11, 12: 10 fails after 4 steps; 11 times out at 4; 12 fails after 3
    assert runs.lengths.tolist() == [4, 4, 3] and runs.terminated.tolist() == [True, False, True]
    assert calls == [3, 3, 3, 2]  # one batched call per step over the episodes still running
    np.testing.assert_allclose(runs.returns, 0.5 * runs.lengths)
    assert runs.costs.tolist() == [2.0, 2.0, 2.0]
    eps = runs.episodes()
    assert [e["observations"][0, 0] for e in eps] == [10, 11, 12]
    assert eps[0]["terminals"].tolist() == [0, 0, 0, 1] and eps[0]["timeouts"].sum() == 0
    assert eps[1]["timeouts"].tolist() == [0, 0, 0, 1] and eps[1]["terminals"].sum() == 0
    np.testing.assert_array_equal(eps[2]["next_observations"][:-1], eps[2]["observations"][1:])
    assert validate_data(runs.data) == 11
    assert runs.episode_ids().tolist() == [0] * 4 + [1] * 4 + [2] * 3


def test_max_steps_truncates_with_a_timeout_and_noise_is_clipped():
    runs = rollout(lambda o: np.zeros((len(o), 1)), Countdown, 2, seed=1, max_steps=2,
                   noise_std=10.0)  # fmt: skip
    assert runs.lengths.tolist() == [2, 2] and not runs.terminated.any()
    assert runs.data["timeouts"].tolist() == [0, 1, 0, 1]
    assert np.all(np.abs(runs.data["actions"]) <= 1) and np.any(runs.data["actions"] != 0)
    again = rollout(lambda o: np.zeros((len(o), 1)), Countdown, 2, seed=1, max_steps=2,
                    noise_std=10.0)  # fmt: skip
    np.testing.assert_array_equal(runs.data["actions"], again.data["actions"])


def test_episode_index_and_transition_budget():
    seen = []

    def policy(obs, episodes):
        seen.extend(episodes.tolist())
        return np.zeros((len(obs), 1))

    runs = rollout_transitions(policy, Countdown, transitions=10, seed=0, batch=2,
                               episode_index=True)  # fmt: skip
    assert runs.lengths.sum() >= 10 and runs.lengths[:-1].sum() < 10  # cut after the crossing
    assert sorted(set(seen)) == list(range(4))  # numbered on across batches
    assert [e["observations"][0, 0] for e in runs.episodes()] == list(range(len(runs.lengths)))


def test_bad_arguments_and_missing_cost():
    with pytest.raises(ValueError, match="episodes"):
        rollout(lambda o: o, Countdown, episodes=0)
    with pytest.raises(ValueError, match="max_steps"):
        rollout(lambda o: o, Countdown, episodes=1, max_steps=0)
    with pytest.raises(KeyError, match="cost"):
        rollout(lambda o: np.zeros((len(o), 3)), lambda: gym.make("Hopper-v5"), episodes=1)
    runs = rollout(lambda o: np.zeros((len(o), 1)), Countdown, 1, record=False)
    with pytest.raises(ValueError, match="record=False"):
        runs.episodes()


def test_real_env_episode_matches_a_hand_loop():
    env_id = "SaferlPlanar-HopperVelocity-v1"
    runs = rollout(lambda o: np.full((len(o), 3), 0.3), lambda: make_env(env_id), 1, seed=5,
                   max_steps=30)  # fmt: skip
    env = envs.make(env_id)
    obs, _ = env.reset(seed=5)
    total = 0.0
    for _ in range(int(runs.lengths[0])):
        obs, reward, *_ = env.step(np.full(3, 0.3))
        total += reward
    assert runs.returns[0] == pytest.approx(total)
    np.testing.assert_allclose(runs.data["next_observations"][-1], obs, rtol=1e-6)


def test_unsafe_within_hand_values():
    costs = np.array([0, 0, 1, 0, 0, 1, 0])
    episodes = np.array([0, 0, 0, 1, 1, 1, 2])
    assert unsafe_within(costs, episodes, 2).tolist() == [0, 1, 1, 0, 1, 1, 0]
    assert unsafe_within(costs, episodes, 1).tolist() == [0, 0, 1, 0, 0, 1, 0]
    with pytest.raises(ValueError, match="horizon"):
        unsafe_within(costs, episodes, 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 3)), min_size=1, max_size=40),
       st.integers(1, 6))  # fmt: skip
def test_unsafe_within_matches_its_definition(steps, k):
    costs = np.array([c for c, _ in steps])
    episodes = np.cumsum([e == 0 for _, e in steps])  # a new episode where e == 0
    labels = unsafe_within(costs, episodes, k)
    for t in range(len(costs)):
        window = [j for j in range(t, min(t + k, len(costs))) if episodes[j] == episodes[t]]
        assert labels[t] == int(any(costs[j] > 0 for j in window))
