"""What every sub-command uses to check its inputs and output paths before doing any work.

* :class:`UsageError` — a user error; ``saferl`` prints it as one line on stderr, exit status 2;
* :func:`user_errors` — turns what a validator raises on bad input (ValueError, KeyError,
  TypeError, OSError) into a :class:`UsageError`;
* argparse types (:func:`positive_int`, :func:`non_negative_float`, ...) so that a bad number
  is refused while the arguments are parsed;
* :func:`check_device`, :func:`check_input_file`, :func:`check_output_dir`,
  :func:`check_output_file` and :func:`check_distinct` for devices and paths. The path checks
  create nothing: they find the nearest existing folder and try to make (and remove) a temporary
  folder in it, which is the only portable test (``os.access`` says yes to root everywhere).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, TypeError, OSError)
"""What validators raise on bad input (a ``json.JSONDecodeError`` is a ValueError)."""


class UsageError(Exception):
    """A user error (bad argument, unreadable input, unwritable output): one line, exit 2."""


def describe(exc: BaseException) -> str:
    """A one-line message for ``exc`` (a KeyError's text without repr quotes, OSError's
    ``strerror: 'file'`` without the errno)."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]
    elif isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.strerror}: {str(exc.filename)!r}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


@contextlib.contextmanager
def user_errors(context: str | None = None) -> Iterator[None]:
    """Re-raise what the block raises on bad input as a :class:`UsageError` (``context: message``).

    Use it only around validation (loading inputs, building configs, making an env once); an
    exception raised by the work itself is a bug and must reach the CLI as it is.
    """
    try:
        yield
    except UsageError:
        raise
    except USER_ERRORS as exc:
        message = describe(exc)
        raise UsageError(f"{context}: {message}" if context else message) from exc


# --------------------------------------------------------------------------- argparse types


def _number(kind: type, text: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        name = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An int >= 1."""
    value = _number(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An int >= 0."""
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """A finite float."""
    return _number(float, text)


def positive_float(text: str) -> float:
    """A finite float > 0."""
    value = _number(float, text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite float >= 0."""
    value = _number(float, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def discount(text: str) -> float:
    """A discount factor in [0, 1]."""
    value = _number(float, text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def json_object(text: str) -> dict[str, Any]:
    """A JSON object (dict), e.g. ``'{"width": 64}'``."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object such as '{{\"width\": 64}}', got {text!r}"
        )
    return value


# --------------------------------------------------------------------------- devices and paths


def add_grid_arguments(p: argparse.ArgumentParser, cell: str, cpus_default: float | None,
                       note: str = "") -> None:  # fmt: skip
    """The scale-out flags every grid command shares (``saferl.grid``): ``--workers``,
    ``--address``, ``--cpus-per-cell``, ``--gpus-per-cell``; ``cell`` names a cell in the help
    ("task", "seed", "cell"), ``note`` is appended to ``--address``'s help."""
    p.add_argument("--workers", type=positive_int, default=1,
                   help=f"{cell}s run side by side as Ray tasks on this machine (1: in-process, "
                        "no Ray)")  # fmt: skip
    p.add_argument(
        "--address",
        default=None,
        help=f"run on an existing Ray cluster: 'auto' or ray://HOST:PORT{note}",
    )
    default = "--threads" if cpus_default is None else cpus_default
    p.add_argument(
        "--cpus-per-cell",
        type=positive_float,
        default=cpus_default,
        help=f"CPUs (torch threads) a {cell} reserves (default: {default})",
    )
    p.add_argument(
        "--gpus-per-cell",
        type=non_negative_float,
        default=0.0,
        help=f"GPUs a {cell} reserves under Ray (a fraction shares a GPU)",
    )


def report_grid(grid: Any, command: str, cell: str) -> int:
    """Print how a grid went (cells run, already done, failed, each failure on stderr); the
    exit status: 1 when cells failed (a re-run retries just those), else 0."""
    print(f"{len(grid.ran)} cells ran, {len(grid.skipped)} were already done, "
          f"{len(grid.failed)} failed ({grid.seconds:.0f} s)")  # fmt: skip
    if not grid.failed:
        return 0
    for key, error in grid.failed.items():
        print(f"failed {cell} {key}: {error}", file=sys.stderr)
    total = len(grid.failed) + len(grid.ran) + len(grid.skipped)
    print(f"saferl {command}: {len(grid.failed)} of {total} {cell}s failed; re-run the same "
          f"command to retry them (finished {cell}s are kept)", file=sys.stderr)  # fmt: skip
    return 1


def check_ray() -> None:
    """UsageError unless Ray (the scale-out engine of ``--workers``/``--address``) imports."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise UsageError("--workers > 1 and --address run cells on Ray, which is not installed: "
                         "pip install 'saferl[ray]'") from exc  # fmt: skip


DEVICE_HELP = "torch device: cpu, cuda, cuda:N or auto (default: cuda if available)"


def check_device(device: str | None) -> str:
    """The device to run on (``None``/``"auto"``: cuda if available, else cpu) as a string;
    UsageError for an unknown device or CUDA where there is none."""
    from saferl.common import resolve_device

    with user_errors():
        return str(resolve_device(device))


def check_input_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path; UsageError unless it is an existing file."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {str(path)!r} is a folder; expected a file")
    if not path.is_file():
        raise UsageError(f"{what} {str(path)!r} does not exist")
    return path


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable_folder(folder: Path, target: Path, what: str) -> None:
    """UsageError unless files can be created in ``folder`` (an existing ancestor of
    ``target``, or ``target`` itself); nothing is left behind."""
    if not folder.is_dir():
        raise UsageError(f"cannot write {what} {str(target)!r}: {str(folder)!r} is a file, "
                         "not a folder")  # fmt: skip
    try:
        probe = tempfile.mkdtemp(prefix=".saferl-write-check-", dir=folder)
    except OSError as exc:
        reason = exc.strerror or describe(exc)
        raise UsageError(f"cannot write {what} {str(target)!r}: {reason} "
                         f"(in {str(folder)!r})") from exc  # fmt: skip
    shutil.rmtree(probe, ignore_errors=True)


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """``path`` as a Path; UsageError unless it is a folder files can be written to, or one
    that can be created. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {str(path)!r} is a file; expected a folder")
    _check_writable_folder(_nearest_existing(path), path, what)
    return path


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """``path`` as a Path; UsageError unless a file can be written there (it is no folder and
    its folder exists or can be created, and is writable). An existing file will be replaced.
    Creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {str(path)!r} is a folder; expected a file name")
    if path.name in ("", ".", ".."):
        raise UsageError(f"{what} {str(path)!r} names no file")
    _check_writable_folder(_nearest_existing(path.parent), path, what)
    return path


def check_distinct(paths: Sequence[tuple[str, str | os.PathLike]]) -> None:
    """UsageError if two of the ``(what, path)`` outputs are the same file (one would overwrite
    the other)."""
    seen: dict[str, str] = {}
    for what, path in paths:
        key = os.path.normcase(os.path.realpath(path))
        if key in seen:
            raise UsageError(f"{what} and {seen[key]} would both be written to {str(path)!r}")
        seen[key] = what


# --------------------------------------------------------------------------- datasets


def load_dataset(path: str | os.PathLike, task: str | None = None) -> tuple[dict, Any]:
    """``saferl.data.load_dataset(path, task=task)``; UsageError for a missing, unreadable or
    invalid file or an unknown DSRL task."""
    from saferl.data import load_dataset as load

    check_input_file(path, "dataset")
    with user_errors(f"cannot read dataset {str(path)!r}"):
        return load(path, task=task)


def check_env(metadata: Any, source: str | os.PathLike) -> None:
    """UsageError unless the env a dataset was collected on (and is evaluated on) can be built."""
    with user_errors(f"dataset {str(source)!r}: cannot build its env {metadata.env_id!r}"):
        metadata.make_env().close()


def check_safe_data(data: dict, threshold: float, source: str | os.PathLike) -> None:
    """UsageError unless some trajectory of ``data`` has a cost return <= ``threshold`` (what
    BC-Safe trains on)."""
    from saferl.data import trajectory_returns

    _, costs = trajectory_returns(data)
    if not (costs <= threshold).any():
        raise UsageError(f"dataset {str(source)!r} has no trajectory with a cost return <= "
                         f"{threshold:g} (lowest: {costs.min():.3g}), so BC-Safe has nothing to "
                         "train on; pick a larger threshold")  # fmt: skip
