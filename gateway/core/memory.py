"""A long-running process's memory settings: freed memory back to the system after a burst
(glibc only; elsewhere nothing), and a garbage collector that runs less often.

The allocator: glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), so
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

import contextlib
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Iterator

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


GC_THRESHOLDS = (20_000, 50, 1000)
"""Allocations between young collections, and collections between older ones (Python's
defaults: 700, 10, 10)."""


@contextlib.contextmanager
def collecting_garbage_less_often() -> Iterator[None]:
    """While a long-running server serves: what start-up loaded (modules, protobuf
    classes, certificates) moves to a generation no collection visits, and collections
    come less often. Each call allocates dozens of short-lived objects, so the defaults
    ran a young collection every few calls and older ones over every module ever
    imported: measured, 14% of the relay's and 17% of a site's CPU per call (tcps, 200
    nodes, constant answers). Refcounting frees everything that is not a cycle at once;
    only cyclic garbage waits longer. Undone on exit (a server run inside another
    program, such as a test, leaves its collector as it was)."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
