"""What every learner shares: atomic I/O, the checkpoint format, device/seed/thread helpers and
the PID Lagrangian controller.

* :mod:`saferl.common.io` — ``atomic_write`` and ``write_bytes/text/json``, ``save_figure``;
* :mod:`saferl.common.checkpoint` — ``model.safetensors`` + ``config.json`` folders;
* :mod:`saferl.common.runtime` — ``default_device``, ``resolve_device``, ``seeded``,
  ``stop_on_signals``, ``torch_threads``, ``versions``;
* :mod:`saferl.common.lagrangian` — ``PIDLagrangian`` and its config, ``annealed_limit``.
"""

from saferl.common.checkpoint import load_checkpoint, save_checkpoint
from saferl.common.io import atomic_write, save_figure, write_bytes, write_json, write_text
from saferl.common.lagrangian import PIDLagrangian, PIDLagrangianConfig, annealed_limit
from saferl.common.runtime import (
    TorchRNG,
    default_device,
    resolve_device,
    seeded,
    stop_on_signals,
    torch_threads,
    versions,
)

__all__ = [
    "PIDLagrangian", "PIDLagrangianConfig", "TorchRNG", "annealed_limit", "atomic_write",
    "default_device", "load_checkpoint", "resolve_device", "save_checkpoint", "save_figure",
    "seeded", "stop_on_signals", "torch_threads", "versions", "write_bytes", "write_json",
    "write_text",
]  # fmt: skip
