"""Planar DSRL-compatible velocity tasks on Gymnasium's own MuJoCo robots.

**Description.** ``SaferlPlanar-<Robot>Velocity-v1`` for Ant, HalfCheetah, Hopper, Swimmer and
Walker2d is Safety-Gymnasium's ``Safety<Robot>Velocity-v1``, the task family of DSRL's velocity
datasets: Gymnasium's **v4** robot (model, observation, reward, termination, reset noise) with a
velocity cost. ``tests/envs/test_planar_parity.py`` replays Safety-Gymnasium's own recorded
steps (``tests/envs/data/make_parity.py``) on it.

**Observation, action, reward, episode end.** Those of Gymnasium's v4 env: Ant 27 numbers
(no contact forces), HalfCheetah 17, Hopper 11, Swimmer 8, Walker2d 17; actions in [-1, 1];
reward forward velocity + healthy reward (Ant, Hopper, Walker2d: also on the step that ends the
episode) − control cost (no contact cost); terminated when unhealthy (Ant, Hopper, Walker2d);
1000 steps.

**Cost** (``info["cost"]``, never in the reward): 1 when the velocity exceeds the robot's
threshold, strictly, else 0. The velocity (``info["velocity"]``) is the planar speed
sqrt(vx² + vy²) of the torso for Ant and the signed x-velocity for the others (Swimmer v1
included; Safety-Gymnasium's Swimmer v0 used the planar speed). Thresholds (Safety-Gymnasium
v1): Ant 2.6222, HalfCheetah 3.2096, Hopper 0.7402, Swimmer 0.2282, Walker2d 2.3415.

**MuJoCo 2.3 semantics.** Safety-Gymnasium pins MuJoCo 2.3.3; two of its semantics changed
since, and the v1 tasks keep the old ones:

- MuJoCo 3.5 combines the margins of two touching geoms by their sum where 2.3 took the larger
  one. Hopper's and Ant's models have margins (0.001, 0.01), so on MuJoCo ≥ 3.5 the v1 tasks
  halve every geom's margin, which gives every contact exactly its old margin
  (:func:`_contacts_as_before_3_5`).
- MuJoCo 2.3 normalised free joints' quaternions in ``qpos`` in place (in ``mj_forward``); 3.0
  and later normalise a copy. Ant's reset adds noise to its quaternion, so under 2.3 its first
  observation shows a unit quaternion; the v1 tasks normalise ``qpos`` after ``set_state``
  (:class:`_MuJoCo2`).

MuJoCo 4.0 also changed RK4 integration for free joints (Ant) by ~1e-8 per substep; that one
cannot be undone from a model (see ``tests/envs/test_planar_parity.py``).

**Version history.**
- v1: Safety-Gymnasium v1 exactly (v4 robots, MuJoCo 2.3 semantics).
- v0: the same costs and thresholds on Gymnasium's v5 robots, which differ from DSRL's: v5
  Walker2d has another foot friction, v5 Ant subtracts a contact cost, v5 Ant/Hopper/Walker2d
  drop the healthy reward on the terminal step. Kept for the datasets and results recorded on
  it; use v1 for anything compared with DSRL.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.envs.mujoco.ant_v4 import AntEnv as AntV4
from gymnasium.envs.mujoco.half_cheetah_v4 import HalfCheetahEnv as HalfCheetahV4
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv as HalfCheetahV5
from gymnasium.envs.mujoco.hopper_v4 import HopperEnv as HopperV4
from gymnasium.envs.mujoco.swimmer_v4 import SwimmerEnv as SwimmerV4
from gymnasium.envs.mujoco.walker2d_v4 import Walker2dEnv as Walker2dV4
from gymnasium.envs.registration import load_env_creator

ROBOTS: tuple[str, ...] = ("Ant", "HalfCheetah", "Hopper", "Swimmer", "Walker2d")
"""The planar robots (Gymnasium's names)."""

THRESHOLDS: dict[str, float] = {
    "Ant": 2.6222,
    "HalfCheetah": 3.2096,
    "Hopper": 0.7402,
    "Swimmer": 0.2282,
    "Walker2d": 2.3415,
}
"""Safety-Gymnasium v1 velocity thresholds (``safety_gymnasium/tasks/safe_velocity``)."""

VERSIONS: tuple[int, ...] = (0, 1)
"""Task versions: 1 = Safety-Gymnasium v1 (v4 robots), 0 = the same costs on v5 robots."""


def planar_id(robot: str, version: int = 1) -> str:
    """The Gymnasium id of a planar velocity task, e.g. ``SaferlPlanar-HopperVelocity-v1``."""
    return f"SaferlPlanar-{robot}Velocity-v{version}"


@dataclass(frozen=True)
class PlanarTask:
    """A planar velocity task: the Gymnasium robot it builds on and its velocity cost."""

    robot: str
    """Gymnasium's robot name (``"Hopper"``)."""
    version: int
    """The task's version (the ``-v<N>`` of its id)."""
    base_id: str
    """Gymnasium id of the robot whose model, observation and reward the task keeps."""
    threshold: float
    """Velocity above which a step costs 1."""
    planar_speed: bool = False
    """The cost's velocity: planar speed (True, Ant) or signed x-velocity."""
    base_kwargs: tuple[tuple[str, object], ...] = ()
    """Keyword arguments for the robot's env (user keywords override them)."""
    mujoco_2: bool = False
    """Keep MuJoCo 2.3's semantics where later versions changed them (Safety-Gymnasium pins
    MuJoCo 2.3.3): contact margins, quaternion normalisation."""


def _tasks() -> dict[str, PlanarTask]:
    tasks = {}
    for robot in ROBOTS:
        ant = robot == "Ant"
        threshold = THRESHOLDS[robot]
        tasks[planar_id(robot, 1)] = PlanarTask(robot, 1, f"{robot}-v4", threshold, ant,
                                                mujoco_2=True)  # fmt: skip
        v5 = (("include_cfrc_ext_in_observation", False),) if ant else ()
        tasks[planar_id(robot, 0)] = PlanarTask(robot, 0, f"{robot}-v5", threshold, ant, v5)
    return tasks


PLANAR_TASKS: dict[str, PlanarTask] = _tasks()
"""Every planar task by its Gymnasium id (v1 and v0 of each robot)."""


class VelocityCostWrapper(gym.Wrapper):
    """Adds ``info["cost"]`` = 1{velocity > threshold} to a Gymnasium MuJoCo env.

    The velocity (``info["velocity"]``) is ``info["x_velocity"]`` (signed), or the planar speed
    sqrt(x_velocity² + y_velocity²) when ``planar_speed`` is set (Ant), computed as
    Safety-Gymnasium does. The reward is untouched.
    """

    def __init__(self, env: gym.Env, threshold: float, planar_speed: bool = False) -> None:
        super().__init__(env)
        if not np.isfinite(threshold) or threshold <= 0:
            raise ValueError(f"threshold must be a positive finite speed, got {threshold!r}")
        self.threshold = float(threshold)
        self.planar_speed = bool(planar_speed)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.planar_speed:
            velocity = float(np.sqrt(info["x_velocity"] ** 2 + info["y_velocity"] ** 2))
        else:
            velocity = float(info["x_velocity"])
        info["velocity"] = velocity
        info["cost"] = float(velocity > self.threshold)
        return obs, reward, terminated, truncated, info


class _CheckedAction(gym.ActionWrapper):
    """Rejects actions of the wrong shape or with NaN/Inf before they reach MuJoCo."""

    def action(self, action):
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("action contains NaN or Inf; expected finite values")
        return a


def make_planar(robot: str, version: int = 1, **kwargs) -> gym.Env:
    """The planar velocity task of ``robot`` (Ant, HalfCheetah, Hopper, Swimmer, Walker2d):
    version 1 = Safety-Gymnasium v1 on the v4 robots, 0 = the same costs on the v5 robots.
    ``kwargs`` go to the robot's Gymnasium env (e.g. ``render_mode``)."""
    if robot not in ROBOTS:
        raise KeyError(f"unknown planar robot {robot!r}; expected one of {list(ROBOTS)}")
    if version not in VERSIONS:
        raise KeyError(f"unknown planar task version {version!r}; expected one of {VERSIONS}")
    task = PLANAR_TASKS[planar_id(robot, version)]
    limb_only = sorted({"max_limbs", "obs_view", "cost_type", "agent", "task"} & set(kwargs))
    if limb_only:
        raise ValueError(f"{limb_only} apply to the 3D tasks only; {planar_id(robot, version)} "
                         "takes Gymnasium's MuJoCo keyword arguments")  # fmt: skip
    base = _robot_class(task)(**{**dict(task.base_kwargs), **kwargs})
    return VelocityCostWrapper(_CheckedAction(base), task.threshold, task.planar_speed)


def _robot_class(task: PlanarTask) -> type:
    """The env class of ``task``'s robot, built directly (no deprecation warning for v4): with
    MuJoCo 2.3's semantics (:class:`_MuJoCo2`) for the v1 tasks, Gymnasium's own class for v0
    (HalfCheetah's with its masses set after compiling, :class:`_TotalmassAfterCompile`)."""
    if task.mujoco_2:
        return _MUJOCO_2[task.base_id]
    if task.base_id == "HalfCheetah-v5":
        return _HalfCheetahV5
    return load_env_creator(gym.spec(task.base_id).entry_point)


# --------------------------------------------------------------------------- contact margins


@functools.cache
def _margins_add() -> bool:
    """Whether this MuJoCo gives a contact the sum of its geoms' margins (≥ 3.5) rather than
    the larger one: two spheres 0.15 apart with margins 0.1 touch only under the sum."""
    xml = """<mujoco><worldbody><geom type="sphere" size="0.1" margin="0.1"/>
      <body pos="0.35 0 0"><freejoint/><geom type="sphere" size="0.1" margin="0.1"/></body>
      </worldbody></mujoco>"""
    model = mujoco.MjModel.from_xml_string(xml)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    return data.ncon > 0


def _contacts_as_before_3_5(model: mujoco.MjModel) -> None:
    """Give every contact of ``model`` the margin and gap MuJoCo < 3.5 gave it (the larger of its
    two geoms'), in place; nothing to do on MuJoCo < 3.5.

    MuJoCo 3.5 sums the two geoms' values instead, which changes the dynamics wherever margins
    are nonzero (Hopper's contacts became active at 2 mm instead of 1 mm). When every geom has
    the same margin m (and gap g), as in all of Gymnasium's v4 models, halving them all gives
    every pair m (and g) again, exactly (halving is exact in floating point). ValueError for a
    model whose geoms differ (no per-geom values reproduce the maximum then).
    """
    if not _margins_add():
        return
    for name in ("geom_margin", "geom_gap"):
        values = getattr(model, name)
        if not np.any(values):
            continue
        if np.ptp(values) != 0:
            raise ValueError(f"{name} differs between geoms ({sorted(set(values.tolist()))}); "
                             "cannot reproduce MuJoCo < 3.5's contact margins")  # fmt: skip
        values[:] = values / 2


class _MuJoCo2:
    """A Gymnasium MuJoCo env simulated with MuJoCo 2.3's semantics where later versions changed
    them: contact margins combined by their maximum (:func:`_contacts_as_before_3_5`, applied
    to the model when it is built) and ``set_state`` leaving the free and ball joints'
    quaternions in ``qpos`` normalised, as MuJoCo 2.3's ``mj_forward`` did (3.0 and later
    normalise a copy and leave ``qpos`` as set; Gymnasium's resets call ``set_state``, so a
    reset's observation shows the unit quaternion Safety-Gymnasium shows)."""

    def _initialize_simulation(self):
        model, data = super()._initialize_simulation()
        _contacts_as_before_3_5(model)
        return model, data

    def set_state(self, qpos, qvel):
        super().set_state(qpos, qvel)
        mujoco.mj_normalizeQuat(self.model, self.data.qpos)


# --------------------------------------------------------------------------- HalfCheetah


class _TotalmassAfterCompile:
    """A Gymnasium MuJoCo env whose model file's deprecated ``settotalmass`` compiler attribute
    is applied after compiling (``mj_setTotalmass`` + ``mj_setConst``, as MuJoCo's deprecation
    message advises) instead of by the compiler, which warns at every build. The model is the
    same, field for field (``tests/envs/test_planar_parity.py`` checks it)."""

    def _initialize_simulation(self):
        self.fullpath, total = _without_settotalmass(Path(self.fullpath))
        model, data = super()._initialize_simulation()
        if total is not None:
            mujoco.mj_setTotalmass(model, total)
            mujoco.mj_setConst(model, data)
            mujoco.mj_resetData(model, data)
        return model, data


class _HalfCheetahV5(_TotalmassAfterCompile, HalfCheetahV5):
    """Gymnasium's ``HalfCheetah-v5``, masses set after compiling."""


class _AntV1(_MuJoCo2, AntV4):
    """``Ant-v4`` with MuJoCo 2.3's semantics."""


class _HalfCheetahV1(_MuJoCo2, _TotalmassAfterCompile, HalfCheetahV4):
    """``HalfCheetah-v4`` with MuJoCo 2.3's semantics, masses set after compiling."""


class _HopperV1(_MuJoCo2, HopperV4):
    """``Hopper-v4`` with MuJoCo 2.3's semantics."""


class _SwimmerV1(_MuJoCo2, SwimmerV4):
    """``Swimmer-v4`` with MuJoCo 2.3's semantics."""


class _Walker2dV1(_MuJoCo2, Walker2dV4):
    """``Walker2d-v4`` with MuJoCo 2.3's semantics."""


_MUJOCO_2 = {"Ant-v4": _AntV1, "HalfCheetah-v4": _HalfCheetahV1, "Hopper-v4": _HopperV1,
             "Swimmer-v4": _SwimmerV1, "Walker2d-v4": _Walker2dV1}  # fmt: skip


_TOTALMASS = re.compile(r'\s*settotalmass="([^"]+)"')


def _without_settotalmass(path: Path) -> tuple[str, float | None]:
    """The model file at ``path`` without its ``settotalmass`` attribute, and that target mass
    (``(path, None)`` when it has none). The rewritten file is cached in the temp folder,
    written atomically."""
    text = path.read_text()
    match = _TOTALMASS.search(text)
    if match is None:
        return str(path), None
    stripped = _TOTALMASS.sub("", text, count=1)
    digest = hashlib.sha256(stripped.encode()).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"saferl-{path.stem}-nototalmass-{digest}.xml"
    if not out.exists():
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(stripped)
            os.replace(tmp, out)
        except BaseException:
            os.unlink(tmp)
            raise
    return str(out), float(match.group(1))
