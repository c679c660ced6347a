"""Give freed memory back to the system after a burst (glibc only; elsewhere nothing).

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), so
after a few large envelopes even a TLS connection's 256 KiB buffers come from the heap,
and a burst of connections leaves the heap fragmented and the RSS high for good
(900 stuck handshakes: +151 MiB, never returned). A fixed threshold keeps every block
of 128 KiB or more in its own mapping, returned the moment it is freed. And glibc
gives each thread that allocates (gRPC's) a heap of its own, which keeps what was
freed in it: two heaps in all let a second burst reuse what the first left (1000
stuck grpcs handshakes: +21 MiB more after each burst with one heap per thread, none
after the first with two).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 128 * 1024
"""Blocks at least this large get their own mapping (glibc's initial default)."""
ARENAS = 2
"""glibc heaps (arenas) shared by all threads."""
_M_MMAP_THRESHOLD = -3  # mallopt's parameter numbers, from glibc's malloc.h
_M_ARENA_MAX = -8


def return_large_blocks_at_once() -> bool:
    """Fix glibc's mmap threshold and number of heaps for this process (call it before
    threads start); whether it could (False off glibc)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_ARENA_MAX, ARENAS))
    log.debug(
        "fixed the mmap threshold and heaps",
        extra={"bytes": MMAP_THRESHOLD, "arenas": ARENAS, "done": ok},
    )
    return ok
