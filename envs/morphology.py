"""Morphologies as data: a tree of capsule limbs.

A :class:`Morphology` lists its limbs in topological order (parents before children); limb 0
is the torso, which hangs from the world by a free joint. Every other limb hangs from its parent
by three hinges about its body's x, y and z axes, each driven by a motor with control range
[-1, 1] and its own gear (gear 0 leaves that hinge passive, as in 3D-SGRL's reference agents).
All body frames start aligned with the world, so anchors and directions are given in world axes
for the agent standing at heading 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Vec3 = tuple[float, float, float]
Range = tuple[float, float]


@dataclass(frozen=True)
class Limb:
    """One capsule limb.

    Attributes:
        name: unique name (becomes the MuJoCo body name).
        parent: index of the parent limb in ``Morphology.limbs`` (-1 for the torso only).
        anchor: origin of this limb's body in its parent's frame (m); the hinges sit here.
        direction: unit axis of the capsule from the anchor (torso: centred on its origin).
        length: capsule length between the end-point centres (m).
        radius: capsule radius (m).
        joint_ranges: (lo, hi) in radians for the x, y and z hinges.
        gears: motor gears for the x, y and z hinges (N·m per unit of action; 0 = passive).
        damping: damping of the three hinges (N·m·s/rad); None takes the family's default.
        stiffness: passive spring of the three hinges towards the rest pose (N·m/rad).
        mass: mass of the capsule (kg); None takes it from the family's density.
    """

    name: str
    parent: int
    anchor: Vec3
    direction: Vec3
    length: float
    radius: float
    joint_ranges: tuple[Range, Range, Range] = ((-0.6, 0.6), (-1.0, 1.0), (-0.6, 0.6))
    gears: Vec3 = (100.0, 100.0, 100.0)
    damping: float | None = None
    stiffness: float = 0.0
    mass: float | None = None

    def end_point(self) -> np.ndarray:
        """The far end of the capsule axis in this limb's frame."""
        return np.asarray(self.direction, dtype=float) * self.length


@dataclass(frozen=True)
class Morphology:
    """An agent: its limbs, its family and the family's simulation settings.

    Attributes:
        name: catalogue name, e.g. ``"walker_5"``.
        family: one of ``"hopper"``, ``"walker"``, ``"humanoid"``, ``"cheetah"``.
        limbs: the limbs, torso first, parents before children.
        torso_height: initial height of the torso origin (m), feet just above the floor.
    """

    name: str
    family: str
    limbs: tuple[Limb, ...]
    torso_height: float
    tags: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        validate(self)

    @property
    def num_limbs(self) -> int:
        return len(self.limbs)

    @property
    def parents(self) -> np.ndarray:
        return np.array([limb.parent for limb in self.limbs], dtype=np.int64)

    def depths(self) -> np.ndarray:
        """Depth of every limb in the tree (torso 0)."""
        depth = np.zeros(self.num_limbs, dtype=np.int64)
        for i, limb in enumerate(self.limbs[1:], start=1):
            depth[i] = depth[limb.parent] + 1
        return depth

    def is_leaf(self) -> np.ndarray:
        leaf = np.ones(self.num_limbs, dtype=bool)
        leaf[[limb.parent for limb in self.limbs[1:]]] = False
        return leaf


def validate(morph: Morphology) -> None:
    """Raise ValueError when the limb tree is malformed."""
    if not morph.limbs:
        raise ValueError(f"morphology {morph.name!r} has no limbs; expected a torso first")
    if morph.limbs[0].parent != -1:
        raise ValueError(f"morphology {morph.name!r}: limb 0 must be the torso with parent -1")
    names = [limb.name for limb in morph.limbs]
    if len(set(names)) != len(names):
        raise ValueError(f"morphology {morph.name!r}: limb names must be unique, got {names}")
    for i, limb in enumerate(morph.limbs[1:], start=1):
        if not 0 <= limb.parent < i:
            raise ValueError(
                f"morphology {morph.name!r}: limb {limb.name!r} has parent {limb.parent}; "
                f"expected an index in [0, {i}) (parents before children)"
            )
    for limb in morph.limbs:
        _validate_limb(limb)


def _validate_limb(limb: Limb) -> None:
    if limb.length <= 0 or limb.radius <= 0:
        raise ValueError(f"limb {limb.name!r}: length and radius must be positive")
    if abs(np.linalg.norm(limb.direction) - 1.0) > 1e-6:
        raise ValueError(f"limb {limb.name!r}: direction {limb.direction} is not a unit vector")
    if any(not (np.isfinite(g) and g >= 0) for g in limb.gears):
        raise ValueError(f"limb {limb.name!r}: gears must be finite and >= 0, got {limb.gears}")
    if limb.mass is not None and not (np.isfinite(limb.mass) and limb.mass > 0):
        raise ValueError(f"limb {limb.name!r}: mass must be finite and > 0, got {limb.mass}")
    for name, value in (("damping", limb.damping), ("stiffness", limb.stiffness)):
        if value is not None and not (np.isfinite(value) and value >= 0):
            raise ValueError(f"limb {limb.name!r}: {name} must be finite and >= 0, got {value}")
    for lo, hi in limb.joint_ranges:
        if not lo < hi:
            raise ValueError(f"limb {limb.name!r}: joint range ({lo}, {hi}) needs lo < hi")
