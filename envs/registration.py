"""Gymnasium ids of every env of this package, and ``make``.

3D tasks: ``Saferl3D-<Agent>-v0`` (fixed target direction per episode) and
``Saferl3D-<Agent>-Waypoint-v0`` for every catalogue agent, e.g. ``Saferl3D-Walker5-v0`` for
``walker_5``. Planar tasks: ``SaferlPlanar-<Robot>Velocity-v1`` (Safety-Gymnasium v1, on
Gymnasium's v4 robots, as DSRL's datasets) and ``-v0`` (the same costs on the v5 robots); see
:mod:`envs.planar`. Episodes last 1000 steps.
"""

from __future__ import annotations

import difflib

import gymnasium as gym

from envs.catalogue import catalogue
from envs.planar import PLANAR_TASKS, planar_id

MAX_EPISODE_STEPS = 1000
_IDS: list[str] = []


def env_id(agent: str, task: str = "direction") -> str:
    """The Gymnasium id of a catalogue agent's task."""
    family, _, size = agent.partition("_")
    suffix = {"direction": "", "waypoint": "-Waypoint"}[task]
    return f"Saferl3D-{family.capitalize()}{size}{suffix}-v0"


def _register_all() -> None:
    if _IDS:
        return
    for agent in catalogue().agents:
        for task in ("direction", "waypoint"):
            gid = env_id(agent, task)
            gym.register(
                gid,
                entry_point="envs.locomotion:Locomotion3DEnv",
                kwargs={"agent": agent, "task": task},
                max_episode_steps=MAX_EPISODE_STEPS,
            )
            _IDS.append(gid)
    for gid, task in PLANAR_TASKS.items():
        gym.register(
            gid,
            entry_point="envs.planar:make_planar",
            kwargs={"robot": task.robot, "version": task.version},
            max_episode_steps=MAX_EPISODE_STEPS,
        )
        _IDS.append(gid)


def registered_ids() -> list[str]:
    """Every Gymnasium id this package registers."""
    return list(_IDS)


def suite_ids(suite: str, split: str = "train", task: str = "direction") -> list[str]:
    """The ids of a suite's training (``split="train"``) or held-out agents."""
    suites = catalogue().suites
    if suite not in suites:
        raise KeyError(f"unknown suite {suite!r}; expected one of {sorted(suites)}")
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    return [env_id(a, task) for a in getattr(suites[suite], split)]


def make(id: str, **kwargs) -> gym.Env:
    """Build a registered env (with Gymnasium's TimeLimit and checker wrappers)."""
    if id not in _IDS:
        close = difflib.get_close_matches(id, _IDS, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise KeyError(
            f"unknown env id {id!r}; expected one of envs.registered_ids() "
            f"(e.g. {_IDS[0]!r}, {planar_id('Hopper')!r}).{hint}"
        )
    return gym.make(id, **kwargs)


_register_all()
