"""Rotations about the vertical axis, applied to states, vectors and directions.

Under a rotation R_z(θ) of the whole world: the free joint's position and linear velocity
rotate, its orientation is pre-multiplied by the rotation's quaternion, its angular velocity
(MuJoCo stores it in the body frame) is unchanged, and hinge angles and velocities are
unchanged. Used by the symmetry tests and the equivariance audits of policies.
"""

from __future__ import annotations

import numpy as np


def rotation_z(angle: float) -> np.ndarray:
    """The 3×3 rotation matrix about the vertical axis."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def quat_z(angle: float) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of the rotation about the vertical axis."""
    return np.array([np.cos(angle / 2), 0.0, 0.0, np.sin(angle / 2)])


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a ⊗ b of (w, x, y, z) quaternions."""
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
    ])  # fmt: skip


def rotate_state(qpos: np.ndarray, qvel: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """The state of a free-floating agent rotated by ``angle`` about the vertical axis.

    Assumes the free joint comes first (qpos[:7] = position, quaternion; qvel[:6] = linear
    velocity in the world frame, angular velocity in the body frame), as in every catalogue agent.
    """
    qpos, qvel = np.array(qpos, dtype=float), np.array(qvel, dtype=float)
    if qpos.ndim != 1 or qpos.size < 7 or qvel.ndim != 1 or qvel.size != qpos.size - 1:
        raise ValueError(
            f"expected a free-joint state with qpos (nq >= 7,) and qvel (nq - 1,), "
            f"got {qpos.shape} and {qvel.shape}"
        )
    rot = rotation_z(angle)
    qpos[:3] = rot @ qpos[:3]
    qpos[3:7] = quat_mul(quat_z(angle), qpos[3:7])
    qvel[:3] = rot @ qvel[:3]
    return qpos, qvel


def rotate_vectors(vectors: np.ndarray, angle: float) -> np.ndarray:
    """Rotate an array of 3-vectors (..., 3) about the vertical axis."""
    return np.asarray(vectors) @ rotation_z(angle).T
