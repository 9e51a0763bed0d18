"""Checkpoints for EP networks: safetensors weights + JSON config (never unpickled)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from saferl.ep.network import EPNetConfig, EPNetwork

_CONFIG_KEYS = ("in_dim", "hidden", "n_classes", "activation", "angle_deg", "loss", "dtype")


def save_network(net: EPNetwork, directory: str | Path, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (+ ``extra``, e.g. metrics) atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=directory)
    os.close(fd)
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, tmp)
    os.replace(tmp, directory / "model.safetensors")
    cfg = {k: v for k, v in asdict(net.config).items() if k in _CONFIG_KEYS}
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=directory)
    with os.fdopen(fd, "w") as f:
        json.dump({"network": cfg, **(extra or {})}, f, indent=1)
    os.replace(tmp, directory / "config.json")
    return directory


def load_network(directory: str | Path, device: str | torch.device | None = None) -> EPNetwork:
    """Rebuild an :class:`EPNetwork` from :func:`save_network` output; KeyError if incomplete."""
    directory = Path(directory)
    for name in ("config.json", "model.safetensors"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} missing; expected a save_network folder")
    meta = json.loads((directory / "config.json").read_text())
    if "network" not in meta:
        raise KeyError(f"{directory / 'config.json'} has no 'network' entry")
    cfg = meta["network"]
    missing = [k for k in _CONFIG_KEYS if k not in cfg]
    if missing:
        raise KeyError(f"network config lacks {missing}")
    cfg["hidden"] = tuple(cfg["hidden"])
    net = EPNetwork(EPNetConfig(**cfg), device="cpu")
    net.load_state_dict(load_file(directory / "model.safetensors"))
    return net.to(device if device is not None else "cpu")
