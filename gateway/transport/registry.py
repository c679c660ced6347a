"""The built-in transports by URL scheme, in one table, and the functions that choose one.

A URL is parsed once into a :class:`~.interface.TransportURL`; its scheme picks
the row of :data:`TRANSPORTS`, and a scheme with no row is refused with the
list of valid ones. Adding a transport is adding a row: no module registers
itself when imported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol
from urllib.parse import urlsplit

from ..core.config import Limits, TLSConfig
from ..core.exceptions import ConfigError
from .admission import Admission
from .grpc_transport import GrpcTransportClient, GrpcTransportServer
from .http_transport import HttpTransportClient, HttpTransportServer
from .interface import Handler, TransportClient, TransportServer, TransportURL
from .redis.client import RedisTransportClient
from .redis.server import RedisTransportServer
from .tcp_transport import TcpTransportClient, TcpTransportServer

ClientFactory = Callable[[TransportURL, TLSConfig | None, Limits], TransportClient]


class ServerFactory(Protocol):
    """Makes the relay's side of a transport; ``admission`` is shared by all listeners."""

    def __call__(
        self,
        url: TransportURL,
        tls: TLSConfig | None,
        limits: Limits,
        handler: Handler,
        *,
        admission: Admission | None = None,
    ) -> TransportServer: ...


@dataclass(frozen=True)
class Transport:
    """How to make each side of one transport."""

    client: ClientFactory
    server: ServerFactory


TRANSPORTS: Mapping[str, Transport] = MappingProxyType(
    {
        "grpcs": Transport(client=GrpcTransportClient, server=GrpcTransportServer),
        "https": Transport(client=HttpTransportClient, server=HttpTransportServer),
        "redis": Transport(client=RedisTransportClient, server=RedisTransportServer),
        "rediss": Transport(client=RedisTransportClient, server=RedisTransportServer),
        "tcps": Transport(client=TcpTransportClient, server=TcpTransportServer),
    }
)
"""Every URL scheme a site or relay may use, and its transport."""


def schemes() -> list[str]:
    """Registered URL schemes, sorted."""
    return sorted(TRANSPORTS)


def parse_url(url: str) -> TransportURL:
    """Parse and validate a transport URL; the error names the valid schemes."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in TRANSPORTS:
        valid = ", ".join(f"{s}://" for s in schemes())
        raise ConfigError(f"unknown transport scheme in {url!r}; valid schemes: {valid}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"invalid port in transport URL {url!r}") from exc
    if not parts.hostname or port is None:
        raise ConfigError(
            f"transport URL {url!r} needs a host and a port, e.g. {scheme}://host:8443"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"transport URL {url!r} must be scheme://host:port and nothing more")
    return TransportURL(scheme=scheme, host=parts.hostname, port=port)


def _tls_for(url: TransportURL, tls: TLSConfig | None) -> TLSConfig | None:
    if url.secure and tls is None:
        raise ConfigError(f"{url.scheme}:// needs TLS certificates (a CA, a cert and a key)")
    return tls if url.secure else None


def connect(
    url: str,
    *,
    tls: TLSConfig | None,
    limits: Limits = Limits(),
) -> TransportClient:
    """A client for the relay at ``url`` (it connects lazily, on the first send)."""
    parsed = parse_url(url)
    return TRANSPORTS[parsed.scheme].client(parsed, _tls_for(parsed, tls), limits)


def listen(
    url: str,
    *,
    tls: TLSConfig | None,
    handler: Handler,
    limits: Limits = Limits(),
    admission: Admission | None = None,
) -> TransportServer:
    """A server for ``url`` (port 0 picks a free port); call ``start()`` on it.

    ``admission``: the budgets of what peers may have in flight, shared by all the
    relay's listeners; by default the listener has its own, with the default budgets.
    """
    parsed = parse_url(url)
    server = TRANSPORTS[parsed.scheme].server
    return server(parsed, _tls_for(parsed, tls), limits, handler, admission=admission)
