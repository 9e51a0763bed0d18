"""One Gymnasium env for every 3D agent of the catalogue: move in a target direction, safely.

Reference: 3D-SGRL ("Subequivariant Graph Reinforcement Learning in 3D Environments", ICML 2023);
facts in ../shared/specs/envs-3d-locomotion.md. Bodies are built procedurally
(:mod:`envs.builder`), not ported from the reference's XML files.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from envs.builder import build_model
from envs.catalogue import FAMILIES, FamilySpec, get_morphology
from envs.layout import (
    ACTIONS_PER_LIMB,
    MAX_LIMBS,
    NUM_SCALARS,
    NUM_VECTORS,
    ObsLayout,
    decode_flat,
)
from envs.morphology import Morphology
from envs.symmetry import quat_mul, quat_z

COST_TYPES = ("velocity", "region", "both")
TASKS = ("direction", "waypoint")
_GRAVITY = np.array([0.0, 0.0, -1.0])
_INSTABILITY = (
    mujoco.mjtWarning.mjWARN_BADQPOS,
    mujoco.mjtWarning.mjWARN_BADQVEL,
    mujoco.mjtWarning.mjWARN_BADQACC,
)


class Locomotion3DEnv(gym.Env):
    """Move a 3D agent of the catalogue along a target direction under a safety cost.

    ## Description
    A tree of capsule limbs (torso with a free joint; every other limb with x, y, z hinges and
    three motors) on an infinite floor with elliptic friction cones. At reset the torso heading
    and the target direction are drawn uniformly on the circle; the physics, reward and velocity
    cost are invariant under rotations about the vertical axis, the region cost is not.

    ## Action Space
    ``Box(-1, 1, (max_limbs * 3,))``: row ``l`` of the (max_limbs, 3) matrix drives the x, y, z
    hinges of limb ``l`` (motor gear × action = torque). The torso row and padded rows are
    ignored. Non-finite actions or a wrong shape raise ValueError.

    ## Observation Space
    ``obs_view="flat"`` (default): ``Box((max_limbs * PER_LIMB,))`` laid out as
    :mod:`envs.layout` describes (per-limb vectors, scalars, mask, parents; zero padding).
    ``obs_view="graph"``: a ``Dict`` with the same data as ``vectors`` (L, 8, 3), ``scalars``
    (L, 26), ``mask`` (L,) and ``parents`` (L,).

    ## Rewards
    ``reward = forward + heading + ctrl + alive`` with (names as in ``info``)
    ``reward_forward`` = horizontal torso velocity · target direction,
    ``reward_heading`` = horizontal torso velocity · facing direction (walker, humanoid,
    cheetah; 0 for hopper), ``reward_ctrl`` = −1e-3·|a|², ``reward_alive`` = 1 for hopper,
    walker and humanoid while healthy (0 for cheetah).

    ## Cost (``info["cost"]``, never in the reward)
    ``cost_velocity`` = 1 if the horizontal torso speed exceeds the family's ``speed_limit``;
    ``cost_region`` = 1 if the torso is in the forbidden half-plane ``x ≥ region_x`` (world
    frame: breaks the rotational symmetry on purpose). ``cost_type`` picks ``"velocity"``,
    ``"region"`` or ``"both"`` (the maximum of the two).

    ## Starting State
    Torso at its rest height, heading uniform on the circle; uniform noise ±``reset_noise`` on
    the position and hinge coordinates and on all velocities; target uniform on the circle.
    ``task="waypoint"``: the target is a point 10-20 m away, redrawn within 1 m of it.

    ## Episode End
    Terminated when the torso height leaves the family's band, the torso tilts beyond the
    family's limit, or the simulation diverges (non-finite state or MuJoCo's bad qpos/qvel/qacc
    warning, after which MuJoCo resets the state): then ``info["diverged"] = True``, the reward
    is 0 and the last finite observation is returned.
    Truncated by the TimeLimit wrapper after 1000 steps.

    ## Arguments
    ``agent`` (catalogue name), ``task``, ``cost_type``, ``obs_view``, ``max_limbs`` (padding;
    at least the agent's limbs), ``region_x`` (m), ``reset_noise``, ``ctrl_cost_weight``,
    ``render_mode`` (None or ``"rgb_array"``, which needs an OpenGL context).

    ## Version History
    v0: first release.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        agent: str = "walker_5",
        task: str = "direction",
        cost_type: str = "velocity",
        obs_view: str = "flat",
        max_limbs: int = MAX_LIMBS,
        region_x: float = 3.0,
        reset_noise: float = 0.005,
        ctrl_cost_weight: float = 1e-3,
        render_mode: str | None = None,
    ) -> None:
        self.morph: Morphology = get_morphology(agent)
        _check_choice("task", task, TASKS)
        _check_choice("cost_type", cost_type, COST_TYPES)
        _check_choice("obs_view", obs_view, ("flat", "graph"))
        if not isinstance(max_limbs, int) or max_limbs < self.morph.num_limbs:
            raise ValueError(
                f"max_limbs must be an int >= {self.morph.num_limbs} (limbs of {agent!r}), "
                f"got {max_limbs!r}"
            )
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.spec_family: FamilySpec = FAMILIES[self.morph.family]
        self.task, self.cost_type, self.obs_view = task, cost_type, obs_view
        self.region_x, self.reset_noise = float(region_x), float(reset_noise)
        self.ctrl_cost_weight = float(ctrl_cost_weight)
        self.layout = ObsLayout(max_limbs)
        self.render_mode = render_mode

        self.model = build_model(self.morph, self.spec_family.physics)
        self.data = mujoco.MjData(self.model)
        self.frame_skip = self.spec_family.frame_skip
        self.dt = self.model.opt.timestep * self.frame_skip
        self._index_model()
        self._static = self._static_features()
        self._init_buffers()
        self._target = np.array([1.0, 0.0, 0.0])
        self._waypoint = np.zeros(2)
        self._last_obs: Any = None
        self._renderer: mujoco.Renderer | None = None
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / self.dt))}

        self.action_space = spaces.Box(-1.0, 1.0, (self.layout.action_dim,), dtype=np.float32)
        self.observation_space = self._make_observation_space()

    # ------------------------------------------------------------------ construction helpers
    def _index_model(self) -> None:
        """Body, qpos, qvel and actuator indices of every limb, in limb order."""
        m, n = self.model, self.morph.num_limbs
        self._body = np.array([m.body(limb.name).id for limb in self.morph.limbs])
        self._torso = int(self._body[0])
        qadr = np.zeros((n, 3), dtype=np.int64)
        dadr = np.zeros((n, 3), dtype=np.int64)
        act = np.zeros((n, 3), dtype=np.int64)
        for i, limb in enumerate(self.morph.limbs[1:], start=1):
            for k, axis in enumerate("xyz"):
                joint = m.joint(f"{limb.name}_{axis}")
                qadr[i, k], dadr[i, k] = joint.qposadr[0], joint.dofadr[0]
                act[i, k] = m.actuator(f"{limb.name}_{axis}_motor").id
        self._qadr, self._dadr = _as_slice(qadr[1:].ravel()), _as_slice(dadr[1:].ravel())
        # action row l -> actuator ids; rows 1..n-1 are real, in actuator order
        self._act_rows = _as_slice(act[1:].ravel())
        self._act_slots = slice(ACTIONS_PER_LIMB, n * ACTIONS_PER_LIMB)
        self._ranges = np.array([limb.joint_ranges for limb in self.morph.limbs], dtype=float)
        self._ranges[0] = 0.0

    def _static_features(self) -> np.ndarray:
        """Scalars that never change: ranges, gears, depth one-hot, leaf flag, sizes."""
        morph, n = self.morph, self.morph.num_limbs
        depth = np.minimum(morph.depths(), 3)
        gears = np.array([limb.gears for limb in morph.limbs], dtype=float) / 100.0
        gears[0] = 0.0
        static = np.zeros((n, NUM_SCALARS))
        static[:, 6:9] = self._ranges[:, :, 0]
        static[:, 9:12] = self._ranges[:, :, 1]
        static[:, 12:15] = gears
        static[np.arange(n), 15 + depth] = 1.0
        static[:, 19] = morph.is_leaf()
        static[:, 21] = [limb.length for limb in morph.limbs]
        static[:, 22] = [limb.radius for limb in morph.limbs]
        return static

    def _make_observation_space(self) -> spaces.Space:
        if self.obs_view == "flat":
            return spaces.Box(-np.inf, np.inf, (self.layout.flat_dim,), dtype=np.float32)
        L = self.layout.max_limbs
        return spaces.Dict({
            "vectors": spaces.Box(-np.inf, np.inf, (L, NUM_VECTORS, 3), dtype=np.float32),
            "scalars": spaces.Box(-np.inf, np.inf, (L, NUM_SCALARS), dtype=np.float32),
            "mask": spaces.Box(0.0, 1.0, (L,), dtype=np.float32),
            "parents": spaces.Box(-1.0, float(L - 1), (L,), dtype=np.float32),
        })  # fmt: skip

    # ------------------------------------------------------------------ public state access
    @property
    def target_direction(self) -> np.ndarray:
        """Unit horizontal target direction (3-vector, z = 0)."""
        return self._target.copy()

    @target_direction.setter
    def target_direction(self, direction: np.ndarray) -> None:
        d = np.asarray(direction, dtype=float).ravel()
        if d.shape not in ((2,), (3,)) or not np.all(np.isfinite(d)):
            raise ValueError(f"target_direction must be a finite 2- or 3-vector, got {direction!r}")
        d = np.array([d[0], d[1], 0.0])
        norm = np.linalg.norm(d)
        if norm < 1e-9:
            raise ValueError("target_direction must have a non-zero horizontal part")
        self._target = d / norm
        self._vec[:, 2] = self._target
        if self.task == "waypoint":
            self._waypoint = self.data.qpos[:2] + 15.0 * self._target[:2]

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """Put the simulation in state (qpos, qvel) and recompute derived quantities."""
        qpos, qvel = np.asarray(qpos, dtype=float), np.asarray(qvel, dtype=float)
        if qpos.shape != (self.model.nq,) or qvel.shape != (self.model.nv,):
            raise ValueError(
                f"expected qpos ({self.model.nq},) and qvel ({self.model.nv},), "
                f"got {qpos.shape} and {qvel.shape}"
            )
        if not (np.all(np.isfinite(qpos)) and np.all(np.isfinite(qvel))):
            raise ValueError("qpos and qvel must be finite")
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = qpos
        self.data.qvel[:] = qvel
        mujoco.mj_forward(self.model, self.data)
        self._warnings_seen = self._instability_warnings()

    def observation(self) -> Any:
        """The current observation in the env's view (a fresh copy)."""
        self._write_observation()
        if self.obs_view == "graph":
            return {k: v.copy() for k, v in self._views.items()}
        return self._flat.copy()

    def graph_observation(self) -> dict[str, np.ndarray]:
        """The graph view of the current state (always available, whatever ``obs_view``)."""
        self._write_observation()
        return {k: v.copy() for k, v in self._views.items()}

    def _init_buffers(self) -> None:
        """One flat float32 buffer with graph-view views into it; constant parts written once."""
        n = self.morph.num_limbs
        self._flat = np.zeros(self.layout.flat_dim, dtype=np.float32)
        self._views = decode_flat(self._flat)
        self._views["vectors"][:n, 1] = _GRAVITY
        self._views["scalars"][:n] = self._static
        self._views["mask"][:n] = 1.0
        self._views["parents"][:] = -1.0
        self._views["parents"][:n] = self.morph.parents
        lo, hi = self._ranges[1:, :, 0].ravel(), self._ranges[1:, :, 1].ravel()
        self._angle_scale, self._angle_shift = 2.0 / (hi - lo), -2.0 * lo / (hi - lo) - 1.0
        self._vec = self._views["vectors"][:n]
        self._sca = self._views["scalars"][:n]
        self._sca_joint = self._views["scalars"][1:n]

    def _write_observation(self) -> None:
        """Fill the dynamic parts of the observation buffer from the current MuJoCo state."""
        d, n = self.data, self.morph.num_limbs
        frames = d.sensordata[: n * 18].reshape(n, 6, 3)  # see envs.builder.SENSORS_PER_LIMB
        vec = self._vec
        vec[:, 0] = frames[:, 0] - frames[0, 0]
        if self.task == "waypoint":
            vec[:, 2] = self._current_target()
        vec[:, 3:8] = frames[:, 1:6]
        if np.abs(vec[:, 3:5]).max() > 5.77:  # some norm may exceed 10 (10/sqrt(3) = 5.77...)
            speed2 = np.einsum("lvi,lvi->lv", vec[:, 3:5], vec[:, 3:5])
            # clip the norms of both velocities to 10 (commutes with rotations)
            vec[:, 3:5] *= np.minimum(1.0, 10.0 / np.sqrt(np.maximum(speed2, 1e-24)))[..., None]
        angles = d.qpos[self._qadr]
        joint = self._sca_joint
        joint[:, 0:3] = angles.reshape(n - 1, 3)
        joint[:, 3:6] = (angles * self._angle_scale + self._angle_shift).reshape(n - 1, 3)
        joint[:, 23:26] = np.minimum(np.maximum(d.qvel[self._dadr], -10.0), 10.0).reshape(n - 1, 3)
        self._sca[:, 20] = frames[:, 0, 2]

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng, noise = self.np_random, self.reset_noise
        mujoco.mj_resetData(self.model, self.data)
        qpos, qvel = self.model.qpos0.copy(), np.zeros(self.model.nv)
        heading = rng.uniform(-np.pi, np.pi)
        qpos[3:7] = quat_mul(quat_z(heading), qpos[3:7])
        qpos[:3] += rng.uniform(-noise, noise, 3)
        qpos[7:] += rng.uniform(-noise, noise, self.model.nq - 7)
        qvel += rng.uniform(-noise, noise, self.model.nv)
        self.set_state(qpos, qvel)
        theta = rng.uniform(-np.pi, np.pi)
        self.target_direction = np.array([np.cos(theta), np.sin(theta), 0.0])
        self._last_obs = self.observation()
        return self._last_obs, {"heading": heading, "target_direction": self.target_direction}

    def step(self, action: np.ndarray):
        action = self._check_action(action)
        d = self.data
        qpos = d.qpos
        x0, y0, t0 = float(qpos[0]), float(qpos[1]), d.time
        d.ctrl[self._act_rows] = action[self._act_slots]
        mujoco.mj_step(self.model, d, nstep=self.frame_skip)
        if self._diverged(t0):
            return self._last_obs, 0.0, True, False, {"diverged": True, "cost": 0.0}
        vx, vy = (float(qpos[0]) - x0) / self.dt, (float(qpos[1]) - y0) / self.dt
        self._refresh_kinematics()
        obs = self.observation()
        self._last_obs = obs
        reward, info = self._reward(vx, vy, action)
        info.update(self._costs(vx, vy))
        info["diverged"] = False
        if self.task == "waypoint":
            self._update_waypoint()
        return obs, reward, not self._healthy(), False, info

    def render(self) -> np.ndarray | None:
        """An RGB frame (needs an OpenGL context: set MUJOCO_GL=egl or osmesa when headless)."""
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, 240, 320)
        self._renderer.update_scene(self.data)
        return self._renderer.render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------------ task pieces
    def _refresh_kinematics(self) -> None:
        """Recompute frames, velocities and frame sensors for the integrated state.

        ``mj_step`` leaves them as computed before its last integration; the observation,
        reward, cost and termination must describe the state the step ended in.
        """
        m, d = self.model, self.data
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        mujoco.mj_comVel(m, d)
        mujoco.mj_sensorPos(m, d)
        mujoco.mj_sensorVel(m, d)

    def _diverged(self, t0: float) -> bool:
        """Whether the last step went unstable (cheap checks first).

        MuJoCo resets the state, zeroing ``data.time``, when it meets a bad qpos/qvel/qacc; so a
        clock that did not advance by the whole step means a reset. From ``t0 = 0`` the clock
        cannot tell, so the warning counters are read then. Non-finite states are caught too.
        """
        d = self.data
        if d.time < t0 + self.dt - 0.5 * self.model.opt.timestep:
            return True
        if t0 == 0.0:
            warnings = self._instability_warnings()
            if warnings > self._warnings_seen:
                self._warnings_seen = warnings
                return True
        return not math.isfinite(float(d.qpos.sum() + d.qvel.sum()))

    def _instability_warnings(self) -> int:
        """MuJoCo's count of bad qpos/qvel/qacc events (it resets the state when one occurs)."""
        w = self.data.warning
        return w[_INSTABILITY[0]].number + w[_INSTABILITY[1]].number + w[_INSTABILITY[2]].number

    def _check_action(self, action: Any) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(
                f"action must have shape {self.action_space.shape} "
                f"({self.layout.max_limbs} limbs x 3 torques), got {a.shape}"
            )
        if not np.isfinite(a).all():
            raise ValueError("action contains NaN or Inf; expected finite torques in [-1, 1]")
        return np.minimum(np.maximum(a, -1.0), 1.0)

    def _current_target(self) -> np.ndarray:
        if self.task == "direction":
            return self._target
        delta = self._waypoint - self.data.qpos[:2]
        norm = np.linalg.norm(delta)
        return self._target if norm < 1e-9 else np.array([delta[0] / norm, delta[1] / norm, 0.0])

    def _update_waypoint(self) -> None:
        if np.linalg.norm(self._waypoint - self.data.qpos[:2]) < 1.0:
            theta = self.np_random.uniform(-np.pi, np.pi)
            dist = self.np_random.uniform(10.0, 20.0)
            self._waypoint = self.data.qpos[:2] + dist * np.array([np.cos(theta), np.sin(theta)])
        self._target = self._current_target()

    def _reward(self, vx: float, vy: float, action: np.ndarray) -> tuple[float, dict[str, float]]:
        fam = self.spec_family
        target = self._current_target()
        heading = 0.0
        if fam.heading_reward:  # speed along the horizontal projection of the torso's x axis
            fx, fy = float(self.data.xmat[self._torso, 0]), float(self.data.xmat[self._torso, 3])
            norm = math.hypot(fx, fy)
            heading = (vx * fx + vy * fy) / norm if norm > 1e-9 else 0.0
        terms = {
            "reward_forward": vx * float(target[0]) + vy * float(target[1]),
            "reward_heading": heading,
            "reward_ctrl": -self.ctrl_cost_weight * float(np.dot(action, action)),
            "reward_alive": fam.alive_bonus,
        }
        return sum(terms.values()), terms

    def _costs(self, vx: float, vy: float) -> dict[str, float]:
        speed = math.hypot(vx, vy)
        x, y = float(self.data.qpos[0]), float(self.data.qpos[1])
        c_vel = float(speed > self.spec_family.speed_limit)
        c_reg = float(x >= self.region_x)
        cost = c_vel if self.cost_type == "velocity" else c_reg
        if self.cost_type == "both":
            cost = max(c_vel, c_reg)
        return {"cost": cost, "cost_velocity": c_vel, "cost_region": c_reg, "speed": speed,
                "x_position": x, "y_position": y}  # fmt: skip

    def _healthy(self) -> bool:
        fam, z0 = self.spec_family, self.morph.torso_height
        z = float(self.data.qpos[2])
        # z-component of the torso's up axis: row 2 of the rotation matrix
        up_z = float(self.data.xmat[self._torso, 6 + fam.up_axis])
        tilt = math.acos(min(1.0, max(-1.0, up_z)))
        lo, hi = fam.height_band
        return lo * z0 < z < hi * z0 and tilt < fam.max_tilt


def _as_slice(index: np.ndarray) -> slice | np.ndarray:
    """A slice when the indices are consecutive (a cheaper view), else the index array."""
    if index.size and np.array_equal(index, np.arange(index[0], index[0] + index.size)):
        return slice(int(index[0]), int(index[0]) + index.size)
    return index


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
