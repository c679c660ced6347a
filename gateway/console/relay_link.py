"""The console's one connection to the relay, and what it knows of the relay's reach.

Every page's call goes through :meth:`RelayLink.call`, which turns the gateway's
errors into :class:`Refused` (the relay's reason and the HTTP status the page gets)
and remembers whether the relay answered, so the live streams can tell the page
when it becomes unreachable and when it is back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..control.admin import AdminClient
from ..core.exceptions import (
    GatewayError,
    MaybeDeliveredError,
    NotDeliveredError,
    TransportError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

UNREACHABLE = (TransportError, NotDeliveredError, MaybeDeliveredError)
"""Errors that say the relay did not answer (rather than refused)."""


class Refused(Exception):
    """A call the page asked for did not succeed: ``reason`` for the page, ``status``
    for the HTTP answer (the relay's refusal, or 503 when it could not be reached)."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class RelayLink:
    """An admin client shared by every page, with the relay's reachability."""

    def __init__(self, client: AdminClient, relay_url: str) -> None:
        self.client = client
        self.relay_url = relay_url
        self.reachable = True
        self.error = ""

    async def call(self, operation: Callable[[AdminClient], Awaitable[T]]) -> T:
        try:
            result = await operation(self.client)
        except UNREACHABLE as exc:
            self._lost(exc)
            raise Refused(f"relay unreachable ({self.relay_url}): {exc}", 503) from exc
        except GatewayError as exc:
            self._answered()
            raise Refused(str(exc), exc.http_status) from exc
        self._answered()
        return result

    def status(self) -> dict[str, object]:
        return {"reachable": self.reachable, "error": self.error}

    def _lost(self, exc: Exception) -> None:
        if self.reachable:
            log.warning("relay unreachable", extra={"relay": self.relay_url, "error": str(exc)})
        self.reachable, self.error = False, str(exc) or type(exc).__name__

    def _answered(self) -> None:
        if not self.reachable:
            log.info("relay reachable again", extra={"relay": self.relay_url})
        self.reachable, self.error = True, ""

    async def aclose(self) -> None:
        await self.client.aclose()
