"""The event loop of the relay and site processes: uvloop where installed.

uvloop (libuv, written in Cython) runs the same asyncio code with a loop whose
scheduling, sockets and TLS transports are C: on the data path it cut the relay's
and the site's CPU per Fleet call (``flgate bench``'s capacity step). It is a
dependency on Linux and macOS; where it is missing, or with
``FLGATE_EVENT_LOOP=asyncio`` (to compare, or to rule it out), the standard
library's loop runs instead. Nothing else changes: the code above sees asyncio.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .exceptions import ConfigError

T = TypeVar("T")

EVENT_LOOP_ENV = "FLGATE_EVENT_LOOP"
"""``uvloop`` (the default where installed) or ``asyncio`` (the standard library's loop)."""
EVENT_LOOPS = ("uvloop", "asyncio")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(choice: str | None = None) -> LoopFactory | None:
    """The factory of the loop to run (``None``: the standard library's).

    ``choice`` is ``uvloop`` or ``asyncio``; by default :data:`EVENT_LOOP_ENV`, else
    uvloop when it can be imported. Asking for uvloop where it is missing is an error.
    """
    given = choice if choice is not None else os.environ.get(EVENT_LOOP_ENV, "")
    wanted = given.strip().lower() or "uvloop"
    if wanted not in EVENT_LOOPS:
        raise ConfigError(
            f"{EVENT_LOOP_ENV}={given!r} is not an event loop; valid: {', '.join(EVENT_LOOPS)}"
        )
    if wanted == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError as exc:
        if given:
            raise ConfigError(f"{EVENT_LOOP_ENV}=uvloop, but uvloop is not installed") from exc
        return None
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def run(coro: Coroutine[Any, Any, T], *, choice: str | None = None) -> T:
    """``asyncio.run(coro)`` on the loop that :func:`loop_factory` picks (the standard
    library's on Python 3.10, which has no ``asyncio.Runner``)."""
    factory = loop_factory(choice)
    if factory is None or sys.version_info < (3, 11):
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)
