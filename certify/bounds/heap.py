"""Freed memory kept in the process (glibc's malloc), for CROWN on the CPU.

CROWN's backward pass allocates and frees coefficient buffers of a few MB at every operator
(chunks of (B, R, n) up to 2**20 elements). glibc's malloc hands such blocks back to the kernel
when they are freed at the top of the heap (past ``M_TRIM_THRESHOLD``) or serves them by
``mmap`` (past ``M_MMAP_THRESHOLD``), so the next buffer faults fresh zeroed pages in: on FISOR's
diffusion chain (LayerNorm/Mish noise network, 1 thread) 0.25-1.5 million page faults per 4
states, about half the CPU time of the whole certificate; with the thresholds raised, ~2,000.

:func:`retain_freed_memory` raises both thresholds. It changes the allocator of the whole
process, so the library never calls it: a program's entry point does (``saferl certify``, the
certification experiments). Bounds are unchanged; only where freed memory goes.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's largest M_MMAP_THRESHOLD on 64-bit systems


def retain_freed_memory(keep_mb: int = 256) -> bool:
    """Keep up to ``keep_mb`` MB of freed memory at the top of the heap and serve blocks up to
    32 MB from the heap (glibc ``mallopt``). Returns whether the allocator took the settings
    (False, and nothing changed, outside glibc)."""
    if keep_mb < 1:
        raise ValueError(f"keep_mb must be >= 1, got {keep_mb!r}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    keep = min(keep_mb, 2**11 - 1) * 2**20  # a C int
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) != 1:
        return False
    return mallopt(M_TRIM_THRESHOLD, keep) == 1
