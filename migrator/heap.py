"""The driver's C heap: how much of what it freed the process keeps.

The driver's memory must not grow with the number of runs (README, "Benchmark", memory), and
what it holds of Python objects does not; part of what grew was glibc's heap. glibc serves a large
block (a manifest's row group, a Parquet page, a compression buffer) from `mmap` and unmaps it
on free, until the first such free: then it raises its threshold to that block's size, so
every later block up to it comes from the heap, which keeps freed pages mapped between
blocks. Both are no-ops with another C library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

#: glibc's `mallopt` parameter for the size from which a block is mapped on its own.
_M_MMAP_THRESHOLD = -3
#: That size for the driver: glibc's own starting value, kept fixed (a value set by hand
#: turns the adjustment off).
MMAP_THRESHOLD = 128 * 1024


def _libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()


def keep_large_blocks_mapped() -> None:
    """Every block from `MMAP_THRESHOLD` up is mapped on its own and given back when freed,
    for the rest of the process: the driver's peak then does not keep the largest manifest
    batch it ever read."""
    if _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def trim() -> None:
    """Give the heap's free pages back to the system (`malloc_trim`). A manifest's read or
    write of millions of rows comes on top of what the driver holds at that moment, and
    glibc keeps freed pages of earlier work mapped: trimmed first, the manifest's row group
    and footer do not stack on memory nobody uses."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
