"""The metrics endpoint over a real socket: /metrics, /healthz, /readyz, and its address."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from gateway.core.exceptions import ConfigError
from gateway.observability import metrics
from gateway.observability.endpoint import MetricsEndpoint, MetricsListen, parse_listen


def test_an_address_is_host_and_port_or_off() -> None:
    assert parse_listen("127.0.0.1:9464") == MetricsListen("127.0.0.1", 9464)
    assert parse_listen("[::1]:0") == MetricsListen("::1", 0)
    assert parse_listen("OFF") is None
    assert parse_listen("127.0.0.1:9464", default=True) == MetricsListen(
        "127.0.0.1", 9464, fallback=True
    )


@pytest.mark.parametrize("text", ["9464", "localhost", ":9464", "host:port", "h:70000"])
def test_a_bad_address_is_refused_with_the_forms_that_work(text: str) -> None:
    with pytest.raises(ConfigError, match=r"HOST:PORT .* or 'off'"):
        parse_listen(text)


async def test_it_serves_metrics_and_says_when_it_is_ready() -> None:
    why: list[str | None] = ["starting"]
    endpoint = MetricsEndpoint(MetricsListen("127.0.0.1", 0), lambda: why[0])
    await endpoint.start()
    try:
        base = f"http://127.0.0.1:{endpoint.port}"
        assert endpoint.url == f"{base}/metrics"
        metrics.refusal("endpoint-test")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/healthz") as health:
                assert health.status == 200
            async with session.get(f"{base}/readyz") as ready:
                assert ready.status == 503
                assert "not ready: starting" in await ready.text()
            why[0] = None
            async with session.get(f"{base}/readyz") as ready:
                assert ready.status == 200
            async with session.get(f"{base}/metrics") as scrape:
                assert scrape.status == 200
                assert scrape.headers["Content-Type"].startswith("text/plain")
                text = await scrape.text()
        assert 'flgate_relay_refusals_total{reason="endpoint-test"} 1.0' in text
        assert "process_cpu_seconds_total" in text
    finally:
        await endpoint.aclose()


async def test_a_taken_port_is_an_error_unless_it_is_the_default() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="is in use"):
            await MetricsEndpoint(MetricsListen("127.0.0.1", port), lambda: None).start()
        fallback = MetricsEndpoint(MetricsListen("127.0.0.1", port, fallback=True), lambda: None)
        await fallback.start()
        try:
            assert fallback.port not in (0, port)
        finally:
            await fallback.aclose()
