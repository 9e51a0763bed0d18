"""The offline methods by name: one registry for ``saferl bench``, ``saferl train-offline`` and
the certificates.

Each :class:`Method` names its config dataclass (one budget name, ``steps``), its trainer
``(data, metadata, config, device, progress, writer) -> (agent, log)`` (the agent follows
:class:`~saferl.offline.trainer.OfflineAgent`), its agent class (for ``load``) and whether it is
trained per cost threshold κ (BC-Safe, BCQ-Lag, CPQ) or once for all thresholds (BC-All, FISOR).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from saferl.offline.bc import BC, BCConfig, train_bc
from saferl.offline.bcq_lag import BCQLag, BCQLagConfig, train_bcq_lag
from saferl.offline.cpq import CPQ, CPQConfig, train_cpq
from saferl.offline.fisor import FISOR, FISORConfig, train_fisor
from saferl.offline.trainer import config_from_dict


@dataclass(frozen=True)
class Method:
    """An offline safe-RL method of the registry."""

    label: str
    """Display name (tables, plots)."""
    config: type
    """Config dataclass with the reference defaults."""
    train: Callable[..., tuple[Any, list[dict[str, float]]]]
    """``train(data, metadata, config, device, progress, writer) -> (agent, log)``."""
    agent: type
    """Agent class (``agent.load(path, device)``)."""
    threshold_conditioned: bool
    """Trained once per cost threshold κ (its config's ``cost_limit``) rather than once."""


METHODS: dict[str, Method] = {
    "bc_all": Method("BC-All", BCConfig, train_bc, BC, threshold_conditioned=False),
    "bc_safe": Method("BC-Safe", BCConfig, train_bc, BC, threshold_conditioned=True),
    "bcq_lag": Method("BCQ-Lag", BCQLagConfig, train_bcq_lag, BCQLag, threshold_conditioned=True),
    "cpq": Method("CPQ", CPQConfig, train_cpq, CPQ, threshold_conditioned=True),
    "fisor": Method("FISOR", FISORConfig, train_fisor, FISOR, threshold_conditioned=False),
}
"""Every offline method by name."""


def get_method(name: str) -> Method:
    """The method called ``name``; KeyError naming the known ones otherwise."""
    if name not in METHODS:
        raise KeyError(f"unknown offline method {name!r}; expected one of {sorted(METHODS)}")
    return METHODS[name]


def make_config(
    name: str,
    base: Any = None,
    seed: int | None = None,
    cost_limit: float | None = None,
    **overrides: Any,
) -> Any:
    """The config of method ``name``: ``base`` (an instance, a dict checked strictly, or None
    for the reference defaults) with ``seed``, the threshold κ (for threshold-conditioned
    methods) and ``overrides`` applied."""
    method = get_method(name)
    if base is None:
        config = method.config()
    elif isinstance(base, method.config):
        config = base
    elif isinstance(base, Mapping):
        config = config_from_dict(method.config, base)
    else:
        raise TypeError(f"{name} config must be a {method.config.__name__}, a dict or None, "
                        f"got {type(base).__name__}")  # fmt: skip
    changes = dict(overrides)
    if seed is not None:
        changes["seed"] = seed
    if method.threshold_conditioned:
        if cost_limit is None and getattr(config, "cost_limit", None) is None:
            raise ValueError(f"{name} needs a cost threshold κ (cost_limit)")
        if cost_limit is not None:
            changes["cost_limit"] = float(cost_limit)
    elif hasattr(config, "cost_limit"):  # BC-All: the same network as BC-Safe, on all data
        changes["cost_limit"] = None
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(config)})
    if unknown:
        raise KeyError(f"unknown {method.config.__name__} field(s) {unknown}")
    return dataclasses.replace(config, **changes)
