"""Planar DSRL-compatible velocity tasks on Gymnasium's own MuJoCo robots.

Safety-Gymnasium's v1 velocity tasks put a cost of 1 on every step whose velocity exceeds a
per-robot threshold (planar speed for Ant, signed x-velocity for the others); DSRL's velocity
datasets use the same thresholds. The observations are Gymnasium's v5 ones (Ant without contact
forces: 27 numbers, as in DSRL).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np


@dataclass(frozen=True)
class PlanarTask:
    """A planar velocity task: the Gymnasium env it wraps and its cost threshold."""

    base_id: str
    threshold: float
    planar_speed: bool = False
    base_kwargs: tuple[tuple[str, object], ...] = ()


PLANAR_TASKS: dict[str, PlanarTask] = {
    "Ant": PlanarTask("Ant-v5", 2.6222, True, (("include_cfrc_ext_in_observation", False),)),
    "HalfCheetah": PlanarTask("HalfCheetah-v5", 3.2096),
    "Hopper": PlanarTask("Hopper-v5", 0.7402),
    "Walker2d": PlanarTask("Walker2d-v5", 2.3415),
    "Swimmer": PlanarTask("Swimmer-v5", 0.2282),
}


class VelocityCostWrapper(gym.Wrapper):
    """Adds ``info["cost"]`` = 1{velocity > threshold} to a Gymnasium MuJoCo env.

    The velocity is ``info["x_velocity"]`` (signed), or the planar speed
    sqrt(x_velocity² + y_velocity²) when ``planar_speed`` is set (Ant). The reward is untouched.
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
            velocity = float(np.hypot(info["x_velocity"], info["y_velocity"]))
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


def make_planar(robot: str, **kwargs) -> gym.Env:
    """The planar velocity task of ``robot`` (Ant, HalfCheetah, Hopper, Walker2d, Swimmer)."""
    if robot not in PLANAR_TASKS:
        raise KeyError(f"unknown planar robot {robot!r}; expected one of {sorted(PLANAR_TASKS)}")
    task = PLANAR_TASKS[robot]
    limb_only = sorted({"max_limbs", "obs_view", "cost_type", "agent", "task"} & set(kwargs))
    if limb_only:
        raise ValueError(f"{limb_only} apply to the 3D tasks only; SaferlPlanar-{robot}Velocity "
                         "takes Gymnasium's MuJoCo keyword arguments")  # fmt: skip
    kwargs = {**dict(task.base_kwargs), **kwargs}
    if robot == "HalfCheetah" and "xml_file" not in kwargs:
        kwargs["xml_file"] = str(_without_settotalmass(_gymnasium_asset("half_cheetah.xml")))
    base = gym.make(task.base_id, **kwargs).unwrapped
    return VelocityCostWrapper(_CheckedAction(base), task.threshold, task.planar_speed)


def _gymnasium_asset(name: str) -> Path:
    """The path of one of Gymnasium's MuJoCo model files."""
    import gymnasium.envs.mujoco as gym_mujoco

    return Path(gym_mujoco.__file__).parent / "assets" / name


_TOTALMASS = re.compile(r'\s*settotalmass="([^"]+)"')


def _without_settotalmass(path: Path) -> Path:
    """The model at ``path`` with its masses already scaled to the ``settotalmass`` target.

    MuJoCo deprecates the ``settotalmass`` compiler attribute (and warns at every build). It
    scales every body's mass and inertia by ``target / total``; scaling the default geom density
    by the same factor gives the same model (``tests/envs/test_checkers.py`` compares them).
    The rewritten file is cached in the temp folder, written atomically.
    """
    text = path.read_text()
    match = _TOTALMASS.search(text)
    if match is None:
        return path
    stripped = _TOTALMASS.sub("", text, count=1)
    if "density=" in stripped or "mass=" in stripped:
        raise ValueError(f"{path.name}: expected geom masses from the default density only")
    total = float(mujoco.MjModel.from_xml_string(stripped).body_mass.sum())
    scale = float(match.group(1)) / total
    scaled = stripped.replace("<geom ", f'<geom density="{1000.0 * scale!r}" ', 1)
    digest = hashlib.sha256((scaled + mujoco.__version__).encode()).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"saferl-{path.stem}-{digest}.xml"
    if not out.exists():
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(scaled)
            os.replace(tmp, out)
        except BaseException:
            os.unlink(tmp)
            raise
    return out
