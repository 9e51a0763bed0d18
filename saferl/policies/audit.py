"""Equivariance audit (NERO-style plots; Cheng et al., "NERO", 2023): rotate the scene through
360 degrees about the vertical axis and record how much a policy's actions (and its return)
change along the orbit. An exactly invariant policy (SET) draws a flat line at 0.

Action orbit: rotate the world-frame limb vectors of flat observations (gravity is fixed by
the rotation, scalars are invariant), compare actions with the unrotated ones.
Return orbit: rotate the initial state and target of an episode (``envs.rotate_state``) and roll
the policy out; for an invariant policy the return is the same up to simulator round-off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from envs.layout import NUM_VECTORS, ObsLayout
from saferl.common.io import save_figure


def rotation_z(angle: float | Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """3x3 rotation about the vertical axis by ``angle`` radians (batched if a tensor (A,))."""
    angle = torch.as_tensor(angle, dtype=torch.float64)
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    rows = [torch.stack([c, -s, zero], -1), torch.stack([s, c, zero], -1)]
    rows.append(torch.stack([zero, zero, one], -1))
    return torch.stack(rows, -2).to(dtype)


def transform_flat(obs: Tensor, matrix: Tensor) -> Tensor:
    """Apply the 3x3 ``matrix`` to every limb vector of flat observations ``(B, flat_dim)``.

    ``matrix`` (3, 3) or (B, 3, 3). Scalars, mask and parents are unchanged. ValueError when the
    size matches no layout.
    """
    layout = ObsLayout.from_flat_dim(int(obs.shape[-1]))
    n_vec = layout.max_limbs * NUM_VECTORS
    vectors = obs[..., : n_vec * 3].reshape(*obs.shape[:-1], n_vec, 3)
    matrix = matrix.to(obs.dtype).to(obs.device)
    rotated = vectors @ matrix.transpose(-1, -2)
    return torch.cat([rotated.flatten(-2), obs[..., n_vec * 3 :]], -1)


def rotate_flat(obs: Tensor, angle: float | Tensor) -> Tensor:
    """Rotate the scene of flat observations about the vertical axis by ``angle`` radians."""
    return transform_flat(obs, rotation_z(angle, obs.dtype))


def reflect_flat(obs: Tensor) -> Tensor:
    """Mirror every limb vector through the vertical x-z plane (y -> -y), all as plain vectors."""
    return transform_flat(obs, torch.diag(torch.tensor([1.0, -1.0, 1.0])))


def orbit_angles(steps: int) -> np.ndarray:
    """``steps`` angles evenly covering [0, 2 pi)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return np.arange(steps) * (2 * math.pi / steps)


@torch.no_grad()
def action_orbit(actor: nn.Module, obs: Tensor, angles: Sequence[float]) -> np.ndarray:
    """Max abs change of actions per angle: ``(len(angles),)`` over the batch ``obs``
    ``(B, flat_dim)``, relative to the actions at angle 0 (the unrotated scene)."""
    if not torch.isfinite(obs).all():
        raise ValueError("observations contain NaN or Inf")
    base = actor(obs)
    return np.array([float((actor(rotate_flat(obs, a)) - base).abs().max()) for a in angles])


def invariance_error(actor: nn.Module, obs: Tensor, angles: Sequence[float]) -> float:
    """Largest action change over all ``angles`` and states (0 for an invariant policy)."""
    return float(action_orbit(actor, obs, angles).max())


def return_orbit(
    actor: nn.Module,
    env_id: str,
    angles: Sequence[float],
    seed: int = 0,
    horizon: int = 200,
    device: str = "cpu",
    **env_kwargs: Any,
) -> np.ndarray:
    """Return of one episode (at most ``horizon`` steps) per rotation of its start.

    The same reset (``seed``) is rotated by each angle about the vertical axis: state through
    ``envs.rotate_state`` and the target direction turned alike; ``(len(angles),)`` returns.
    """
    import envs

    returns = []
    for angle in angles:
        env = envs.make(env_id, **env_kwargs)
        env.reset(seed=seed)
        base = env.unwrapped
        qpos, qvel = envs.rotate_state(base.data.qpos.copy(), base.data.qvel.copy(), angle)
        target = np.asarray(base.target_direction, dtype=np.float64)
        c, s = math.cos(angle), math.sin(angle)
        turned = np.array([c * target[0] - s * target[1], s * target[0] + c * target[1]])
        obs = rotated_reset(base, qpos, qvel, turned)
        total = 0.0
        for _ in range(horizon):
            with torch.no_grad():
                x = torch.as_tensor(obs, dtype=torch.float32, device=device)[None]
                action = actor(x)[0].cpu().numpy()
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        returns.append(total)
        env.close()
    return np.array(returns)


def rotated_reset(base: Any, qpos: np.ndarray, qvel: np.ndarray, target: np.ndarray) -> Any:
    """Put ``base`` (an unwrapped ``envs.Locomotion3DEnv``) in state (qpos, qvel) with target
    direction ``target`` and return its observation."""
    base.set_state(qpos, qvel)
    base.target_direction = target
    return base.observation()


def plot_orbits(
    angles: np.ndarray, curves: dict[str, np.ndarray], ylabel: str, path: str, title: str = ""
) -> None:
    """Line plot of ``curves`` (name -> values per angle) against degrees, saved atomically."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, values in curves.items():
        ax.plot(np.degrees(angles), values, marker="o", ms=3, label=name)
    ax.set_xlabel("rotation of the scene about the vertical axis (deg)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_figure(fig, path, dpi=120)
    plt.close(fig)
