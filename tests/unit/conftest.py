"""The real listeners and connections (transports, the LGS, the HTTP/1.1 client) run on
both event loops the relay and the sites may run on (:mod:`gateway.core.eventloop`):
asyncio's and uvloop, whose transports are other classes with other timing (a uvloop
transport reads as soon as its ``connection_made`` returns)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest

BOTH_LOOPS = ("test_handshakes", "test_transports", "test_http1_client", "test_lgs_http")
"""The modules whose tests run on each loop: the real listeners and clients."""


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    loops: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
    module = getattr(item, "module", None)
    if module is not None and module.__name__.rpartition(".")[2] in BOTH_LOOPS:
        try:
            import uvloop
        except ImportError:  # uvloop is not installed on Windows
            return loops
        loops["uvloop"] = uvloop.new_event_loop
    return loops
