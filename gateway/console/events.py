"""Server-Sent Events: the page's live updates (an aiohttp shell over a pure encoder).

A stream sends an event only when its data changed (:class:`Changes`), and a comment
line at least every :data:`KEEPALIVE` seconds, so a closed tab is noticed by a failed
write even when nothing changes.
"""

from __future__ import annotations

import json
import time

from aiohttp import web

KEEPALIVE = 15.0


def encode_event(event: str, data: object, event_id: str | None = None) -> bytes:
    """One SSE event: JSON data on a single line (JSON escapes every newline)."""
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), allow_nan=False))
    return ("\n".join(lines) + "\n\n").encode()


class Changes:
    """The last data sent per event name; what is new is sent, the rest is not."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}

    def changed(self, event: str, data: object) -> bool:
        text = json.dumps(data, sort_keys=True, allow_nan=False)
        if self._last.get(event) == text:
            return False
        self._last[event] = text
        return True


class EventStream:
    """One open ``text/event-stream`` response."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response
        self._changes = Changes()
        self._written = time.monotonic()

    @classmethod
    async def open(cls, request: web.Request) -> EventStream:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        return cls(response)

    async def send(self, event: str, data: object, event_id: str | None = None) -> None:
        await self._write(encode_event(event, data, event_id))

    async def send_changed(self, event: str, data: object) -> None:
        """Send ``data`` if it differs from what this stream last sent as ``event``."""
        if self._changes.changed(event, data):
            await self.send(event, data)

    async def keepalive(self) -> None:
        """A comment line if nothing was written for a while."""
        if time.monotonic() - self._written >= KEEPALIVE:
            await self._write(b": keepalive\n\n")

    async def _write(self, chunk: bytes) -> None:
        await self.response.write(chunk)
        self._written = time.monotonic()
