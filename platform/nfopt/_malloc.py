"""glibc allocator settings for nfopt's own worker processes.

glibc serves every allocation above its mmap threshold (128 KiB, rising to at most 32 MiB as it
adapts) with a fresh ``mmap`` and returns it to the OS on free, and trims the heap's top above
128 KiB: a training loop that allocates and frees the same multi-megabyte tensors every step
then pays page faults on every one. Keeping freed memory in the heap (``M_MMAP_MAX = 0``, a
high ``M_TRIM_THRESHOLD``; what ``bench/`` runs under via ``MALLOC_MMAP_MAX_=0``) made a
learned-optimizer update ~1.9x faster here (24.0 -> 12.9 ms for the quickstart-size NFN-NP rule
on a P=32 ``digits_mlp`` population, one core). The price: a process keeps its peak heap.

nfopt applies it in the processes it owns (Ray population workers and fan-out tasks, the
``nfopt`` CLI), never silently in a user's process: call :func:`tune_allocator` there to opt in.
``NFOPT_MALLOC=default`` turns it off everywhere. Linux with glibc only; a no-op elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["tune_allocator"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers
_applied = False


def tune_allocator() -> bool:
    """Keep freed memory in this process's heap (see the module docstring); idempotent. Returns
    whether the settings are in force (``False``: not glibc, or ``NFOPT_MALLOC=default``)."""
    global _applied
    if _applied:
        return True
    if os.environ.get("NFOPT_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied
