"""Build a MuJoCo model in memory from a :class:`~envs.morphology.Morphology` (generated MJCF).

Physics choices (3D-SGRL facts, see ../shared/specs/envs-3d-locomotion.md): an infinite floor,
vertical gravity and *elliptic* friction cones, so the dynamics are symmetric under rotations
about the vertical axis (pyramidal cones align their edges with world-fixed tangents). Limbs
collide with the floor only.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from envs.morphology import Limb, Morphology


@dataclass(frozen=True)
class PhysicsSettings:
    """Simulation settings of a family."""

    timestep: float = 0.002
    integrator: str = "RK4"
    joint_damping: float = 1.0
    armature: float = 0.02
    friction: float = 1.0
    density: float = 1000.0


def _fmt(values: np.ndarray | tuple[float, ...]) -> str:
    return " ".join(f"{float(v):.6g}" for v in values)


def _mass(limb: Limb) -> str:
    return "" if limb.mass is None else f' mass="{limb.mass:.6g}"'


def _limb_xml(morph: Morphology, index: int, children: dict[int, list[int]], indent: int) -> str:
    limb: Limb = morph.limbs[index]
    pad = "  " * indent
    lines = [f'{pad}<body name="{limb.name}" pos="{_fmt(limb.anchor)}">']
    extra = f' stiffness="{limb.stiffness:.6g}"' if limb.stiffness else ""
    if limb.damping is not None:
        extra += f' damping="{limb.damping:.6g}"'
    for axis, name, (lo, hi) in zip(
        ("1 0 0", "0 1 0", "0 0 1"), "xyz", limb.joint_ranges, strict=True
    ):
        lines.append(
            f'{pad}  <joint name="{limb.name}_{name}" type="hinge" axis="{axis}" '
            f'range="{lo:.6g} {hi:.6g}"{extra}/>'
        )
    lines.append(
        f'{pad}  <geom name="{limb.name}_geom" type="capsule" '
        f'fromto="0 0 0 {_fmt(limb.end_point())}" size="{limb.radius:.6g}"{_mass(limb)}/>'
    )
    for child in children.get(index, []):
        lines.append(_limb_xml(morph, child, children, indent + 1))
    lines.append(f"{pad}</body>")
    return "\n".join(lines)


def _torso_xml(morph: Morphology, children: dict[int, list[int]]) -> str:
    torso = morph.limbs[0]
    half = np.asarray(torso.direction) * torso.length / 2
    inner = "\n".join(_limb_xml(morph, c, children, 3) for c in children.get(0, []))
    return (
        f'    <body name="{torso.name}" pos="0 0 {morph.torso_height:.6g}">\n'
        f'      <freejoint name="root"/>\n'
        f'      <geom name="{torso.name}_geom" type="capsule" fromto="{_fmt(-half)} {_fmt(half)}" '
        f'size="{torso.radius:.6g}"{_mass(torso)}/>\n'
        f"{inner}\n"
        f"    </body>"
    )


def _actuators_xml(morph: Morphology) -> str:
    lines = []
    for limb in morph.limbs[1:]:
        for name, gear in zip("xyz", limb.gears, strict=True):
            lines.append(
                f'    <motor name="{limb.name}_{name}_motor" joint="{limb.name}_{name}" '
                f'gear="{gear:.6g}" ctrlrange="-1 1"/>'
            )
    return "\n".join(lines)


FRAME_SENSORS = {
    "pos": "framepos", "linvel": "framelinvel", "angvel": "frameangvel",
    "xaxis": "framexaxis", "yaxis": "frameyaxis", "zaxis": "framezaxis",
}  # fmt: skip
"""World-frame sensors of every limb's *body* frame (MuJoCo ``objtype="xbody"``: the frame of
``data.xpos``/``data.xmat``, not the inertial frame), named ``<limb>:<key>``. Hinges add
``<limb>_<axis>:angle`` and ``<limb>_<axis>:velocity``. With these ``sensordata`` holds every
number an observation reads except the hinge axes (``data.xaxis``)."""


def frame_sensor(limb: str, key: str) -> str:
    """Name of the frame sensor ``key`` (a key of :data:`FRAME_SENSORS`) of a limb."""
    return f"{limb}:{key}"


def joint_sensor(limb: str, axis: str, key: str) -> str:
    """Name of the ``"angle"`` or ``"velocity"`` sensor of a limb's ``axis`` hinge."""
    return f"{limb}_{axis}:{key}"


def _sensors_xml(morph: Morphology) -> str:
    frames = [
        f'    <{kind} name="{frame_sensor(limb.name, key)}" objtype="xbody" objname="{limb.name}"/>'
        for limb in morph.limbs
        for key, kind in FRAME_SENSORS.items()
    ]
    joints = [
        f'    <{kind} name="{joint_sensor(limb.name, axis, key)}" joint="{limb.name}_{axis}"/>'
        for key, kind in (("angle", "jointpos"), ("velocity", "jointvel"))
        for limb in morph.limbs[1:]
        for axis in "xyz"
    ]
    return "\n".join(frames + joints)


def sensor_map(model: mujoco.MjModel) -> dict[str, np.ndarray]:
    """Every named sensor's indices into ``data.sensordata``, by name."""
    return {
        model.sensor(i).name: np.arange(adr, adr + dim)
        for i, (adr, dim) in enumerate(zip(model.sensor_adr, model.sensor_dim, strict=True))
    }


def to_mjcf(morph: Morphology, physics: PhysicsSettings | None = None) -> str:
    """MJCF text of the agent on an infinite floor."""
    p = physics or PhysicsSettings()
    children: dict[int, list[int]] = {}
    for i, limb in enumerate(morph.limbs[1:], start=1):
        children.setdefault(limb.parent, []).append(i)
    return f"""<mujoco model="{morph.name}">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{p.timestep:.6g}" integrator="{p.integrator}" cone="elliptic"/>
  <default>
    <joint damping="{p.joint_damping:.6g}" armature="{p.armature:.6g}" limited="true"/>
    <geom condim="3" friction="{p.friction:.6g} 0.1 0.1" density="{p.density:.6g}"
          contype="1" conaffinity="0" rgba="0.8 0.6 0.4 1"/>
    <motor ctrllimited="true"/>
  </default>
  <worldbody>
    <light pos="0 0 10" dir="0 0 -1"/>
    <geom name="floor" type="plane" size="0 0 0.1" contype="0" conaffinity="1"
          rgba="0.3 0.35 0.4 1"/>
{_torso_xml(morph, children)}
  </worldbody>
  <actuator>
{_actuators_xml(morph)}
  </actuator>
  <sensor>
{_sensors_xml(morph)}
  </sensor>
</mujoco>
"""


def build_model(morph: Morphology, physics: PhysicsSettings | None = None) -> mujoco.MjModel:
    """Compile the agent into a MuJoCo model (in memory, no files)."""
    return mujoco.MjModel.from_xml_string(to_mjcf(morph, physics))
