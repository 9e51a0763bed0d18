"""The catalogue: four families of 3D agents, their multi-task suites and held-out agents.

Body counts (torso included) follow 3D-SGRL: hopper 3-5, walker 2-7, humanoid 7-9, cheetah
10-14. Suites follow its naming: Hopper++ (3 agents), Walker++ (6), Humanoid++ (6),
Cheetah++ (8), WHH++ (15 = walker + humanoid + hopper), CWHH++ (23 = all four). Each family
also has held-out agents (never in a suite's training set) for zero-shot tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cache

import numpy as np

from envs.builder import PhysicsSettings
from envs.morphology import Limb, Morphology

DOWN = (0.0, 0.0, -1.0)
FORWARD = (1.0, 0.0, 0.0)
Ranges = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]


def _deg(x: tuple[float, float], y: tuple[float, float], z: tuple[float, float]) -> Ranges:
    """Hinge ranges (x, y, z) from degrees to radians.

    Ranges follow 3D-SGRL's agents, rewritten for our hinge axes: the reference turns its y
    hinges about -y, so a reference y range (a, b) is (-b, -a) here (positive y swings a
    hanging limb backwards: knees bend with positive angles).
    """
    return tuple((float(np.radians(lo)), float(np.radians(hi))) for lo, hi in (x, y, z))


def _mirror(ranges: Ranges) -> Ranges:
    """The left-side ranges of a right-side limb: x and z hinges turn the other way."""
    (xl, xh), y, (zl, zh) = ranges
    return ((-xh, -xl), y, (-zh, -zl))


def _side(side: str, ranges: Ranges) -> Ranges:
    return ranges if side == "right" else _mirror(ranges)


# Right-side hinge ranges of 3D-SGRL's agents (degrees, our axes). A +-1 degree range with a
# passive (gear 0) hinge is how the reference keeps, e.g., a knee a one-axis hinge.
HOPPER_JOINT = _deg((-10, 10), (0, 150), (-10, 10))
HOPPER_FOOT = _deg((-10, 10), (-45, 45), (-10, 10))
THIGH = _deg((-25, 5), (-110, 20), (-60, 35))
KNEE = _deg((-1, 1), (0, 160), (-1, 1))  # reference (2, 160): ours includes the rest pose
WALKER_FOOT = _deg((-1, 1), (-45, 45), (-30, 5))
UPPER_ARM = _deg((-85, 60), (-85, 60), (-1, 1))
LOWER_ARM = _deg((-1, 1), (-90, 50), (-1, 1))
CHEETAH = {  # part: (ranges, gears, damping, stiffness)
    "head": (_deg((-20, 20), (-80, 80), (-1, 1)), (70, 70, 0), 3.5, 0.0),
    "back_thigh": (_deg((-10, 0), (-30, 60), (-15, 5)), (120, 120, 120), 6.0, 240.0),
    "back_shin": (_deg((-1, 1), (-45, 45), (-1, 1)), (0, 90, 0), 4.5, 180.0),
    "back_foot": (_deg((-1, 1), (-25, 45), (-15, 5)), (0, 60, 60), 3.0, 120.0),
    "front_thigh": (_deg((-15, 5), (-60, 40), (-20, 10)), (120, 120, 120), 4.5, 180.0),
    "front_shin": (_deg((-1, 1), (-70, 50), (-1, 1)), (0, 60, 0), 3.0, 120.0),
    "front_foot": (_deg((-1, 1), (-30, 30), (-20, 5)), (0, 30, 30), 1.5, 60.0),
}
# Torso masses (kg). The reference torsos are several geoms (waist, pelvis, head): 10.7 kg for
# the walker and 17.8 kg for the humanoid at density 1000, legs close to ours; the cheetah's
# 26.3 kg sits on legs twice as heavy as ours, so ours keeps its torso/thigh ratio (14.7 kg).
TORSO_MASS = {"walker": 10.7, "humanoid": 17.8, "cheetah": 14.7}


@dataclass(frozen=True)
class FamilySpec:
    """Per-family settings of the task.

    Attributes:
        physics: simulation settings (timestep, integrator).
        frame_skip: physics steps per env step.
        alive_bonus: reward per step while healthy (hopper/walker/humanoid: 1).
        heading_reward: add the speed along the direction the torso faces.
        height_band: healthy torso height as fractions of the initial height.
        max_tilt: healthy if the torso's up axis is within this angle of vertical (rad).
        speed_limit: velocity-cost threshold on horizontal torso speed (m/s). Chosen as in
            Safety-Gymnasium: half the mean horizontal speed an unconstrained PPO agent reaches;
            measured by ``experiments/velocity_thresholds.py`` (budget and seeds in README).
        stall_steps: end the episode once the agent has stood still (summed squared
            generalised velocity ``|qvel|² ≤ 1``, 3D-SGRL's cheetah rule) for this many
            consecutive steps; 0 never ends it. The reference ends at the first still step; a
            short window keeps an episode from ending at its first step or at a bounce's apex.
    """

    physics: PhysicsSettings
    frame_skip: int
    alive_bonus: float
    heading_reward: bool
    height_band: tuple[float, float]
    max_tilt: float
    speed_limit: float
    stall_steps: int = 0


FAMILIES: dict[str, FamilySpec] = {
    "hopper": FamilySpec(
        PhysicsSettings(0.002, "RK4", armature=1.0), 4, 1.0, False, (0.55, 2.0), 1.0, 0.442
    ),
    "walker": FamilySpec(PhysicsSettings(0.002, "RK4"), 4, 1.0, True, (0.55, 2.0), 1.0, 0.366),
    "humanoid": FamilySpec(PhysicsSettings(0.002, "RK4"), 4, 1.0, True, (0.6, 2.0), 1.0, 0.389),
    "cheetah": FamilySpec(
        PhysicsSettings(0.01, "implicitfast", joint_damping=2.0, armature=0.1),
        4, 0.0, True, (0.25, 4.0), 1.35, 0.296, stall_steps=20,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Suite:
    """A multi-task suite: agents trained together, and held-out agents for zero-shot tests."""

    name: str
    train: tuple[str, ...]
    heldout: tuple[str, ...]


@dataclass(frozen=True)
class Catalogue:
    """Every agent by name and every suite by name."""

    agents: dict[str, Morphology]
    suites: dict[str, Suite]

    def family(self, name: str) -> tuple[str, ...]:
        """Names of the agents of one family."""
        if name not in FAMILIES:
            raise KeyError(f"unknown family {name!r}; expected one of {sorted(FAMILIES)}")
        return tuple(n for n, m in self.agents.items() if m.family == name)


def _limb(name: str, parent: int, anchor, direction, length: float, radius: float, **kw) -> Limb:
    d = np.asarray(direction, dtype=float)
    d = tuple(float(v) for v in d / np.linalg.norm(d))
    return Limb(name, parent, tuple(float(v) for v in anchor), d, length, radius, **kw)


def _select(name: str, family: str, parts: list[Limb], keep: Iterable[str], height: float):
    """A morphology made of the torso and the named parts (re-indexing parents)."""
    keep = set(keep) | {parts[0].name}
    kept = [p for p in parts if p.name in keep]
    index = {p.name: i for i, p in enumerate(kept)}
    limbs = []
    for p in kept:
        parent = -1 if p.parent < 0 else index.get(parts[p.parent].name)
        if parent is None:
            raise ValueError(f"{name}: part {p.name!r} kept without its parent")
        limbs.append(replace(p, parent=parent))
    return Morphology(name, family, tuple(limbs), height)


def _hopper(name: str, n: int, leg: float = 1.0) -> Morphology:
    hinge = {"joint_ranges": HOPPER_JOINT, "gears": (200, 200, 200)}
    parts = [
        _limb("torso", -1, (0, 0, 0), (0, 0, 1), 0.4, 0.05),
        _limb("thigh", 0, (0, 0, -0.2), DOWN, 0.45 * leg, 0.05, **hinge),
        _limb("leg", 1, (0, 0, -0.45 * leg), DOWN, 0.5 * leg, 0.04, **hinge),
        _limb("foot", 2, (0, 0, -0.5 * leg), FORWARD, 0.26, 0.06, joint_ranges=HOPPER_FOOT,
              gears=(200, 200, 200)),
        _limb("toe", 3, (0.26, 0, 0), FORWARD, 0.12, 0.04, joint_ranges=HOPPER_FOOT,
              gears=(100, 100, 100)),
    ]  # fmt: skip
    height = 0.2 + 0.95 * leg + (0.06 if n >= 4 else 0.04) + 0.01
    return _select(name, "hopper", parts, [p.name for p in parts[1:n]], height)


def _walker_parts(leg: float = 1.0) -> list[Limb]:
    parts = [_limb("torso", -1, (0, 0, 0), (0, 0, 1), 0.4, 0.05, mass=TORSO_MASS["walker"])]
    for side, y in (("left", 0.1), ("right", -0.1)):
        t = len(parts)
        parts += [
            _limb(f"{side}_thigh", 0, (0, y, -0.2), DOWN, 0.45 * leg, 0.05,
                  joint_ranges=_side(side, THIGH), gears=(100, 100, 100)),
            _limb(f"{side}_leg", t, (0, 0, -0.45 * leg), DOWN, 0.5 * leg, 0.04,
                  joint_ranges=_side(side, KNEE), gears=(0, 100, 0)),
            _limb(f"{side}_foot", t + 1, (0, 0, -0.5 * leg), FORWARD, 0.2, 0.06,
                  joint_ranges=_side(side, WALKER_FOOT), gears=(0, 100, 100)),
        ]  # fmt: skip
    return parts


def _walker(name: str, keep: list[str], leg: float = 1.0) -> Morphology:
    parts = _walker_parts(leg)
    lower = any(k.endswith(("leg", "foot")) for k in keep)
    height = 0.2 + 0.45 * leg + (0.5 * leg if lower else 0.0)
    height += 0.07 if any(k.endswith("foot") for k in keep) else 0.06
    return _select(name, "walker", parts, keep, height)


def _humanoid_parts(arm: float = 1.0) -> list[Limb]:
    parts = [_limb("torso", -1, (0, 0, 0), (0, 0, 1), 0.5, 0.07, mass=TORSO_MASS["humanoid"])]
    for side, y in (("left", 0.1), ("right", -0.1)):
        t = len(parts)
        parts += [
            _limb(f"{side}_thigh", 0, (0, y, -0.25), DOWN, 0.4, 0.06,
                  joint_ranges=_side(side, THIGH), gears=(100, 300, 100), damping=5.0,
                  stiffness=10.0),
            _limb(f"{side}_shin", t, (0, 0, -0.4), DOWN, 0.4, 0.05,
                  joint_ranges=_side(side, KNEE), gears=(0, 200, 0), stiffness=1.0),
        ]  # fmt: skip
    for side, y in (("left", 1.0), ("right", -1.0)):
        u = len(parts)
        parts += [
            _limb(f"{side}_upper_arm", 0, (0, 0.17 * y, 0.2), (0, 0.3 * y, -1), 0.28 * arm, 0.04,
                  joint_ranges=_side(side, UPPER_ARM), gears=(25, 25, 0), stiffness=1.0),
            _limb(f"{side}_lower_arm", u, (0, 0.084 * y * arm, -0.28 * arm), (1, 0, -1),
                  0.25 * arm, 0.035, joint_ranges=_side(side, LOWER_ARM), gears=(0, 25, 0)),
        ]  # fmt: skip
    return parts


def _humanoid(name: str, arms: list[str], arm: float = 1.0) -> Morphology:
    legs = [f"{s}_{p}" for s in ("left", "right") for p in ("thigh", "shin")]
    return _select(name, "humanoid", _humanoid_parts(arm), legs + arms, 0.25 + 0.8 + 0.06)


def _cheetah_limb(part: str, side: str, *args, **kw) -> Limb:
    """A cheetah limb with the reference's hinge ranges, gears, damping and springs."""
    ranges, gears, damping, stiffness = CHEETAH[part]
    return _limb(*args, joint_ranges=_side(side, ranges), gears=gears, damping=damping,
                 stiffness=stiffness, **kw)  # fmt: skip


def _cheetah_parts(leg: float = 1.0) -> list[Limb]:
    parts = [
        _limb("torso", -1, (0, 0, 0), (1, 0, 0), 1.0, 0.046, mass=TORSO_MASS["cheetah"]),
        _cheetah_limb("head", "right", "head", 0, (0.5, 0, 0), (1, 0, 1), 0.3, 0.046),
    ]
    for end, x in (("front", 0.5), ("back", -0.5)):
        for side, y in (("left", 0.12), ("right", -0.12)):
            t, sx = len(parts), float(np.sign(x))
            parts += [
                _cheetah_limb(f"{end}_thigh", side, f"{end}_{side}_thigh", 0, (x, y, 0),
                              (0.2 * sx, 0, -1), 0.25 * leg, 0.046),
                _cheetah_limb(f"{end}_shin", side, f"{end}_{side}_shin", t,
                              (0.05 * sx * leg, 0, -0.245 * leg), (-0.3 * sx, 0, -1), 0.22 * leg,
                              0.046),
                _cheetah_limb(f"{end}_foot", side, f"{end}_{side}_foot", t + 1,
                              (-0.063 * sx * leg, 0, -0.21 * leg), (0.2, 0, -1), 0.12 * leg,
                              0.046),
            ]  # fmt: skip
    return parts


def _cheetah(name: str, drop: list[str], leg: float = 1.0) -> Morphology:
    parts = _cheetah_parts(leg)
    keep = [p.name for p in parts[1:] if p.name not in drop]
    feet = any(k.endswith("foot") for k in keep)
    height = (0.245 + 0.21 + (0.118 if feet else 0.0)) * leg + 0.046 + 0.01
    return _select(name, "cheetah", parts, keep, height)


def _build_agents() -> dict[str, Morphology]:
    walker_order = ["left_thigh", "right_thigh", "left_leg", "right_leg", "left_foot",
                    "right_foot"]  # fmt: skip
    agents = [
        _hopper("hopper_3", 3), _hopper("hopper_4", 4), _hopper("hopper_5", 5),
        _hopper("hopper_4b", 4, leg=1.15),
        *[_walker(f"walker_{k}", walker_order[: k - 1]) for k in range(2, 8)],
        _walker("walker_3b", ["left_thigh", "left_leg"]),
        _walker("walker_5b", ["left_thigh", "left_leg", "left_foot", "right_thigh"], leg=0.9),
        _humanoid("humanoid_7", ["left_upper_arm", "right_upper_arm"]),
        _humanoid("humanoid_7b", ["left_upper_arm", "left_lower_arm"]),
        _humanoid("humanoid_7c", ["right_upper_arm", "right_lower_arm"]),
        _humanoid("humanoid_8", ["left_upper_arm", "right_upper_arm", "left_lower_arm"]),
        _humanoid("humanoid_8b", ["left_upper_arm", "right_upper_arm", "right_lower_arm"]),
        _humanoid("humanoid_9", ["left_upper_arm", "right_upper_arm", "left_lower_arm",
                                 "right_lower_arm"]),
        _humanoid("humanoid_9b", ["left_upper_arm", "right_upper_arm", "left_lower_arm",
                                  "right_lower_arm"], arm=1.3),
        _humanoid("humanoid_9c", ["left_upper_arm", "right_upper_arm", "left_lower_arm",
                                  "right_lower_arm"], arm=0.8),
    ]  # fmt: skip
    feet = ["front_left_foot", "front_right_foot", "back_left_foot", "back_right_foot"]
    cheetahs = [
        ("cheetah_14", []), ("cheetah_14b", []), ("cheetah_13", ["head"]),
        ("cheetah_13b", feet[:1]), ("cheetah_12", ["head", feet[0]]), ("cheetah_12b", feet[:2]),
        ("cheetah_11", ["head", *feet[:2]]), ("cheetah_11b", feet[:3]),
        ("cheetah_10", ["head", *feet[:3]]), ("cheetah_10b", feet),
    ]  # fmt: skip
    agents += [_cheetah(n, d, leg=1.2 if n.endswith("14b") else 1.0) for n, d in cheetahs]
    return {a.name: a for a in agents}


def _build_suites(agents: dict[str, Morphology]) -> dict[str, Suite]:
    heldout = {
        "hopper": ("hopper_4b",),
        "walker": ("walker_3", "walker_6"),
        "humanoid": ("humanoid_7", "humanoid_8"),
        "cheetah": ("cheetah_11", "cheetah_12"),
    }

    def family_suite(label: str, family: str) -> Suite:
        names = tuple(n for n, m in agents.items() if m.family == family)
        return Suite(label, tuple(n for n in names if n not in heldout[family]), heldout[family])

    single = {
        "Hopper++": family_suite("Hopper++", "hopper"),
        "Walker++": family_suite("Walker++", "walker"),
        "Humanoid++": family_suite("Humanoid++", "humanoid"),
        "Cheetah++": family_suite("Cheetah++", "cheetah"),
    }

    def union(label: str, parts: list[str]) -> Suite:
        return Suite(
            label,
            tuple(a for p in parts for a in single[p].train),
            tuple(a for p in parts for a in single[p].heldout),
        )

    return {
        **single,
        "WHH++": union("WHH++", ["Walker++", "Humanoid++", "Hopper++"]),
        "CWHH++": union("CWHH++", ["Cheetah++", "Walker++", "Humanoid++", "Hopper++"]),
    }


@cache
def catalogue() -> Catalogue:
    """The catalogue of agents and suites (built once)."""
    agents = _build_agents()
    return Catalogue(agents, _build_suites(agents))


def get_morphology(name: str) -> Morphology:
    """The catalogue agent ``name``; KeyError naming the known agents otherwise."""
    agents = catalogue().agents
    if name not in agents:
        raise KeyError(f"unknown agent {name!r}; expected one of {sorted(agents)}")
    return agents[name]
