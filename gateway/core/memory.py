"""Give freed memory back to the system after a burst (glibc only; elsewhere nothing).

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), so
after a few large envelopes even a TLS connection's 256 KiB buffers come from the heap,
and a burst of connections leaves the heap fragmented and the RSS high for good
(900 stuck handshakes: +151 MiB, never returned). A fixed threshold keeps every block
of 128 KiB or more in its own mapping, returned the moment it is freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 128 * 1024
"""Blocks at least this large get their own mapping (glibc's initial default)."""
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def return_large_blocks_at_once() -> bool:
    """Fix glibc's mmap threshold for this process; whether it could (False off glibc)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    log.debug("fixed the mmap threshold", extra={"bytes": MMAP_THRESHOLD, "done": ok})
    return ok
