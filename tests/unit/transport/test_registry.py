"""The scheme registry: one row per built-in transport, and a refusal that lists them all."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.core.config import TLSConfig
from gateway.core.exceptions import ConfigError
from gateway.core.identity import Peer
from gateway.proto.envelope_pb2 import Envelope, Reply
from gateway.transport import TransportClient, TransportServer, connect, listen, parse_url, schemes
from gateway.transport.redis.server import RedisTransportServer
from gateway.transport.registry import TRANSPORTS, Transport

BUILT_IN = ["grpcs", "https", "redis", "rediss", "tcps"]
VALID = "valid schemes: grpcs://, https://, redis://, rediss://, tcps://"


async def _handler(peer: Peer, envelope: Envelope) -> Reply:
    return Reply(message_id=envelope.message_id)


def test_every_built_in_transport_has_a_row_and_schemes_lists_them_sorted() -> None:
    assert sorted(TRANSPORTS) == BUILT_IN
    assert schemes() == BUILT_IN


@pytest.mark.parametrize("scheme", BUILT_IN)
def test_each_row_makes_both_sides_of_the_seam(scheme: str) -> None:
    row = TRANSPORTS[scheme]
    assert isinstance(row.client, type) and issubclass(row.client, TransportClient)
    assert isinstance(row.server, type) and issubclass(row.server, TransportServer)


@pytest.mark.parametrize("scheme", BUILT_IN)
def test_each_scheme_parses(scheme: str) -> None:
    url = parse_url(f"{scheme.upper()}://relay.example.org:8443")
    assert (url.scheme, url.host, url.port) == (scheme, "relay.example.org", 8443)


@pytest.mark.parametrize(
    "choose",
    [
        parse_url,
        lambda url: connect(url, tls=None),
        lambda url: listen(url, tls=None, handler=_handler),
    ],
    ids=["parse_url", "connect", "listen"],
)
def test_an_unknown_scheme_is_refused_with_every_valid_one(choose: Callable[[str], object]) -> None:
    with pytest.raises(
        ConfigError, match=f"unknown transport scheme in 'ftp://relay:21'; {VALID}$"
    ):
        choose("ftp://relay:21")


def test_a_secure_scheme_without_certificates_is_refused_before_any_transport_runs() -> None:
    tls: TLSConfig | None = None
    for scheme in BUILT_IN:
        with pytest.raises(ConfigError, match=rf"^{scheme}:// needs TLS certificates"):
            connect(f"{scheme}://relay:1", tls=tls)
        with pytest.raises(ConfigError, match=rf"^{scheme}:// needs TLS certificates"):
            listen(f"{scheme}://relay:1", tls=tls, handler=_handler)


def test_the_table_cannot_change_at_run_time() -> None:
    row = TRANSPORTS["tcps"]
    with pytest.raises(TypeError):
        TRANSPORTS["ftp"] = row  # type: ignore[index]
    assert isinstance(row, Transport)


@pytest.mark.parametrize("scheme", BUILT_IN)
def test_only_the_shared_queue_transport_overrides_the_relay_hooks(scheme: str) -> None:
    """Relays call ``serve_jobs`` and ``refuse_revoked`` on every listener; a transport
    whose sites connect to the relay itself keeps the interface's no-ops."""
    server = TRANSPORTS[scheme].server
    assert isinstance(server, type) and issubclass(server, TransportServer)
    shared = server is RedisTransportServer
    assert (server.serve_jobs is not TransportServer.serve_jobs) is shared
    assert (server.refuse_revoked is not TransportServer.refuse_revoked) is shared
