"""The catalogue: four families of 3D agents, their multi-task suites and held-out agents.

Body counts (torso included) follow 3D-SGRL: hopper 3-5, walker 2-7, humanoid 7-9, cheetah
10-14. Suites follow its naming: Hopper++ (3 agents), Walker++ (6), Humanoid++ (6),
Cheetah++ (8), WHH++ (15 = walker + humanoid + hopper), CWHH++ (23 = all four). Each family
also has held-out agents (never in a suite's training set) for zero-shot tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

import numpy as np

from envs.builder import PhysicsSettings
from envs.morphology import Limb, Morphology

DOWN = (0.0, 0.0, -1.0)
FORWARD = (1.0, 0.0, 0.0)


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
        up_axis: torso body axis that points up at rest (0 = x, 2 = z).
    """

    physics: PhysicsSettings
    frame_skip: int
    alive_bonus: float
    heading_reward: bool
    height_band: tuple[float, float]
    max_tilt: float
    speed_limit: float
    up_axis: int = 2


FAMILIES: dict[str, FamilySpec] = {
    "hopper": FamilySpec(PhysicsSettings(0.002, "RK4"), 4, 1.0, False, (0.55, 2.0), 1.0, 0.477),
    "walker": FamilySpec(PhysicsSettings(0.002, "RK4"), 4, 1.0, True, (0.55, 2.0), 1.0, 0.495),
    "humanoid": FamilySpec(PhysicsSettings(0.002, "RK4"), 4, 1.0, True, (0.6, 2.0), 1.0, 0.287),
    "cheetah": FamilySpec(
        PhysicsSettings(0.01, "implicitfast", joint_damping=2.0),
        4, 0.0, True, (0.25, 4.0), 1.35, 0.313,
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
        limbs.append(Limb(p.name, parent, p.anchor, p.direction, p.length, p.radius,
                          p.joint_ranges, p.gears))  # fmt: skip
    return Morphology(name, family, tuple(limbs), height)


def _hopper(name: str, n: int, leg: float = 1.0) -> Morphology:
    parts = [
        _limb("torso", -1, (0, 0, 0), (0, 0, 1), 0.4, 0.05),
        _limb("thigh", 0, (0, 0, -0.2), DOWN, 0.45 * leg, 0.05, gears=(150, 150, 150)),
        _limb("leg", 1, (0, 0, -0.45 * leg), DOWN, 0.5 * leg, 0.04, gears=(150, 150, 150)),
        _limb("foot", 2, (0, 0, -0.5 * leg), FORWARD, 0.26, 0.06, gears=(80, 80, 80)),
        _limb("toe", 3, (0.26, 0, 0), FORWARD, 0.12, 0.04, gears=(40, 40, 40)),
    ]
    height = 0.2 + 0.95 * leg + (0.06 if n >= 4 else 0.04) + 0.01
    return _select(name, "hopper", parts, [p.name for p in parts[1:n]], height)


def _walker_parts(leg: float = 1.0) -> list[Limb]:
    parts = [_limb("torso", -1, (0, 0, 0), (0, 0, 1), 0.4, 0.05)]
    for side, y in (("left", 0.1), ("right", -0.1)):
        t = len(parts)
        parts += [
            _limb(f"{side}_thigh", 0, (0, y, -0.2), DOWN, 0.45 * leg, 0.05),
            _limb(f"{side}_leg", t, (0, 0, -0.45 * leg), DOWN, 0.5 * leg, 0.04),
            _limb(f"{side}_foot", t + 1, (0, 0, -0.5 * leg), FORWARD, 0.2, 0.06, gears=(60,) * 3),
        ]
    return parts


def _walker(name: str, keep: list[str], leg: float = 1.0) -> Morphology:
    parts = _walker_parts(leg)
    lower = any(k.endswith(("leg", "foot")) for k in keep)
    height = 0.2 + 0.45 * leg + (0.5 * leg if lower else 0.0)
    height += 0.07 if any(k.endswith("foot") for k in keep) else 0.06
    return _select(name, "walker", parts, keep, height)


def _humanoid_parts(arm: float = 1.0) -> list[Limb]:
    parts = [_limb("torso", -1, (0, 0, 0), (0, 0, 1), 0.5, 0.07)]
    for side, y in (("left", 0.1), ("right", -0.1)):
        t = len(parts)
        parts += [
            _limb(f"{side}_thigh", 0, (0, y, -0.25), DOWN, 0.4, 0.06),
            _limb(f"{side}_shin", t, (0, 0, -0.4), DOWN, 0.4, 0.05),
        ]
    for side, y in (("left", 1.0), ("right", -1.0)):
        u = len(parts)
        parts += [
            _limb(f"{side}_upper_arm", 0, (0, 0.17 * y, 0.2), (0, 0.3 * y, -1), 0.28 * arm, 0.04,
                  gears=(40, 40, 40)),
            _limb(f"{side}_lower_arm", u, (0, 0.084 * y * arm, -0.28 * arm), (1, 0, -1),
                  0.25 * arm, 0.035, gears=(25, 25, 25)),
        ]  # fmt: skip
    return parts


def _humanoid(name: str, arms: list[str], arm: float = 1.0) -> Morphology:
    legs = [f"{s}_{p}" for s in ("left", "right") for p in ("thigh", "shin")]
    return _select(name, "humanoid", _humanoid_parts(arm), legs + arms, 0.25 + 0.8 + 0.06)


def _cheetah_parts(leg: float = 1.0) -> list[Limb]:
    parts = [
        _limb("torso", -1, (0, 0, 0), (1, 0, 0), 1.0, 0.046),
        _limb("head", 0, (0.5, 0, 0), (1, 0, 1), 0.3, 0.046, gears=(30, 30, 30)),
    ]
    for end, x in (("front", 0.5), ("back", -0.5)):
        for side, y in (("left", 0.12), ("right", -0.12)):
            t = len(parts)
            parts += [
                _limb(f"{end}_{side}_thigh", 0, (x, y, 0), (0.2 * np.sign(x), 0, -1), 0.25 * leg,
                      0.046, gears=(120, 120, 120)),
                _limb(f"{end}_{side}_shin", t, (0.05 * np.sign(x) * leg, 0, -0.245 * leg),
                      (-0.3 * np.sign(x), 0, -1), 0.22 * leg, 0.046, gears=(90, 90, 90)),
                _limb(f"{end}_{side}_foot", t + 1, (-0.063 * np.sign(x) * leg, 0, -0.21 * leg),
                      (0.2, 0, -1), 0.12 * leg, 0.046, gears=(60, 60, 60)),
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
