"""Atomic file writes: a reader sees the old file or the new one, never half of one.

``atomic_write(path, write)`` hands ``write`` a binary file object, then puts the file in place
with one rename. The file is written unnamed where the OS allows it (Linux ``O_TMPFILE``) and
named only once complete, so even a process killed mid-write (SIGKILL) leaves the old file intact
and no temp file behind; elsewhere a hidden temp file beside the target is removed on any
exception. The data are fsync'ed before the rename and the folder after it. An existing target
keeps its permission bits (a new one gets the umask's default, like ``open``), and a symlink
keeps pointing where it did: the file it resolves to is replaced.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

Writer = Callable[[IO[bytes]], Any]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _target(path: str | os.PathLike) -> tuple[Path, int]:
    """The file to replace (a symlink resolved) and the permission bits the new file gets."""
    path = Path(path)
    real = Path(os.path.realpath(path)) if path.is_symlink() else path
    if real.exists():
        if real.is_dir():
            raise IsADirectoryError(f"cannot write {str(path)!r}: it is a folder")
        return real, real.stat().st_mode & 0o7777
    return real, 0o666 & ~_umask()


@contextlib.contextmanager
def _unnamed(folder: Path) -> Iterator[int | None]:
    """An unnamed (O_TMPFILE) file descriptor in ``folder``, or None where unsupported."""
    flag = getattr(os, "O_TMPFILE", None)
    fd = None
    if flag is not None:
        try:
            fd = os.open(folder, flag | os.O_RDWR, 0o600)
        except OSError:
            fd = None
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Writer) -> Path:
    """Call ``write(f)`` on a fresh binary file, then atomically replace ``path`` with it.

    The parent folder must exist (FileNotFoundError otherwise). Returns the path written (the
    symlink's target when ``path`` is a symlink).
    """
    target, mode = _target(path)
    folder = target.parent
    if not folder.is_dir():
        raise FileNotFoundError(
            f"cannot write {str(path)!r}: folder {str(folder)!r} does not exist"
        )
    with _unnamed(folder) as fd:
        if fd is not None:
            _write_fd(fd, write, mode)
            try:
                tmp = _link_unnamed(fd, folder, target.name)
            except OSError:  # the OS cannot name an unnamed file here: copy it to a named one
                os.lseek(fd, 0, os.SEEK_SET)
                source = os.fdopen(fd, "rb", closefd=False)
                return _via_named_temp(target, mode, lambda f: shutil.copyfileobj(source, f))
            _replace(tmp, target)
            return target
    return _via_named_temp(target, mode, write)


def _via_named_temp(target: Path, mode: int, write: Writer) -> Path:
    """The portable path: a hidden temp file beside ``target``, removed on any exception."""
    tmp_fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        _write_fd(tmp_fd, write, mode, close=True)
        _replace(Path(tmp), target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def _write_fd(fd: int, write: Writer, mode: int, close: bool = False) -> None:
    handle = os.fdopen(fd, "w+b", closefd=close)
    try:
        write(handle)
        handle.flush()
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        handle.close()


_AT_FDCWD, _AT_EMPTY_PATH = -100, 0x1000


def _link_unnamed(fd: int, folder: Path, name: str) -> Path:
    """Give the unnamed file a (hidden, unique) name in ``folder``; OSError if the OS cannot.

    ``linkat(fd, "", AT_EMPTY_PATH)`` first, then the ``/proc/self/fd`` link (which container
    runtimes often refuse).
    """
    libc = _libc()
    for attempt in range(100):
        tmp = folder / f".{name}.{os.getpid()}.{attempt}.tmp"
        if libc is not None:
            if libc.linkat(fd, b"", _AT_FDCWD, os.fsencode(tmp), _AT_EMPTY_PATH) == 0:
                return tmp
            if ctypes.get_errno() == errno.EEXIST:
                continue
        try:
            os.link(f"/proc/self/fd/{fd}", tmp, follow_symlinks=True)
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not name a temporary file beside {name!r} in {str(folder)!r}")


@functools.cache
def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None


def _replace(tmp: Path, target: Path) -> None:
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(target.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, payload: Any, indent: int = 2) -> Path:
    """Atomically write ``payload`` as JSON to ``path``."""
    return write_text(path, json.dumps(payload, indent=indent) + "\n")


def save_figure(fig: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Atomically save a matplotlib figure (format from the suffix)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, **kwargs))
