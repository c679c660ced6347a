"""A writer whose process ends in the middle of its POST leaves no traceback in the
site agent's log, and the job's queue as it was."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.tracking.receiver import PATH, TrackingReceiver


async def test_a_body_cut_by_the_writers_exit_is_dropped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = TrackingReceiver()
    await receiver.start()
    token = receiver.add_job("job")
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", receiver.port)
        writer.write(
            (
                f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                '{"records": [{"tag": "loss", '
            ).encode()
        )
        await writer.drain()
        await asyncio.sleep(0.2)
        with caplog.at_level(logging.DEBUG):
            writer.transport.abort()  # the process died: a reset, not a clean close
            await asyncio.sleep(0.3)
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert receiver.protocol.queued("job") == 0
    finally:
        await receiver.aclose()
