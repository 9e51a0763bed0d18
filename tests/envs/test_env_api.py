"""Env API: reward terms, costs, views, state access, waypoints and bad input."""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
import pytest

import envs


def test_reward_terms_add_up_and_cost_stays_out_of_reward() -> None:
    rewards = {}
    for cost_type in ("velocity", "region", "both"):
        env = envs.Locomotion3DEnv("walker_7", cost_type=cost_type, region_x=-10.0)
        env.reset(seed=4)
        rng = np.random.default_rng(0)
        total = []
        for _ in range(50):
            _, reward, term, _, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
            parts = sum(v for k, v in info.items() if k.startswith("reward_"))
            assert reward == pytest.approx(parts, abs=1e-12)
            c_vel, c_reg = info["cost_velocity"], info["cost_region"]
            expected = {"velocity": c_vel, "region": c_reg, "both": max(c_vel, c_reg)}[cost_type]
            assert info["cost"] == expected
            total.append(reward)
            if term:
                break
        rewards[cost_type] = total
    assert rewards["velocity"] == rewards["region"] == rewards["both"]


def test_velocity_cost_matches_threshold() -> None:
    env = envs.Locomotion3DEnv("cheetah_14")
    env.reset(seed=0)
    limit = envs.FAMILIES["cheetah"].speed_limit
    for push in (0.5 * limit, 2.0 * limit):
        qvel = np.zeros(env.model.nv)
        qvel[0] = push
        env.set_state(env.data.qpos.copy(), qvel)
        _, _, _, _, info = env.step(np.zeros(env.action_space.shape))
        assert info["cost_velocity"] == float(info["speed"] > limit)


def test_flat_and_graph_views_hold_the_same_data() -> None:
    flat_env = envs.Locomotion3DEnv("humanoid_8", obs_view="flat")
    graph_env = envs.Locomotion3DEnv("humanoid_8", obs_view="graph")
    flat, _ = flat_env.reset(seed=7)
    graph, _ = graph_env.reset(seed=7)
    decoded = envs.decode_flat(flat)
    for key in ("vectors", "scalars", "mask", "parents"):
        np.testing.assert_array_equal(decoded[key], graph[key])
    assert decoded["mask"].sum() == 8
    assert list(decoded["parents"][:8]) == list(flat_env.morph.parents)
    assert np.all(decoded["vectors"][8:] == 0) and np.all(decoded["parents"][8:] == -1)


def test_padded_actions_are_ignored() -> None:
    a = envs.Locomotion3DEnv("hopper_3", max_limbs=6)
    b = envs.Locomotion3DEnv("hopper_3", max_limbs=6)
    a.reset(seed=1)
    b.reset(seed=1)
    act = np.random.default_rng(0).uniform(-1, 1, a.action_space.shape)
    noisy = act.copy().reshape(6, 3)
    noisy[0] = 0.9  # torso row
    noisy[3:] = -0.7  # padded rows
    oa, ra, *_ = a.step(act)
    ob, rb, *_ = b.step(noisy.ravel())
    # ctrl cost counts the whole action vector; everything physical must agree
    np.testing.assert_array_equal(oa, ob)


def test_set_state_and_target_direction() -> None:
    env = envs.Locomotion3DEnv("walker_5")
    env.reset(seed=0)
    qpos = env.data.qpos.copy()
    qpos[:2] = [2.0, -1.0]
    env.set_state(qpos, np.zeros(env.model.nv))
    np.testing.assert_allclose(env.data.qpos[:2], [2.0, -1.0])
    env.target_direction = [0.0, 2.0]
    np.testing.assert_allclose(env.target_direction, [0.0, 1.0, 0.0])
    graph = env.graph_observation()
    np.testing.assert_allclose(graph["vectors"][:5, 2], np.tile([0.0, 1.0, 0.0], (5, 1)))
    with pytest.raises(ValueError, match="qpos"):
        env.set_state(qpos[:-1], np.zeros(env.model.nv))
    with pytest.raises(ValueError, match="non-zero"):
        env.target_direction = [0.0, 0.0, 1.0]


def test_waypoint_is_redrawn_when_reached() -> None:
    env = envs.Locomotion3DEnv("walker_5", task="waypoint")
    env.reset(seed=0)
    first = env._waypoint.copy()
    qpos = env.data.qpos.copy()
    qpos[:2] = first
    env.set_state(qpos, np.zeros(env.model.nv))
    env.step(np.zeros(env.action_space.shape))
    assert np.linalg.norm(env._waypoint - first) > 5.0
    assert 9.0 <= np.linalg.norm(env._waypoint - env.data.qpos[:2]) <= 21.0


def test_planar_cost_uses_safety_gymnasium_thresholds() -> None:
    env = envs.make("SaferlPlanar-HopperVelocity-v1")
    env.reset(seed=0)
    for _ in range(20):
        _, _, term, _, info = env.step(env.action_space.sample())
        assert info["cost"] == float(info["x_velocity"] > 0.7402)
        if term:
            break
    ant = envs.make("SaferlPlanar-AntVelocity-v1")
    obs, _ = ant.reset(seed=0)
    assert obs.shape == (27,)
    _, _, _, _, info = ant.step(ant.action_space.sample())
    assert info["cost"] == float(np.hypot(info["x_velocity"], info["y_velocity"]) > 2.6222)


def test_unknown_id_names_the_expected_ids() -> None:
    with pytest.raises(KeyError, match="registered_ids"):
        envs.make("Saferl3D-Walker99-v0")
    with pytest.raises(KeyError, match="unknown agent"):
        envs.Locomotion3DEnv("spider_8")
    with pytest.raises(KeyError, match="unknown suite"):
        envs.suite_ids("Spider++")


@pytest.mark.parametrize("env_id", ["Saferl3D-Walker5-v0", "SaferlPlanar-HopperVelocity-v1"])
def test_bad_actions_raise_clear_errors(env_id: str) -> None:
    env = envs.make(env_id)
    env.reset(seed=0)
    shape = env.action_space.shape
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(shape[0] + 1))
    bad = np.zeros(shape)
    bad[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        env.step(bad)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="max_limbs"):
        envs.Locomotion3DEnv("walker_7", max_limbs=3)
    with pytest.raises(ValueError, match="cost_type"):
        envs.Locomotion3DEnv("walker_7", cost_type="speed")
    with pytest.raises(ValueError, match="task"):
        gym.make("Saferl3D-Walker5-v0", task="circle")


@pytest.mark.parametrize("agent", ["hopper_5", "cheetah_14"])
def test_observation_after_step_describes_the_integrated_state(agent: str) -> None:
    """The observation after step() equals the observation of the same state set afresh."""
    env = envs.Locomotion3DEnv(agent)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(30):
        obs, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape))
    fresh = envs.Locomotion3DEnv(agent)
    fresh.reset(seed=1)
    fresh.target_direction = env.target_direction
    fresh.set_state(env.data.qpos.copy(), env.data.qvel.copy())
    np.testing.assert_array_equal(fresh.observation(), obs)


@pytest.mark.parametrize("agent", ["hopper_5", "cheetah_14"])
def test_env_simulates_the_same_trajectory_as_a_bare_mj_step_loop(agent: str) -> None:
    """Splitting the step (mj_step2 ... mj_step1) or refreshing sensors changes no state bit."""
    env = envs.Locomotion3DEnv(agent)
    env.reset(seed=0)
    bare = mujoco.MjData(env.model)
    bare.qpos[:], bare.qvel[:] = env.data.qpos, env.data.qvel
    mujoco.mj_forward(env.model, bare)
    rng = np.random.default_rng(0)
    n = env.morph.num_limbs
    for _ in range(50):
        action = rng.uniform(-1, 1, env.action_space.shape)
        env.step(action)
        bare.ctrl[:] = action.reshape(-1, 3)[1:n].ravel()
        mujoco.mj_step(env.model, bare, nstep=env.frame_skip)
    np.testing.assert_array_equal(env.data.qpos, bare.qpos)
    np.testing.assert_array_equal(env.data.qvel, bare.qvel)
    assert env.data.time == bare.time


def test_out_of_range_actions_are_clamped_by_mujoco() -> None:
    """Torques beyond [-1, 1] act as the clipped ones; the control cost sees the action given."""
    rng = np.random.default_rng(0)
    action = 3.0 * rng.uniform(-1, 1, envs.Locomotion3DEnv("walker_5").action_space.shape)
    runs = []
    for a in (action, np.clip(action, -1.0, 1.0)):
        env = envs.Locomotion3DEnv("walker_5")
        env.reset(seed=0)
        obs, _, _, _, info = env.step(a)
        runs.append((obs, env.data.qpos.copy(), info["reward_ctrl"]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert runs[0][2] == pytest.approx(-1e-3 * float(action @ action))
    assert runs[0][2] < runs[1][2]
