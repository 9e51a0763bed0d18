"""Resumable online runs: checkpoints of a whole SB3 run (TD3, SAC, PPO), written atomically.

A run folder ``out`` keeps its checkpoints in ``out/checkpoints/``::

    latest                 one line: the name of the current checkpoint folder (atomic swap)
    step000000010000-3fa2/ model.safetensors: policy weights (actor, critics, targets, value),
                           the optimisers' state tensors (:func:`optimizers`), SAC's entropy
                           coefficient, torch's RNG state;
                           config.json: the run's config, step and update counters, the RNG
                           states of numpy, ``random``, every env and the action space, the
                           episodes and losses recorded so far and the replay chunks in use
    replay/T0-T1.npz       the replay-buffer rows of vector steps [T0, T1) (numpy arrays,
                           written once, never pickled; a checkpoint lists the chunks that
                           make up its buffer)

A checkpoint is written into a fresh folder, then ``latest`` is replaced in one rename, so a
reader (or a run killed at any moment) sees the previous checkpoint or the new one, never a
mix. Only the replay rows added since the previous checkpoint are written each time; chunks
and folders that no checkpoint references any more are removed after the swap. Nothing is read
back with pickle (``np.load(..., allow_pickle=False)``, safetensors, JSON).

What a resumed run does not carry over: the episodes in progress at the checkpoint. The envs
are reset on resume (their RNG streams continue where they were), so each agent starts a fresh
episode; the transitions of the interrupted episodes stay in the replay buffer. An on-policy run
(PPO) has no replay buffer: it is checkpointed at rollout boundaries, where the policy and its
optimiser are all the state there is; stopped inside a rollout, it saves the state of that
rollout's start and the resumed run collects the rollout again.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saferl.common.checkpoint import CONFIG, load_checkpoint, save_checkpoint
from saferl.common.io import atomic_write, write_text

KIND = "online_run"
FOLDER, LATEST, REPLAY = "checkpoints", "latest", "replay"
_BUFFER_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def checkpoint_root(out: str | os.PathLike) -> Path:
    """Where the checkpoints of the run saved in ``out`` live."""
    return Path(out) / FOLDER


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    """The folder of the newest complete checkpoint of the run in ``out`` (None if none)."""
    pointer = checkpoint_root(out) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    folder = checkpoint_root(out) / name
    if not name or "/" in name or not (folder / CONFIG).is_file():
        raise FileNotFoundError(f"{pointer} names checkpoint {name!r}, which is missing")
    return folder


def read_run_state(out: str | os.PathLike, kind: str = KIND) -> dict[str, Any]:
    """The JSON part of the newest checkpoint in ``out`` (config, counters, RNG states, ...);
    FileNotFoundError when ``out`` holds no checkpoint, ValueError when it is not ``kind``'s."""
    folder = latest_checkpoint(out)
    if folder is None:
        raise FileNotFoundError(f"{str(out)!r} holds no checkpoint ({LATEST} is missing in "
                                f"{checkpoint_root(out)}); start the run with --out")  # fmt: skip
    state = json.loads((folder / CONFIG).read_text())
    if state.get("kind") != kind:
        raise ValueError(f"{folder} holds a {state.get('kind')!r} checkpoint, expected {kind!r}")
    return state


# --------------------------------------------------------------------------- RNG states


def jsonable_rng(state: Any) -> Any:
    """numpy's legacy state tuple / a bit generator's state dict as JSON (ints, lists)."""
    if isinstance(state, tuple):
        return [jsonable_rng(s) for s in state]
    if isinstance(state, dict):
        return {k: jsonable_rng(v) for k, v in state.items()}
    if isinstance(state, np.ndarray):
        return state.tolist()
    if isinstance(state, np.generic):
        return state.item()
    return state


def global_rng_states() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON part: numpy's and ``random``'s global states, tensors: torch's CPU/CUDA states)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            tensors[f"rng.cuda{i}"] = torch.cuda.get_rng_state(i)
    return {
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "random": [py_version, list(py_state), py_gauss],
    }, tensors


def set_global_rng_states(saved: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
    kind, keys, pos, has_gauss, gauss = saved["numpy"]
    np.random.set_state((kind, np.asarray(keys, np.uint32), pos, has_gauss, gauss))
    py_version, py_state, py_gauss = saved["random"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"rng.cuda{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"rng.cuda{i}"], i)


def env_rng_states(vec_env: Any) -> list[Any]:
    """The bit-generator state of every env of a vector env (JSON)."""
    return [jsonable_rng(env.unwrapped.np_random.bit_generator.state) for env in vec_env.envs]


def set_env_rng_states(vec_env: Any, states: list[Any]) -> None:
    if len(states) != len(vec_env.envs):
        raise ValueError(f"checkpoint holds {len(states)} env RNG states for "
                         f"{len(vec_env.envs)} envs")  # fmt: skip
    for env, state in zip(vec_env.envs, states, strict=True):
        env.unwrapped.np_random.bit_generator.state = state


# --------------------------------------------------------------------------- optimisers


def optimizer_tensors(name: str, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The per-parameter state of ``optimizer`` (Adam: step, exp_avg, exp_avg_sq) as
    ``optim.<name>.<param index>.<field>`` tensors."""
    out = {}
    for index, fields in optimizer.state_dict()["state"].items():
        for key, value in fields.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            out[f"optim.{name}.{index}.{key}"] = tensor
    return out


def load_optimizer_tensors(
    name: str, optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor]
) -> None:
    """Put the state saved by :func:`optimizer_tensors` back (the param groups — learning rate,
    betas, clip — are the freshly built optimiser's, from the same config)."""
    prefix = f"optim.{name}."
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, field = key[len(prefix) :].split(".", 1)
            state.setdefault(int(index), {})[field] = value
    full = optimizer.state_dict()
    full["state"] = state
    optimizer.load_state_dict(full)


def optimizers(model: Any) -> dict[str, torch.optim.Optimizer]:
    """The optimisers of an SB3 model that a checkpoint carries, by name: ``actor`` and
    ``critic`` (TD3, SAC), ``ent_coef`` (SAC with a learned entropy coefficient), ``policy``
    (PPO: one optimiser for the policy net, its log-std and the value net)."""
    if hasattr(model, "replay_buffer"):
        named = {"actor": model.actor.optimizer, "critic": model.critic.optimizer}
        if getattr(model, "ent_coef_optimizer", None) is not None:
            named["ent_coef"] = model.ent_coef_optimizer
        return named
    return {"policy": model.policy.optimizer}


def model_tensors(model: Any) -> dict[str, torch.Tensor]:
    """Everything trainable of an SB3 model as named tensors: ``policy.*`` (the policy's state
    dict, targets included), ``optim.*`` (:func:`optimizers`) and SAC's ``sac.log_ent_coef``."""
    tensors = {f"policy.{k}": v for k, v in model.policy.state_dict().items()}
    for name, optimizer in optimizers(model).items():
        tensors.update(optimizer_tensors(name, optimizer))
    if getattr(model, "log_ent_coef", None) is not None:
        tensors["sac.log_ent_coef"] = model.log_ent_coef.detach()
    return tensors


def load_model_tensors(model: Any, tensors: Mapping[str, torch.Tensor]) -> None:
    """Put :func:`model_tensors` back into a freshly built model of the same config."""
    policy = {k.removeprefix("policy."): v for k, v in tensors.items() if k.startswith("policy.")}
    model.policy.load_state_dict(policy)
    for name, optimizer in optimizers(model).items():
        load_optimizer_tensors(name, optimizer, tensors)
    if getattr(model, "log_ent_coef", None) is not None:
        with torch.no_grad():  # in place: the entropy optimiser holds this tensor
            model.log_ent_coef.copy_(tensors["sac.log_ent_coef"])


# --------------------------------------------------------------------------- replay buffer


def _chunk_name(t0: int, t1: int) -> str:
    return f"{t0:012d}-{t1:012d}.npz"


def _chunk_range(name: str) -> tuple[int, int]:
    t0, t1 = name.removesuffix(".npz").split("-")
    return int(t0), int(t1)


def save_replay_chunk(root: Path, buffer: Any, t0: int, t1: int) -> str | None:
    """Write the buffer rows of vector steps [t0, t1) (ring positions ``t % size``)."""
    if t1 <= t0:
        return None
    size = buffer.buffer_size
    t0 = max(t0, t1 - size)  # older rows are overwritten already
    rows = np.arange(t0, t1) % size
    arrays = {f: getattr(buffer, f)[rows] for f in _BUFFER_FIELDS if hasattr(buffer, f)}
    folder = root / REPLAY
    folder.mkdir(parents=True, exist_ok=True)
    name = _chunk_name(t0, t1)
    atomic_write(folder / name, lambda f: np.savez(f, **arrays))
    return name


def load_replay(root: Path, buffer: Any, chunks: list[str], rows_total: int) -> None:
    """Fill ``buffer`` from the chunks of a checkpoint taken after ``rows_total`` vector steps."""
    size = buffer.buffer_size
    for name in chunks:
        t0, t1 = _chunk_range(name)
        with np.load(root / REPLAY / name, allow_pickle=False) as data:
            keep = max(t0, rows_total - size)  # rows a later chunk overwrote are skipped
            if keep >= t1:
                continue
            rows = np.arange(keep, t1) % size
            for field in data.files:
                getattr(buffer, field)[rows] = data[field][keep - t0 :]
    buffer.pos = rows_total % size
    buffer.full = rows_total >= size


def live_chunks(chunks: list[str], rows_total: int, size: int) -> list[str]:
    """The chunks holding rows still in a ring buffer of ``size`` after ``rows_total`` rows."""
    return [c for c in chunks if _chunk_range(c)[1] > rows_total - size]


# --------------------------------------------------------------------------- an SB3 learner


def learner_state(
    model: Any, vec_env: Any, out: str | os.PathLike, step: int, chunks: list[str], rows_saved: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An SB3 learner's part of a checkpoint after ``step`` transitions: (tensors: weights,
    optimisers and torch's RNG; state: counters, the replay chunks in use and the numpy,
    ``random``, env and action-space RNG states). The replay rows added since ``rows_saved``
    (vector steps) are written now; ``state["rows"]`` and ``state["replay_chunks"]`` are what
    the next call takes as ``rows_saved`` and ``chunks``. ``vec_env`` is the DummyVecEnv whose
    envs step (inside any normalising wrapper)."""
    rows = step // model.n_envs
    if hasattr(model, "replay_buffer"):
        buffer = model.replay_buffer
        chunk = save_replay_chunk(checkpoint_root(out), buffer, rows_saved, rows)
        chunks = live_chunks(chunks + ([chunk] if chunk else []), rows, buffer.buffer_size)
    rng_json, rng_tensors = global_rng_states()
    state = {
        "num_timesteps": int(step),
        "n_updates": int(model._n_updates),
        "episode_num": int(model._episode_num),
        "rows": rows,
        "replay_chunks": list(chunks),
        "rng": {
            **rng_json,
            "envs": env_rng_states(vec_env),
            "action_space": jsonable_rng(model.action_space.np_random.bit_generator.state),
        },
    }
    return {**model_tensors(model), **rng_tensors}, state


def restore_learner(
    model: Any,
    vec_env: Any,
    out: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    state: Mapping[str, Any],
) -> None:
    """Put :func:`learner_state`'s part of a checkpoint of ``out`` back into a freshly built
    learner of the same config (the global RNG states are set: call inside
    :func:`saferl.common.runtime.seeded`)."""
    load_model_tensors(model, tensors)
    if hasattr(model, "replay_buffer"):
        load_replay(checkpoint_root(out), model.replay_buffer, state["replay_chunks"],
                    state["rows"])  # fmt: skip
    model.num_timesteps = int(state["num_timesteps"])
    model._n_updates = int(state["n_updates"])
    model._episode_num = int(state["episode_num"])
    rng = state["rng"]
    set_global_rng_states(rng, tensors)
    set_env_rng_states(vec_env, rng["envs"])
    model.action_space.np_random.bit_generator.state = rng["action_space"]


# --------------------------------------------------------------------------- whole checkpoints


def write_checkpoint(
    out: str | os.PathLike,
    step: int,
    tensors: Mapping[str, torch.Tensor],
    state: Mapping[str, Any],
    kind: str = KIND,
) -> Path:
    """Write a checkpoint folder, then atomically point ``latest`` at it; remove the folders
    and replay chunks no longer referenced. ``state["replay_chunks"]`` lists the chunks;
    ``kind`` names what the checkpoint belongs to (an online run, a dataset collection)."""
    root = checkpoint_root(out)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step{step:012d}-{secrets.token_hex(3)}"
    # safetensors refuses tensors sharing memory (a module registered under two names)
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}
    save_checkpoint(root / name, tensors, state, kind=kind)
    write_text(root / LATEST, name + "\n")
    keep = set(state.get("replay_chunks", []))
    for entry in root.iterdir():
        if entry.is_dir() and entry.name not in (name, REPLAY):
            shutil.rmtree(entry, ignore_errors=True)
    if (root / REPLAY).is_dir():
        for chunk in (root / REPLAY).iterdir():
            if chunk.name not in keep and not chunk.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    chunk.unlink()
    return root / name


def read_checkpoint(
    out: str | os.PathLike, kind: str = KIND
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, state) of the newest checkpoint in ``out`` (ValueError if not ``kind``'s)."""
    folder = latest_checkpoint(out)
    if folder is None:
        raise FileNotFoundError(f"{str(out)!r} holds no checkpoint")
    return load_checkpoint(folder, kind)
