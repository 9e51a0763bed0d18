"""The training loop every offline agent shares: minibatches, logging, divergence checks.

An offline agent follows the protocol :class:`OfflineAgent` (``update``, ``act``, ``save``,
``load``); :func:`fit` runs its updates for ``steps`` steps, logs its statistics every
``log_every`` steps (and at the last one) to a list and, optionally, TensorBoard, and stops with
:class:`FloatingPointError` as soon as a logged statistic or, at the end, a weight is not finite —
so no agent returns NaN weights as if it had trained.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, fields
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
from tqdm import tqdm

from saferl.common.checkpoint import load_checkpoint, save_checkpoint
from saferl.common.runtime import resolve_device

Batches = Callable[[], tuple[Mapping[str, torch.Tensor], ...]]
C = TypeVar("C")


@runtime_checkable
class OfflineAgent(Protocol):
    """What the benchmark, ``saferl train-offline`` and the certificates need of an agent."""

    def update(self, *batches: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One training step on sampled minibatches; returns scalar statistics."""

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Batched deterministic actions ``(B, obs_dim) -> (B, act_dim)`` in [−1, 1]."""

    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint folder (``saferl.common.checkpoint``)."""

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> Any:
        """Rebuild the agent from :meth:`save`'s folder."""


class AgentBase:
    """What every offline agent shares: its setup (config, sizes, device, its own generator) and
    ``save``/``load`` in the toolkit's checkpoint format for an agent built as
    ``cls(obs_dim, act_dim, config, device=..., **init_args())``.

    Subclasses name their ``kind``, ``config_class`` and the module holding every weight
    (``weights``); ``init_args`` adds constructor arguments (BCQ-Lag's horizon) and
    ``progress`` attributes restored after loading (FISOR's step count).
    """

    kind: ClassVar[str]
    config_class: ClassVar[type]
    weights: ClassVar[str]

    def _setup(self, obs_dim: int, act_dim: int, config: Any, device: Any) -> None:
        """Config (reference defaults when None), sizes, device (``resolve_device``) and the
        agent's own generator for minibatches and noise, seeded with ``config.seed``. Networks
        are then built under ``seeded(config.seed)``, so the caller's RNG is left alone."""
        self.config = config if config is not None else self.config_class()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.device = resolve_device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(self.config.seed)

    def init_args(self) -> dict[str, Any]:
        return {}

    def progress(self) -> dict[str, Any]:
        return {}

    def save(self, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> None:
        """Write ``model.safetensors`` + ``config.json`` into folder ``path`` (atomically);
        ``extra`` (JSON-serialisable) is stored beside the config."""
        meta = {
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "init": self.init_args(),
            "progress": self.progress(),
            "config": asdict(self.config),
            **(extra or {}),
        }
        save_checkpoint(path, getattr(self, self.weights), meta, kind=self.kind)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> Any:
        """Rebuild the agent from :meth:`save`'s folder (nothing is unpickled)."""
        state, meta = load_checkpoint(path, cls.kind)
        config = config_from_dict(cls.config_class, meta["config"])
        agent = cls(meta["obs_dim"], meta["act_dim"], config, device=device, **meta["init"])
        getattr(agent, cls.weights).load_state_dict(state)
        for name, value in meta["progress"].items():
            setattr(agent, name, value)
        return agent


def fit(
    agent: Any,
    batches: Batches,
    steps: int,
    log_every: int,
    name: str,
    progress: bool = False,
    writer: Any = None,
) -> list[dict[str, float]]:
    """Run ``steps`` updates ``agent.update(*batches())``; returns the logged statistics.

    ``writer``: an optional TensorBoard ``SummaryWriter`` (scalars per logged step).
    """
    log: list[dict[str, float]] = []
    for step in tqdm(range(1, steps + 1), disable=not progress, desc=name):
        stats = agent.update(*batches())
        if step % log_every == 0 or step == steps:
            row = {k: float(v) for k, v in stats.items()}
            bad = sorted(k for k, v in row.items() if not math.isfinite(v))
            row["step"] = step
            log.append(row)
            if writer is not None:
                for key, value in row.items():
                    writer.add_scalar(key, value, step)
            if bad:
                raise FloatingPointError(
                    f"{name} training diverged at step {step}: {bad} not finite "
                    "(rescale rewards/costs or lower the learning rate)"
                )
    _check_weights(agent, name, steps)
    return log


def _check_weights(agent: Any, name: str, step: int) -> None:
    modules = [v for v in vars(agent).values() if isinstance(v, torch.nn.Module)]
    for module in modules:
        for pname, p in module.named_parameters():
            if not torch.isfinite(p).all():
                raise FloatingPointError(
                    f"{name} training diverged by step {step}: weight {pname!r} is not finite"
                )


def config_from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
    """A config dataclass from a dict (e.g. JSON); unknown keys raise KeyError naming them and
    the known ones, so a typo never silently falls back to a default."""
    if not isinstance(values, Mapping):
        raise TypeError(f"{cls.__name__} needs a dict of fields, got {type(values).__name__}")
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise KeyError(f"unknown {cls.__name__} field(s) {unknown}; expected some of {names}")
    return cls(**values)
