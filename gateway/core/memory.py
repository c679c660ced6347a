"""A long-running process's memory settings: freed memory given back after a burst (glibc
only; elsewhere nothing), and a garbage collector that runs less often.

The allocator: glibc raises its mmap threshold each time a large block is freed (up to
32 MiB), so after a few large envelopes even a TLS connection's 256 KiB buffers come
from the heap, and a burst of connections leaves the heap fragmented and the RSS high
(900 stuck handshakes: +151 MiB); gRPC's threads each get a heap of their own, which
keeps what was freed in it (+21 MiB after each burst of 1000 stuck grpcs handshakes).
Fixing the threshold at 128 KiB and the heaps at two answered both, but then every
copy of a 5 MiB object is a fresh mapping, faulted in page by page and unmapped, and
gRPC's threads wait on each other's heap locks: the relay's object throughput halved
(interleaved A/B, 5 MiB PullObject through the stub: tcps 193 -> 104 MB/s, grpcs
240 -> 137; two heaps with a threshold above 5 MiB: grpcs 240 -> 124-152; two heaps
alone, 8 calls at a time: grpcs 99 -> 72). So glibc keeps its own settings,
and after a burst of failed handshakes the relay gives the free pages of every heap
back (:func:`give_free_memory_back`, ``malloc_trim``, which releases whole free pages
anywhere in a heap, not only at its top).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Iterator


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018  (glibc's)
    except (OSError, AttributeError):
        return None
    return libc


def give_free_memory_back() -> bool:
    """Return the free pages of every heap to the system (after a burst); whether it could."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


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
