"""Device choice, seeding and thread settings, without touching the caller's process state.

Library code never reseeds the global RNGs or changes the torch thread count behind the
caller's back (DESIGN.md): :func:`seeded` forks the global RNG state for the block it guards,
:func:`torch_threads` restores the thread count on exit.
"""

from __future__ import annotations

import contextlib
import random
import signal
import sys
import threading
from collections.abc import Iterator
from importlib import metadata

import numpy as np
import torch


def default_device() -> str:
    """``"cuda"`` when a CUDA device is available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on: ``None`` or ``"auto"`` -> :func:`default_device`.

    Raises ValueError for an unknown device string and for a CUDA device when CUDA is absent
    (instead of a cryptic error later or a silent fall-back to the CPU).
    """
    if device is None or device == "auto":
        return torch.device(default_device())
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}; expected 'cpu', 'cuda', 'cuda:N' or 'auto'"
                         ) from exc  # fmt: skip
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here; "
                             "use 'cpu' or 'auto'")  # fmt: skip
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} requested but only "
                             f"{torch.cuda.device_count()} CUDA device(s) exist")  # fmt: skip
    return dev


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with the global RNGs (torch, numpy, ``random``) seeded with ``seed``;
    restore their states afterwards.

    Code inside gets the same numbers as after ``torch.manual_seed(seed)`` and
    ``np.random.seed(seed)`` (network initialisation, libraries such as Stable-Baselines3 that
    seed the globals themselves), while the caller's RNG streams continue as if the block had
    not run.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed)
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


class TorchRNG:
    """A private stream of torch's global RNG for code that cannot take a generator (dropout).

    Created inside :func:`seeded`, it starts from the state there; ``with rng.active():`` runs a
    block on this stream (the CPU generator, and the CUDA one of ``device``) and gives the
    caller's states back afterwards, so an agent's dropout neither draws from nor disturbs the
    caller's RNG.
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        self._state = self._get()

    def _get(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self._cuda else None
        return torch.get_rng_state(), cuda

    def _set(self, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        torch.set_rng_state(state[0])
        if self._cuda:
            torch.cuda.set_rng_state(state[1], self.device)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        caller = self._get()
        self._set(self._state)
        try:
            yield
        finally:
            self._state = self._get()
            self._set(caller)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op torch threads (None: leave as is); restore after."""
    if threads is None:
        yield
        return
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def versions() -> dict[str, str]:
    """Versions of the packages a run depends on (for the record written beside a run)."""
    names = ("saferl", "torch", "numpy", "gymnasium", "mujoco", "stable-baselines3", "diffusers")
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, message: str = "") -> Iterator[threading.Event]:
    """Within the block SIGTERM and SIGINT set ``stop`` (the work checkpoints and returns)
    instead of ending the process, printing ``message`` with the signal's name on stderr if
    one is given; the previous handlers come back after the block."""

    def on_signal(signum: int, frame: object) -> None:
        if message:
            print(message.format(signal=signal.Signals(signum).name), file=sys.stderr, flush=True)
        stop.set()

    handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
