"""Checkpoints for EP networks in the toolkit's format (:mod:`saferl.common.checkpoint`):
``model.safetensors`` + ``config.json`` with the network's config under ``"network"``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from saferl.common.checkpoint import load_checkpoint, save_checkpoint
from saferl.ep.network import EPNetConfig, EPNetwork

_CONFIG_KEYS = ("in_dim", "hidden", "n_classes", "activation", "angle_deg", "loss", "dtype")


def save_network(net: EPNetwork, directory: str | Path, extra: dict | None = None) -> Path:
    """Write the network (and ``extra``, e.g. metrics, into the config) atomically."""
    cfg = {k: v for k, v in asdict(net.config).items() if k in _CONFIG_KEYS}
    return save_checkpoint(directory, net, {"network": cfg, **(extra or {})}, kind="ep_network")


def load_network(directory: str | Path, device: str | torch.device | None = None) -> EPNetwork:
    """Rebuild an :class:`EPNetwork` from :func:`save_network` output; KeyError if incomplete."""
    state, meta = load_checkpoint(directory, "ep_network")
    if "network" not in meta:
        raise KeyError(f"{Path(directory) / 'config.json'} has no 'network' entry")
    cfg = meta["network"]
    missing = [k for k in _CONFIG_KEYS if k not in cfg]
    if missing:
        raise KeyError(f"network config lacks {missing}")
    cfg["hidden"] = tuple(cfg["hidden"])
    net = EPNetwork(EPNetConfig(**cfg), device="cpu")
    net.load_state_dict(state)
    return net.to(device if device is not None else "cpu")
