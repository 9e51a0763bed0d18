"""Checkpoints of the offline learners: ``model.safetensors`` + ``config.json`` in a folder.

Loading never unpickles anything; files are written atomically (temp file, then rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(path: str | Path, module: torch.nn.Module, meta: Mapping[str, Any]) -> None:
    """Write ``module``'s state dict and the JSON-serialisable ``meta`` into folder ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write(path / "model.safetensors", lambda p: save_file(tensors, p))
    text = json.dumps(dict(meta), indent=2)
    atomic_write(path / "config.json", lambda p: Path(p).write_text(text))


def load_checkpoint(
    path: str | Path, algorithm: str, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a folder written by :func:`save_checkpoint`; checks ``meta["algorithm"]``."""
    path = Path(path)
    for name in ("config.json", "model.safetensors"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint {path} lacks {name}")
    meta = json.loads((path / "config.json").read_text())
    if meta.get("algorithm") != algorithm:
        raise ValueError(
            f"{path} holds a {meta.get('algorithm')!r} checkpoint, expected {algorithm!r}"
        )
    return load_file(str(path / "model.safetensors"), device=str(device)), meta
