"""The transport seam: one small interface, a URL parser and a scheme registry.

A client sends an envelope and awaits its reply, many calls in flight on one
connection. A server accepts connections, learns each peer's *verified*
identity and hands every envelope to the handler (the relay dispatcher).
Transports retry nothing: resending is the reliable-messaging layer's job.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..core.config import Limits, TLSConfig
from ..core.exceptions import ConfigError
from ..core.identity import Peer
from ..proto.envelope_pb2 import Envelope, Reply

Handler = Callable[[Peer, Envelope], Awaitable[Reply]]
"""What a server calls for each envelope: the verified peer and the envelope."""


class TransportClient(abc.ABC):
    """A site's connection to the relay, shared by all of the site's jobs."""

    @abc.abstractmethod
    async def send(self, envelope: Envelope, *, timeout: float) -> Reply:
        """Deliver ``envelope`` and return the relay's reply.

        Raises a :class:`~gateway.core.exceptions.TransportError` subclass when the
        envelope could not be delivered or no reply came within ``timeout``.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the connection; calls in flight fail."""


class TransportServer(abc.ABC):
    """The relay's listening side of one transport."""

    @property
    @abc.abstractmethod
    def port(self) -> int:
        """The port actually bound (useful when listening on port 0)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Bind and start serving."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop accepting and close connections."""


@dataclass(frozen=True)
class TransportURL:
    """A parsed transport address such as ``grpcs://relay.example.org:8443``."""

    scheme: str
    host: str
    port: int

    @property
    def secure(self) -> bool:
        return self.scheme.endswith("s")

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.hostport}"


ClientFactory = Callable[[TransportURL, TLSConfig | None, Limits], TransportClient]
ServerFactory = Callable[[TransportURL, TLSConfig | None, Limits, Handler], TransportServer]

_CLIENTS: dict[str, ClientFactory] = {}
_SERVERS: dict[str, ServerFactory] = {}


def register(scheme: str, client: ClientFactory, server: ServerFactory) -> None:
    """Make ``scheme`` available to :func:`connect` and :func:`listen`."""
    _CLIENTS[scheme] = client
    _SERVERS[scheme] = server


def schemes() -> list[str]:
    """Registered URL schemes, sorted."""
    return sorted(_CLIENTS)


def parse_url(url: str) -> TransportURL:
    """Parse and validate a transport URL; the error names the valid schemes."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _CLIENTS:
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
    return _CLIENTS[parsed.scheme](parsed, _tls_for(parsed, tls), limits)


def listen(
    url: str,
    *,
    tls: TLSConfig | None,
    handler: Handler,
    limits: Limits = Limits(),
) -> TransportServer:
    """A server for ``url`` (port 0 picks a free port); call ``start()`` on it."""
    parsed = parse_url(url)
    return _SERVERS[parsed.scheme](parsed, _tls_for(parsed, tls), limits, handler)
