"""The ``flwr`` commands the relay runs start by the standard library's fork-exec, so
grpcio's fork handlers never run, also on uvloop (the relay's loop), whose own
subprocesses run them: with the relay's channels busy they abort the child ("flwr run
exited -6" in a run of the restart tests)."""

from __future__ import annotations

import asyncio
import sys

import grpc
import grpc.aio
import pytest

from gateway.flower.flwr_cli import _started

uvloop = pytest.importorskip("uvloop")


async def _spawn_while_grpc_is_busy(spawns: int) -> list[int]:
    """Exit codes of ``spawns`` short children started while gRPC calls run."""
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", {"M": echo}),))
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary("/t.S/M")
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            await call(b"x")

    callers = [asyncio.create_task(traffic()) for _ in range(4)]
    codes = []
    try:
        for _ in range(spawns):
            async with _started([sys.executable, "-c", "print('ok')"], {}) as (process, out):
                assert await out.read() == b"ok\n"
                codes.append(await asyncio.to_thread(process.wait))
    finally:
        stop.set()
        await asyncio.gather(*callers)
        await channel.close()
        await server.stop(None)
    return codes


def test_children_start_without_grpcs_fork_handlers_on_uvloop(
    capfd: pytest.CaptureFixture[str],
) -> None:
    codes = uvloop.run(_spawn_while_grpc_is_busy(10))
    assert codes == [0] * 10
    assert "fork" not in capfd.readouterr().err  # grpcio logs each fork it sees


async def test_a_child_still_running_on_the_way_out_is_killed() -> None:
    async with _started([sys.executable, "-c", "import time; time.sleep(60)"], {}) as (child, _):
        pass
    assert child.returncode is not None and child.returncode < 0
