"""The one checkpoint format: a folder with ``model.safetensors`` (weights) and ``config.json``.

Loading never unpickles anything. Both files are written atomically (:mod:`saferl.common.io`);
the JSON names the ``kind`` of model it belongs to, and loading a folder of another kind fails
with a clear error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from saferl.common.io import write_bytes, write_json

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_checkpoint(
    folder: str | os.PathLike,
    weights: torch.nn.Module | Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    kind: str,
) -> Path:
    """Write ``weights`` (a module's state dict or a tensor dict) and ``config`` into ``folder``.

    ``config`` must be JSON-serialisable; ``kind`` (e.g. ``"fisor"``) is stored with it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    text = json.dumps({"kind": kind, **dict(config)})  # fails early if not serialisable
    write_bytes(folder / WEIGHTS, safetensors_bytes(tensors))
    write_json(folder / CONFIG, json.loads(text))
    return folder


def load_checkpoint(
    folder: str | os.PathLike, kind: str, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a folder written by :func:`save_checkpoint`: (tensors on ``device``, config).

    Raises FileNotFoundError when a file is missing and ValueError when the folder holds
    another kind of checkpoint or its config is not a JSON object.
    """
    folder = Path(folder)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"checkpoint folder {str(folder)!r} lacks {name}")
    try:
        config = json.loads((folder / CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{folder / CONFIG} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{folder / CONFIG} must hold a JSON object")
    found = config.pop("kind", config.get("algorithm"))
    if found != kind:
        raise ValueError(f"{str(folder)!r} holds a {found!r} checkpoint, expected {kind!r}")
    return load_file(str(folder / WEIGHTS), device=str(device)), config
