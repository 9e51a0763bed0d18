"""Observations, termination and episodes describe the simulator's own state.

Every check recomputes the state from scratch: a fresh ``MjData`` gets a copy of the env's
current ``qpos``/``qvel`` and MuJoCo's own kinematics (``mj_kinematics``, ``mj_comPos``,
``mj_comVel``); the observation must equal what that gives. A stale observation (one step
behind), a wrong frame (the inertial frame instead of the body frame) or a hinge axis that is
not the hinge's fails here.
"""

from __future__ import annotations

import math

import mujoco
import numpy as np
import pytest

import envs
from envs.layout import SCALAR_INDEX, VECTOR_INDEX, scalar_slice, xyz

AGENTS = sorted(envs.catalogue().agents)
TOL = 1e-5


def _reference(env: envs.Locomotion3DEnv) -> mujoco.MjData:
    """A fresh MjData in the env's current state, with MuJoCo's kinematics and velocities."""
    ref = mujoco.MjData(env.model)
    ref.qpos[:] = env.data.qpos
    ref.qvel[:] = env.data.qvel
    mujoco.mj_kinematics(env.model, ref)
    mujoco.mj_comPos(env.model, ref)
    mujoco.mj_comVel(env.model, ref)
    return ref


def _clip_norm(v: np.ndarray, limit: float = 10.0) -> np.ndarray:
    return v * min(1.0, limit / max(float(np.linalg.norm(v)), 1e-300))


def _check_observation(env: envs.Locomotion3DEnv, obs: np.ndarray) -> None:
    """``obs`` (flat) equals the state the simulator is in, field by field."""
    view = envs.decode_flat(obs.astype(np.float64))
    vec, sca = view["vectors"], view["scalars"]
    m, ref = env.model, _reference(env)
    torso = m.body(env.morph.limbs[0].name).id
    axes = VECTOR_INDEX["axis_x"]
    for i, limb in enumerate(env.morph.limbs):
        body = m.body(limb.name).id
        np.testing.assert_allclose(
            vec[i, VECTOR_INDEX["position"]], ref.xpos[body] - ref.xpos[torso], atol=TOL,
            err_msg=f"{limb.name}: position is not data.xpos - torso xpos",
        )  # fmt: skip
        np.testing.assert_allclose(sca[i, SCALAR_INDEX["height"]], ref.xpos[body, 2], atol=TOL)
        vel = np.zeros(6)
        mujoco.mj_objectVelocity(m, ref, mujoco.mjtObj.mjOBJ_XBODY, body, vel, 0)
        np.testing.assert_allclose(
            vec[i, VECTOR_INDEX["angular_velocity"]],
            _clip_norm(vel[:3]),
            atol=TOL,
            err_msg=f"{limb.name}: angular velocity",
        )
        np.testing.assert_allclose(
            vec[i, VECTOR_INDEX["linear_velocity"]],
            _clip_norm(vel[3:]),
            atol=TOL,
            err_msg=f"{limb.name}: linear velocity",
        )
        if i == 0:  # the torso's axes are its body frame, the columns of data.xmat
            np.testing.assert_allclose(
                vec[0, axes : axes + 3],
                ref.xmat[torso].reshape(3, 3).T,
                atol=TOL,
                err_msg="torso axes are not data.xmat's columns",
            )
            continue
        for k, axis in enumerate("xyz"):
            joint = m.joint(f"{limb.name}_{axis}")
            np.testing.assert_allclose(
                vec[i, axes + k], ref.xaxis[joint.id], atol=TOL,
                err_msg=f"{limb.name}: observed {axis} hinge axis is not data.xaxis",
            )  # fmt: skip
            qpos = ref.qpos[m.jnt_qposadr[joint.id]]
            np.testing.assert_allclose(sca[i, SCALAR_INDEX[f"angle_{axis}"]], qpos, atol=TOL)
            qvel = np.clip(ref.qvel[m.jnt_dofadr[joint.id]], -10, 10)
            np.testing.assert_allclose(sca[i, SCALAR_INDEX[f"joint_vel_{axis}"]], qvel, atol=TOL)
        lo, hi = np.array(limb.joint_ranges).T
        angles = sca[i, scalar_slice(*xyz("angle"))]
        np.testing.assert_allclose(
            sca[i, scalar_slice(*xyz("angle_norm"))], 2 * (angles - lo) / (hi - lo) - 1, atol=TOL
        )


def _expected_termination(env: envs.Locomotion3DEnv) -> bool:
    """Unhealthy by the family's height band and tilt limit, from data.xpos / data.xmat."""
    ref, fam = _reference(env), env.spec_family
    torso = env.model.body(env.morph.limbs[0].name).id
    z = ref.xpos[torso, 2]
    tilt = math.acos(min(1.0, max(-1.0, ref.xmat[torso].reshape(3, 3)[2, 2])))
    lo, hi = fam.height_band
    z0 = env.morph.torso_height
    return not (lo * z0 < z < hi * z0 and tilt < fam.max_tilt)


def _rollout_checked(agent: str, policy: str, steps: int, seed: int) -> None:
    env = envs.Locomotion3DEnv(agent)
    obs, _ = env.reset(seed=seed)
    _check_observation(env, obs)
    rng = np.random.default_rng(seed)
    still = 0  # consecutive steps with |qvel|^2 <= 1 (the cheetah's stall rule)
    for _ in range(steps):
        if policy == "zero":
            action = np.zeros(env.action_space.shape)
        else:
            action = rng.uniform(-1, 1, env.action_space.shape)
        obs, _, terminated, _, info = env.step(action)
        assert not info["diverged"]
        _check_observation(env, obs)
        still = still + 1 if float(env.data.qvel @ env.data.qvel) <= 1.0 else 0
        stall = env.spec_family.stall_steps
        stalled = bool(stall) and still >= stall
        assert info.get("stalled", False) == stalled
        assert terminated == (_expected_termination(env) or stalled), (
            f"{agent}: terminated={terminated} disagrees with the height band / tilt limit"
        )
        if terminated:
            still = 0
            obs, _ = env.reset(seed=seed + 1)
            _check_observation(env, obs)


@pytest.mark.parametrize("agent", AGENTS)
@pytest.mark.parametrize("policy", ["zero", "random"])
def test_observation_is_the_simulator_state(agent: str, policy: str) -> None:
    _rollout_checked(agent, policy, steps=40, seed=3)


def test_observation_after_set_state_and_in_graph_view() -> None:
    env = envs.Locomotion3DEnv("humanoid_9", obs_view="graph")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    qpos = env.data.qpos.copy()
    qpos[7:] += rng.uniform(-0.4, 0.4, qpos.size - 7)  # bend every hinge
    env.set_state(qpos, rng.normal(0, 1, env.model.nv))
    graph = env.observation()
    flat = np.concatenate([graph[k].ravel() for k in ("vectors", "scalars", "mask", "parents")])
    _check_observation(env, flat)


# Per-episode length bounds (steps) under zero and seeded uniform random torques, per family.
# Measured (experiments/episode_lengths.py, seeds 0-2, every agent): zero 219-284 / 93-284 /
# 135-265 / 21-57 (the cheetah stops moving, then ends after its 20-step stall window); random
# 32-48 / 32-58 / 35-66 / 16-127 for hopper / walker / humanoid / cheetah. Before the frame fix
# every episode ended after one step.
LENGTHS = {
    "hopper": {"zero": (150, 400), "random": (20, 100)},
    "walker": {"zero": (60, 400), "random": (20, 120)},
    "humanoid": {"zero": (100, 400), "random": (25, 120)},
    "cheetah": {"zero": (20, 100), "random": (10, 200)},
}


def _episode_length(agent: str, policy: str, seed: int) -> int:
    env = envs.make(envs.env_id(agent))
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for t in range(1, 1001):
        action = np.zeros(env.action_space.shape)
        if policy == "random":
            action = rng.uniform(-1, 1, env.action_space.shape)
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            return t
    raise AssertionError("the TimeLimit wrapper did not end the episode at 1000 steps")


@pytest.mark.parametrize("family", sorted(LENGTHS))
@pytest.mark.parametrize("policy", ["zero", "random"])
def test_episodes_last_a_sensible_number_of_steps(family: str, policy: str) -> None:
    lo, hi = LENGTHS[family][policy]
    lengths = {a: _episode_length(a, policy, seed=0) for a in envs.catalogue().family(family)}
    outside = {a: n for a, n in lengths.items() if not lo <= n <= hi}
    assert not outside, f"{family} episodes under {policy} torques outside [{lo}, {hi}]: {outside}"
    assert np.mean(list(lengths.values())) >= 15
