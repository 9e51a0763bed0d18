"""Build any policy kind ("set", "transformer", "mlp") from the env's spaces."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from saferl.common.runtime import resolve_device
from saferl.policies.graph import layout_for
from saferl.policies.mlp import MLPActor, MLPConfig, MLPCritic
from saferl.policies.set import SETActor, SETConfig, SETCritic
from saferl.policies.transformer import TransformerActor, TransformerConfig, TransformerCritic

KINDS: dict[str, tuple[type, type[nn.Module], type[nn.Module]]] = {
    "set": (SETConfig, SETActor, SETCritic),
    "transformer": (TransformerConfig, TransformerActor, TransformerCritic),
    "mlp": (MLPConfig, MLPActor, MLPCritic),
}
"""kind -> (config dataclass, actor class, critic class)."""


def make_config(kind: str, config: Any = None) -> Any:
    """The config dataclass of ``kind`` from None (reference sizes), a dict, or an instance.

    Raises KeyError for an unknown kind, TypeError for an unknown field or config type.
    """
    if kind not in KINDS:
        raise KeyError(f"unknown policy kind {kind!r}; expected one of {sorted(KINDS)}")
    cls = KINDS[kind][0]
    if config is None:
        return cls()
    if isinstance(config, cls):
        return config
    if isinstance(config, dict):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(config) - names
        if unknown:
            raise TypeError(f"unknown {cls.__name__} fields {sorted(unknown)}; known {names}")
        return cls(**config)
    raise TypeError(f"config for {kind!r} must be None, a dict or {cls.__name__}, got {config!r}")


def build_actor(
    kind: str,
    observation_space: Any,
    action_space: Any,
    config: Any = None,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Actor of ``kind`` mapping a batch of flat observations (B, L*PER_LIMB) to actions
    (B, L*3) in [-1, 1]. Spaces are the env's flat Boxes (ValueError if they match no layout)."""
    cfg = make_config(kind, config)
    layout = layout_for(observation_space, action_space)
    return KINDS[kind][1](layout, cfg).to(resolve_device(device))


def build_critic(
    kind: str,
    observation_space: Any,
    action_space: Any,
    config: Any = None,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Critic of ``kind``: (obs (B, flat), actions (B, L, 3)) -> Q (B, 1)."""
    cfg = make_config(kind, config)
    layout = layout_for(observation_space, action_space)
    return KINDS[kind][2](layout, cfg).to(resolve_device(device))
