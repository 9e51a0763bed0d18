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

from envs.builder import build_model, frame_sensor, joint_sensor, sensor_map
from envs.catalogue import FAMILIES, FamilySpec, get_morphology
from envs.layout import (
    ACTIONS_PER_LIMB,
    MAX_LIMBS,
    NUM_SCALARS,
    NUM_VECTORS,
    SCALAR_INDEX,
    VECTOR_INDEX,
    ObsLayout,
    decode_flat,
    scalar_slice,
    vector_slice,
    xyz,
)
from envs.morphology import Morphology
from envs.symmetry import quat_mul, quat_z

COST_TYPES = ("velocity", "region", "both")
TASKS = ("direction", "waypoint")
_GRAVITY = np.array([0.0, 0.0, -1.0])
_AXES = vector_slice(*xyz("axis"))
_VELOCITIES = vector_slice("linear_velocity", "angular_velocity")
_TORSO_AXES = ("xaxis", "yaxis", "zaxis")
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
    ignored; MuJoCo clamps the controls to [-1, 1]. Non-finite actions or a wrong shape raise
    ValueError.

    ## Observation Space
    ``obs_view="flat"`` (default): ``Box((max_limbs * PER_LIMB,))`` laid out as
    :mod:`envs.layout` describes (per-limb vectors, scalars, mask, parents; zero padding).
    ``obs_view="graph"``: a ``Dict`` with the same data as ``vectors`` (L, 8, 3), ``scalars``
    (L, 26), ``mask`` (L,) and ``parents`` (L,).

    ## Rewards
    ``reward = forward + heading + ctrl + alive`` with (names as in ``info``)
    ``reward_forward`` = horizontal torso velocity · target direction,
    ``reward_heading`` = horizontal torso velocity · facing direction (walker, humanoid,
    cheetah; 0 for hopper), ``reward_ctrl`` = −1e-3·|a|² (the action as given, like
    Gymnasium's MuJoCo envs), ``reward_alive`` = 1 for hopper,
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
    family's limit, the agent stands still (cheetah: ``|qvel|² ≤ 1`` for ``stall_steps``
    consecutive steps, then ``info["stalled"] = True``), or the simulation diverges (non-finite
    state or MuJoCo's bad qpos/qvel/qacc warning, after which MuJoCo resets the state): then
    ``info["diverged"] = True``, the reward is 0 and the last finite observation is returned.
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
        self._split = self.model.opt.integrator != mujoco.mjtIntegrator.mjINT_RK4
        self._ctrl, self._sensordata = self.data.ctrl, self.data.sensordata  # views, kept
        self._dt_check = self.dt - 0.5 * self.model.opt.timestep
        self._index_model()
        self._static = self._static_features()
        self._init_buffers()
        self._target = np.array([1.0, 0.0, 0.0])
        self._target_2d = (1.0, 0.0)
        self._xy = (float(self.data.qpos[0]), float(self.data.qpos[1]))
        self._still = 0
        self._waypoint = np.zeros(2)
        self._last_obs: Any = None
        self._renderer: mujoco.Renderer | None = None
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / self.dt))}

        self.action_space = spaces.Box(-1.0, 1.0, (self.layout.action_dim,), dtype=np.float32)
        self.observation_space = self._make_observation_space()

    # ------------------------------------------------------------------ construction helpers
    def _index_model(self) -> None:
        """Actuator indices and joint ranges of every limb, in limb order."""
        m, n = self.model, self.morph.num_limbs
        act = np.zeros((n, 3), dtype=np.int64)
        for i, limb in enumerate(self.morph.limbs[1:], start=1):
            for k, axis in enumerate("xyz"):
                act[i, k] = m.actuator(f"{limb.name}_{axis}_motor").id
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
        static[:, scalar_slice(*xyz("range_lo"))] = self._ranges[:, :, 0]
        static[:, scalar_slice(*xyz("range_hi"))] = self._ranges[:, :, 1]
        static[:, scalar_slice(*xyz("gear"))] = gears
        depth_cols = scalar_slice("depth_0", "depth_1", "depth_2", "depth_3plus")
        static[np.arange(n), depth_cols.start + depth] = 1.0
        static[:, SCALAR_INDEX["is_leaf"]] = morph.is_leaf()
        static[:, SCALAR_INDEX["length"]] = [limb.length for limb in morph.limbs]
        static[:, SCALAR_INDEX["radius"]] = [limb.radius for limb in morph.limbs]
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
        self._target_2d = (float(self._target[0]), float(self._target[1]))
        self._vec[:, VECTOR_INDEX["target"]] = self._target
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
        self._xy = (float(qpos[0]), float(qpos[1]))
        self._still = 0  # consecutive still steps (stall termination)

    def observation(self) -> Any:
        """The current observation in the env's view (a fresh copy)."""
        self._write_observation()
        return self._copy_observation()

    def graph_observation(self) -> dict[str, np.ndarray]:
        """The graph view of the current state (always available, whatever ``obs_view``)."""
        self._write_observation()
        return {k: v.copy() for k, v in self._views.items()}

    def _init_buffers(self) -> None:
        """One flat float32 buffer with graph-view views into it; constant parts written once."""
        n = self.morph.num_limbs
        self._flat = np.zeros(self.layout.flat_dim, dtype=np.float32)
        self._views = decode_flat(self._flat)
        self._views["vectors"][:n, VECTOR_INDEX["gravity"]] = _GRAVITY
        self._views["scalars"][:n] = self._static
        self._views["mask"][:n] = 1.0
        self._views["parents"][:] = -1.0
        self._views["parents"][:n] = self.morph.parents
        lo, hi = self._ranges[1:, :, 0].ravel(), self._ranges[1:, :, 1].ravel()
        self._angle_scale, self._angle_shift = 2.0 / (hi - lo), -2.0 * lo / (hi - lo) - 1.0
        self._vec = self._views["vectors"][:n]
        self._init_gather()

    def _init_gather(self) -> None:
        """Index maps of the gather ``(data.xaxis, sensordata) -> stage -> flat`` behind an
        observation, built from the sensors' and the layout's names.

        ``sensordata`` holds every dynamic number but the hinge axes (see
        :data:`envs.builder.FRAME_SENSORS`); those are ``data.xaxis`` of the limbs' joints. The
        float64 stage holds, in blocks kept as views: hinge axes of limbs 1.. (9(n-1)), limb
        positions (3n), linear and angular velocities (6n), the torso's body axes (9), hinge
        angles, normalised hinge angles and hinge velocities (3(n-1) each), limb heights (n) —
        the ``_dst`` slots of the flat view — and, for the reward, the torso's position and axes
        (12). An observation is then two gathers and a handful of whole-array operations (a
        step is dominated by how many there are, not their size).
        """
        morph, model = self.morph, self.model
        n, m = morph.num_limbs, 3 * (morph.num_limbs - 1)
        sensors = sensor_map(model)
        limbs = [limb.name for limb in morph.limbs]

        def frame(names: list[str], keys: tuple[str, ...]) -> list[int]:
            return [int(i) for nm in names for k in keys for i in sensors[frame_sensor(nm, k)]]

        def joints(key: str) -> list[int]:
            return [int(sensors[joint_sensor(nm, a, key)][0]) for nm in limbs[1:] for a in "xyz"]

        hinges = [model.joint(f"{nm}_{a}").id for nm in limbs[1:] for a in "xyz"]
        self._axis_src = (3 * np.asarray(hinges, dtype=np.int64)[:, None] + np.arange(3)).ravel()
        self._xaxis_flat = self.data.xaxis.reshape(-1)  # a view of MuJoCo's buffer
        angles = joints("angle")
        self._src = np.array(
            frame(limbs, ("pos",)) + frame(limbs, ("linvel", "angvel"))
            + frame(limbs[:1], _TORSO_AXES) + angles * 2 + joints("velocity")
            + [frame([nm], ("pos",))[2] for nm in limbs] + frame(limbs[:1], ("pos", *_TORSO_AXES))
        )  # fmt: skip
        where = decode_flat(np.arange(self.layout.flat_dim))  # flat index of every slot
        vec, sca = where["vectors"][:n], where["scalars"][:n]
        self._dst = np.concatenate([
            vec[1:, _AXES].ravel(), vec[:, VECTOR_INDEX["position"]].ravel(),
            vec[:, _VELOCITIES].ravel(), vec[0, _AXES].ravel(),
            sca[1:, scalar_slice(*xyz("angle"))].ravel(),
            sca[1:, scalar_slice(*xyz("angle_norm"))].ravel(),
            sca[1:, scalar_slice(*xyz("joint_vel"))].ravel(), sca[:, SCALAR_INDEX["height"]],
        ])  # fmt: skip
        k = 3 * m  # the hinge-axis block, filled from data.xaxis
        self._stage = np.zeros(k + len(self._src))
        self._st_axes, self._st_sensors = self._stage[:k], self._stage[k:]
        sizes = {"hinge_axes": k, "position": 3 * n, "velocity": 6 * n, "torso_axes": 9,
                 "angle": m, "angle_norm": m, "joint_vel": m, "height": n,
                 "torso_frame": 12}  # fmt: skip
        views = np.split(self._stage, np.cumsum(list(sizes.values()))[:-1])
        blocks = dict(zip(sizes, views, strict=True))
        self._st_obs = self._stage[: len(self._dst)]
        self._st_pos = blocks["position"].reshape(n, 3)
        self._st_vel = blocks["velocity"].reshape(2 * n, 3)
        self._speed, self._vel_sq = np.zeros(2 * n), np.zeros((2 * n, 3))
        self._st_angle_norm, self._st_joint_vel = blocks["angle_norm"], blocks["joint_vel"]
        self._st_torso_frame = blocks["torso_frame"]  # position, x, y, z axes (world frame)

    def _read_state(self) -> bool:
        """Gather and transform the current state into the stage; False if it is not finite.

        A non-finite position shows in the velocities (MuJoCo derives them from the frames), so
        a sum over the squared speeds screens for both.
        """
        np.take(self._sensordata, self._src, out=self._st_sensors)
        np.take(self._xaxis_flat, self._axis_src, out=self._st_axes)
        pos = self._st_pos
        np.subtract(pos, self._st_torso_frame[:3], out=pos)  # relative to the torso
        a = self._st_angle_norm
        np.add(np.multiply(a, self._angle_scale, out=a), self._angle_shift, out=a)
        v = self._st_joint_vel
        np.minimum(np.maximum(v, -10.0, out=v), 10.0, out=v)
        # scale every velocity by 10 / max(10, |v|): norms clipped to 10, commutes with rotations
        vel, speed = self._st_vel, self._speed
        np.add.reduce(np.square(vel, out=self._vel_sq), axis=1, out=speed)
        if not math.isfinite(np.add.reduce(speed)):
            return False
        np.divide(10.0, np.maximum(np.sqrt(speed, out=speed), 10.0, out=speed), out=speed)
        np.multiply(vel, speed[:, None], out=vel)
        return True

    def _write_observation(self) -> None:
        """Fill the dynamic parts of the observation buffer from the current MuJoCo state."""
        self._read_state()
        self._put_observation()

    def _put_observation(self) -> None:
        if self.task == "waypoint":
            self._vec[:, VECTOR_INDEX["target"]] = self._current_target()
        self._flat[self._dst] = self._st_obs

    def _copy_observation(self) -> Any:
        if self.obs_view == "graph":
            return {k: v.copy() for k, v in self._views.items()}
        return self._flat.copy()

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
        act, ctrl2 = self._check_action(action)
        d = self.data
        t0 = d.time
        self._ctrl[self._act_rows] = act[self._act_slots]  # MuJoCo clamps to ctrlrange [-1, 1]
        self._advance()
        if self._diverged(t0) or not self._read_state():
            last = self._last_obs
            obs = {k: v.copy() for k, v in last.items()} if isinstance(last, dict) else last.copy()
            return obs, 0.0, True, False, {"diverged": True, "cost": 0.0}
        self._put_observation()
        obs = self._last_obs = self._copy_observation()
        (x0, y0), (x, y, z, *axes) = self._xy, self._st_torso_frame.tolist()
        self._xy = (x, y)
        reward, terminated, info = self._score(
            (x - x0) / self.dt, (y - y0) / self.dt, x, y, z, axes, ctrl2
        )
        if self.task == "waypoint":
            self._update_waypoint()
        return obs, reward, terminated, False, info

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
    def _advance(self) -> None:
        """``frame_skip`` physics steps; afterwards frames, velocities and sensors describe the
        integrated state (``mj_step`` alone leaves them as computed before its last update).

        Euler and implicit integrators split the step: the position and velocity stages of the
        next step (``mj_step1``) are run now, so the work equals a bare ``mj_step`` loop's. RK4
        cannot be split and gets an explicit refresh.
        """
        m, d = self.model, self.data
        if self._split:
            mujoco.mj_step2(m, d)
            if self.frame_skip > 1:
                mujoco.mj_step(m, d, nstep=self.frame_skip - 1)
            mujoco.mj_step1(m, d)
        else:
            mujoco.mj_step(m, d, nstep=self.frame_skip)
            self._refresh_kinematics()

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
        cannot tell, so the warning counters are read then. A non-finite state that MuJoCo has
        not caught yet is found by :meth:`_read_state`.
        """
        if self.data.time < t0 + self._dt_check:
            return True
        if t0 == 0.0:
            warnings = self._instability_warnings()
            if warnings > self._warnings_seen:
                self._warnings_seen = warnings
                return True
        return False

    def _instability_warnings(self) -> int:
        """MuJoCo's count of bad qpos/qvel/qacc events (it resets the state when one occurs)."""
        w = self.data.warning
        return w[_INSTABILITY[0]].number + w[_INSTABILITY[1]].number + w[_INSTABILITY[2]].number

    def _check_action(self, action: Any) -> tuple[np.ndarray, float]:
        """The action as float64 and its squared norm (which also screens for NaN/Inf)."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(
                f"action must have shape {self.action_space.shape} "
                f"({self.layout.max_limbs} limbs x 3 torques), got {a.shape}"
            )
        ctrl2 = float(np.add.reduce(np.square(a)))  # ufuncs only: their code is warm in a step
        if not math.isfinite(ctrl2) and not np.isfinite(a).all():  # exact test on overflow only
            raise ValueError("action contains NaN or Inf; expected finite torques in [-1, 1]")
        return a, ctrl2

    def _current_target(self) -> np.ndarray:
        """The target direction as a 3-vector, from the torso's current position."""
        tx, ty = self._target_xy(*self.data.qpos[:2].tolist())
        return np.array([tx, ty, 0.0])

    def _update_waypoint(self) -> None:
        if np.linalg.norm(self._waypoint - self.data.qpos[:2]) < 1.0:
            theta = self.np_random.uniform(-np.pi, np.pi)
            dist = self.np_random.uniform(10.0, 20.0)
            self._waypoint = self.data.qpos[:2] + dist * np.array([np.cos(theta), np.sin(theta)])
        self._target = self._current_target()
        self._target_2d = (float(self._target[0]), float(self._target[1]))

    def _score(
        self, vx: float, vy: float, x: float, y: float, z: float, axes: list, ctrl2: float
    ) -> tuple[float, bool, dict[str, Any]]:
        """Reward, termination and ``info`` (reward terms, costs, speed, position) of a step.

        ``axes``: the torso's x, y and z axes in the world frame (9 numbers).
        """
        fam = self.spec_family
        heading = 0.0
        if fam.heading_reward:  # speed along the horizontal projection of the torso's x axis
            norm = math.hypot(axes[0], axes[1])
            heading = (vx * axes[0] + vy * axes[1]) / norm if norm > 1e-9 else 0.0
        tx, ty = self._target_xy(x, y)
        forward, ctrl = vx * tx + vy * ty, -self.ctrl_cost_weight * ctrl2
        speed = math.hypot(vx, vy)
        c_vel, c_reg = float(speed > fam.speed_limit), float(x >= self.region_x)
        kind = self.cost_type
        cost = c_vel if kind == "velocity" else c_reg if kind == "region" else max(c_vel, c_reg)
        info = {
            "reward_forward": forward, "reward_heading": heading, "reward_ctrl": ctrl,
            "reward_alive": fam.alive_bonus, "cost": cost, "cost_velocity": c_vel,
            "cost_region": c_reg, "speed": speed, "x_position": x, "y_position": y,
            "diverged": False,
        }  # fmt: skip
        # healthy: torso height in the family's band, tilt of its z axis (up at rest) below the
        # limit, and (cheetah) not standing still for ``stall_steps`` steps
        up_z = axes[8]  # z component of the torso's z axis (axes: x, y, z axes, 3 numbers each)
        tilt = math.acos(min(1.0, max(-1.0, up_z)))
        lo, hi = fam.height_band
        z0 = self.morph.torso_height
        healthy = lo * z0 < z < hi * z0 and tilt < fam.max_tilt
        if fam.stall_steps:
            qvel = self.data.qvel
            self._still = self._still + 1 if float(np.dot(qvel, qvel)) <= 1.0 else 0
            info["stalled"] = self._still >= fam.stall_steps
            healthy = healthy and not info["stalled"]
        return forward + heading + ctrl + fam.alive_bonus, not healthy, info

    def _target_xy(self, x: float, y: float) -> tuple[float, float]:
        """The horizontal unit target direction seen from torso position (x, y)."""
        if self.task == "direction":
            return self._target_2d
        dx, dy = float(self._waypoint[0]) - x, float(self._waypoint[1]) - y
        norm = math.hypot(dx, dy)
        return self._target_2d if norm < 1e-9 else (dx / norm, dy / norm)


def _as_slice(index: np.ndarray) -> slice | np.ndarray:
    """A slice when the indices are consecutive (a cheaper view), else the index array."""
    if index.size and np.array_equal(index, np.arange(index[0], index[0] + index.size)):
        return slice(int(index[0]), int(index[0]) + index.size)
    return index


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
