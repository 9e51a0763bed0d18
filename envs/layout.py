"""Observation and action layout shared by every 3D locomotion env and every policy.

Two views of the same data (see ``envs.locomotion.Locomotion3DEnv``):

* graph view, per limb ``l`` (limb 0 is the torso):
  ``vectors[l]`` (NUM_VECTORS, 3) — rotate with the world about the vertical axis;
  ``scalars[l]`` (NUM_SCALARS,) — invariant; ``mask[l]`` 1 for a real limb, 0 for padding;
  ``parents[l]`` index of the parent limb (-1 for the torso and for padding).
* flat view: the concatenation ``[vectors.ravel(), scalars.ravel(), mask, parents]`` padded to
  ``max_limbs`` limbs, i.e. ``max_limbs * PER_LIMB`` numbers. ``max_limbs`` defaults to
  ``MAX_LIMBS`` (the largest agent of the catalogue) so one vector env can mix morphologies.

Actions: ``(max_limbs, 3)`` torques in [-1, 1] flattened row-major; row ``l`` drives the x, y, z
hinges of limb ``l``. The torso row and padded rows are ignored.

``decode_flat`` works on numpy arrays and torch tensors alike (only reshapes and slices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_LIMBS = 14
"""Bodies of the largest catalogue agent (cheetah_14); the default padding of the flat view."""

VECTOR_NAMES = (
    "position",  # limb body origin minus torso origin (data.xpos, world frame)
    "gravity",  # unit gravity direction, (0, 0, -1)
    "target",  # unit horizontal target direction
    "linear_velocity",  # limb origin velocity, norm clipped to 10
    "angular_velocity",  # limb angular velocity (world frame), norm clipped to 10
    "axis_x",  # world-frame axis of the limb's x hinge, MuJoCo's data.xaxis (torso: body x axis)
    "axis_y",  # y hinge axis (turned by the x hinge before it)
    "axis_z",  # z hinge axis (turned by the x and y hinges before it)
)
SCALAR_NAMES = (
    "angle_x", "angle_y", "angle_z",  # hinge angles (rad); 0 for the torso
    "angle_norm_x", "angle_norm_y", "angle_norm_z",  # angles mapped to [-1, 1] over the range
    "range_lo_x", "range_lo_y", "range_lo_z",  # joint ranges (rad)
    "range_hi_x", "range_hi_y", "range_hi_z",
    "gear_x", "gear_y", "gear_z",  # motor gears / 100
    "depth_0", "depth_1", "depth_2", "depth_3plus",  # one-hot depth in the tree (limb type)
    "is_leaf",
    "height",  # absolute height of the limb origin
    "length", "radius",  # capsule size
    "joint_vel_x", "joint_vel_y", "joint_vel_z",  # hinge velocities, clipped to +-10
)  # fmt: skip
NUM_VECTORS = len(VECTOR_NAMES)
NUM_SCALARS = len(SCALAR_NAMES)
VECTOR_INDEX = {name: i for i, name in enumerate(VECTOR_NAMES)}
SCALAR_INDEX = {name: i for i, name in enumerate(SCALAR_NAMES)}


def xyz(prefix: str) -> tuple[str, str, str]:
    """The names of a per-hinge field, e.g. ``xyz("axis") == ("axis_x", "axis_y", "axis_z")``."""
    return (f"{prefix}_x", f"{prefix}_y", f"{prefix}_z")


def _span(names: tuple[str, ...], index: dict[str, int], kind: str) -> slice:
    cols = []
    for name in names:
        if name not in index:
            raise KeyError(f"unknown {kind} field {name!r}; expected one of {tuple(index)}")
        cols.append(index[name])
    if not cols or cols != list(range(cols[0], cols[0] + len(cols))):
        raise ValueError(f"{kind} fields {names} are not adjacent in the layout")
    return slice(cols[0], cols[0] + len(cols))


def vector_slice(*names: str) -> slice:
    """The columns of adjacent vector fields, e.g. ``vector_slice(*xyz("axis"))``."""
    return _span(names, VECTOR_INDEX, "vector")


def scalar_slice(*names: str) -> slice:
    """The columns of adjacent scalar fields, e.g. ``scalar_slice(*xyz("angle"))``."""
    return _span(names, SCALAR_INDEX, "scalar")


PER_LIMB = NUM_VECTORS * 3 + NUM_SCALARS + 2
ACTIONS_PER_LIMB = 3


@dataclass(frozen=True)
class ObsLayout:
    """Slices of the flat view for a given padding ``max_limbs``."""

    max_limbs: int = MAX_LIMBS

    def __post_init__(self) -> None:
        if not isinstance(self.max_limbs, int) or self.max_limbs < 1:
            raise ValueError(f"max_limbs must be a positive int, got {self.max_limbs!r}")

    @property
    def flat_dim(self) -> int:
        return self.max_limbs * PER_LIMB

    @property
    def action_dim(self) -> int:
        return self.max_limbs * ACTIONS_PER_LIMB

    @classmethod
    def from_flat_dim(cls, dim: int) -> ObsLayout:
        """The layout whose flat view has ``dim`` numbers; ValueError if there is none."""
        if dim <= 0 or dim % PER_LIMB != 0:
            raise ValueError(
                f"observation size {dim} matches no limb layout: expected a positive multiple of "
                f"{PER_LIMB} numbers per limb (e.g. {MAX_LIMBS * PER_LIMB} for {MAX_LIMBS} limbs)"
            )
        return cls(dim // PER_LIMB)

    def bounds(self) -> tuple[int, int, int, int, int]:
        """Offsets where the vectors, scalars, mask and parents blocks start, and the end."""
        v_end = self.max_limbs * NUM_VECTORS * 3
        s_end = v_end + self.max_limbs * NUM_SCALARS
        m_end = s_end + self.max_limbs
        return 0, v_end, s_end, m_end, m_end + self.max_limbs


def decode_flat(obs: Any) -> dict[str, Any]:
    """Split a batch of flat observations ``(..., max_limbs * PER_LIMB)`` into the graph view.

    Returns ``vectors`` (..., L, NUM_VECTORS, 3), ``scalars`` (..., L, NUM_SCALARS), ``mask``
    (..., L) and ``parents`` (..., L) as views of ``obs`` (numpy array or torch tensor).
    Raises ValueError when the last dimension matches no layout.
    """
    layout = ObsLayout.from_flat_dim(int(obs.shape[-1]))
    lead = tuple(obs.shape[:-1])
    n = layout.max_limbs
    v0, v1, s1, m1, p1 = layout.bounds()
    return {
        "vectors": obs[..., v0:v1].reshape(*lead, n, NUM_VECTORS, 3),
        "scalars": obs[..., v1:s1].reshape(*lead, n, NUM_SCALARS),
        "mask": obs[..., s1:m1],
        "parents": obs[..., m1:p1],
    }
