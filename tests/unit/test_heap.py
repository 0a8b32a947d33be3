"""The driver's C heap gives a freed large block back at once (`migrator.heap`)."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

# In a fresh interpreter: glibc's threshold for mapping a block on its own moves up to the
# size of the first mapped block freed (4 MiB here); a 2 MiB block allocated after that comes
# from the heap, and a small block allocated behind it keeps its pages mapped once it is freed.
# The script prints how much of the 2 MiB block the process still holds after freeing it.
_SCRIPT = """
import ctypes, sys
sys.path.insert(0, {root!r})
from migrator import heap
if {fixed}:
    heap.keep_large_blocks_mapped()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])

first = libc.malloc(4 << 20)
ctypes.memset(first, 1, 4 << 20)
libc.free(first)
block = libc.malloc(2 << 20)
ctypes.memset(block, 1, 2 << 20)
behind = libc.malloc(64)
held = rss_kib()
libc.free(block)
print(held - rss_kib())
"""


def _given_back_kib(fixed: bool) -> int:
    root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's own
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(root=root, fixed=fixed)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(
    not sys.platform.startswith("linux")
    or "libc.so.6" not in (ctypes.util.find_library("c") or ""),
    reason="glibc only: elsewhere the heap module does nothing",
)
def test_a_freed_large_block_is_given_back_after_a_larger_one_was() -> None:
    # glibc alone keeps the 2 MiB (its threshold rose to 4 MiB); with the threshold fixed,
    # the block was mapped on its own and its pages go back when it is freed.
    assert _given_back_kib(fixed=False) < 512
    assert _given_back_kib(fixed=True) >= 1900
