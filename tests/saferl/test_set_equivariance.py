"""SET actions are invariant under rotations of the scene about the vertical axis (float32,
max abs difference <= 1e-5), for random weights, over random states of several morphologies,
including padded batches that mix morphologies; the baselines are not."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st

import envs
from envs.layout import NUM_SCALARS, NUM_VECTORS, ObsLayout
from saferl.policies import (
    build_actor,
    build_critic,
    invariance_error,
    orbit_angles,
    reflect_flat,
    rotate_flat,
)

TOL = 1e-5


SMALL_SET = {"width": 32, "ff": 48, "heads": 2, "layers": 2, "channels": 6}


def spaces_for(max_limbs: int) -> tuple[spaces.Box, spaces.Box]:
    layout = ObsLayout(max_limbs)
    obs = spaces.Box(-np.inf, np.inf, (layout.flat_dim,), np.float32)
    return obs, spaces.Box(-1.0, 1.0, (layout.action_dim,), np.float32)


def random_scenes(batch: int, max_limbs: int, seed: int) -> torch.Tensor:
    """Flat observations of random trees (2..max_limbs limbs, padded), random vectors with
    g = (0, 0, -1), a unit horizontal target and orthonormal joint axes per limb."""
    gen = torch.Generator().manual_seed(seed)
    n_limbs = torch.randint(2, max_limbs + 1, (batch,), generator=gen)
    mask = (torch.arange(max_limbs)[None] < n_limbs[:, None]).float()
    vectors = 2.0 * torch.randn(batch, max_limbs, NUM_VECTORS, 3, generator=gen)
    vectors[:, :, 1] = torch.tensor([0.0, 0.0, -1.0])
    theta = 2 * math.pi * torch.rand(batch, 1, generator=gen)
    vectors[:, :, 2] = torch.stack([theta.cos(), theta.sin(), 0 * theta], -1)
    frames, _ = torch.linalg.qr(torch.randn(batch, max_limbs, 3, 3, generator=gen))
    vectors[:, :, 5:8] = frames.transpose(-1, -2)
    scalars = torch.randn(batch, max_limbs, NUM_SCALARS, generator=gen)
    limb = torch.arange(max_limbs).float()
    parents = torch.floor(torch.rand(batch, max_limbs, generator=gen) * limb)  # parent < limb
    parents[:, 0] = -1.0
    parents = torch.where(mask > 0, parents, torch.full_like(parents, -1.0))
    vectors = vectors * mask[..., None, None]
    scalars = scalars * mask[..., None]
    return torch.cat([vectors.flatten(1), scalars.flatten(1), mask, parents], 1)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    angle=st.floats(0.0, 2 * math.pi, allow_nan=False),
    max_limbs=st.sampled_from([3, 6, 14]),
)
def test_set_actions_invariant_random_weights(seed: int, angle: float, max_limbs: int) -> None:
    torch.manual_seed(seed)
    actor = build_actor("set", *spaces_for(max_limbs), SMALL_SET, device="cpu")
    obs = random_scenes(16, max_limbs, seed)
    with torch.no_grad():
        diff = (actor(rotate_flat(obs, angle)) - actor(obs)).abs().max()
    assert float(diff) <= TOL


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), angle=st.floats(0.0, 2 * math.pi, allow_nan=False))
def test_set_critic_invariant(seed: int, angle: float) -> None:
    torch.manual_seed(seed)
    obs_space, act_space = spaces_for(6)
    critic = build_critic("set", obs_space, act_space, SMALL_SET, device="cpu")
    obs = random_scenes(8, 6, seed)
    actions = torch.rand(8, 6, 3) * 2 - 1
    with torch.no_grad():
        q0, q1 = critic(obs, actions), critic(rotate_flat(obs, angle), actions)
    assert float((q1 - q0).abs().max()) <= TOL * max(1.0, float(q0.abs().max()))


def test_set_reference_sizes_invariant() -> None:
    torch.manual_seed(0)
    actor = build_actor("set", *spaces_for(14), device="cpu")  # width 128, m = 30, 3 layers
    assert invariance_error(actor, random_scenes(8, 14, 1), orbit_angles(8)) <= TOL


def test_set_invariant_under_reflection_of_all_vectors() -> None:
    """Mirroring every input vector (all treated as plain vectors) leaves torques unchanged;
    this is a property of the network, not a claim about mirrored physics (pseudovectors)."""
    torch.manual_seed(0)
    actor = build_actor("set", *spaces_for(6), SMALL_SET, device="cpu")
    obs = random_scenes(16, 6, 3)
    with torch.no_grad():
        assert float((actor(reflect_flat(obs)) - actor(obs)).abs().max()) <= TOL


@pytest.mark.parametrize("kind", ["transformer", "mlp"])
def test_baselines_are_not_invariant(kind: str) -> None:
    torch.manual_seed(0)
    actor = build_actor(kind, *spaces_for(6), device="cpu")
    assert invariance_error(actor, random_scenes(16, 6, 2), orbit_angles(8)) > 1e-2


def real_mixed_batch(angle: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Observations of several catalogue agents padded to 14 limbs (one batch mixing
    morphologies): as reset, and with the state and target turned by ``angle`` in the env."""
    plain, turned = [], []
    for agent in ["hopper_3", "walker_5", "humanoid_9", "cheetah_14"]:
        env = envs.make(envs.env_id(agent), max_limbs=14)
        env.reset(seed=1)
        base = env.unwrapped
        for _ in range(3):  # move away from the rest pose
            env.step(env.action_space.sample())
        state = base.data.qpos.copy(), base.data.qvel.copy()
        base.set_state(*state)  # recompute kinematics (after mj_step they lag one substep)
        plain.append(base.observation())
        qpos, qvel = envs.rotate_state(*state, angle)
        target = envs.rotate_vectors(base.target_direction, angle)
        base.set_state(qpos, qvel)
        base.target_direction = target
        turned.append(base.observation())
        env.close()
    as_tensor = lambda xs: torch.as_tensor(np.stack(xs), dtype=torch.float32)  # noqa: E731
    return as_tensor(plain), as_tensor(turned)


def test_set_invariant_on_env_states_of_mixed_morphologies() -> None:
    torch.manual_seed(0)
    actor = build_actor("set", *spaces_for(14), SMALL_SET, device="cpu")
    for angle in (0.7, 2.5, 4.0):
        plain, turned = real_mixed_batch(angle)
        with torch.no_grad():
            assert float((actor(turned) - actor(plain)).abs().max()) <= TOL
            assert float((actor(rotate_flat(plain, angle)) - actor(plain)).abs().max()) <= TOL


def test_set_invariant_to_double_round_off_in_float64() -> None:
    """In float64 (rotation matrix built in the states' dtype) the action change is double
    round-off, so float32's ~1e-6 relative error is all that separates it from exact."""
    torch.manual_seed(0)
    actor = build_actor("set", *spaces_for(6), SMALL_SET, device="cpu").double()
    obs = random_scenes(64, 6, seed=3).double()
    with torch.no_grad():
        assert invariance_error(actor, obs, orbit_angles(24)) <= 1e-12
