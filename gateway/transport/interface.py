"""The transport seam: one small interface and the parsed form of a transport URL.

A client sends an envelope and awaits its reply, many calls in flight on one
connection. A server accepts connections, learns each peer's *verified*
identity and hands every envelope to the handler (the relay dispatcher).
Transports retry nothing: resending is the reliable-messaging layer's job.

Every transport module implements these classes and imports nothing else of
the package's transports; :mod:`.registry` names them by URL scheme.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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

    def serve_jobs(self, owns: Callable[[str], bool]) -> None:  # noqa: B027
        """Read only the calls of the jobs (by id) that ``owns`` accepts.

        For transports whose relays share one queue of calls (Redis): each relay
        then receives the calls of the jobs it runs. A transport whose sites
        connect to this relay itself gets only calls meant for it, so by
        default this does nothing.
        """

    @property
    def connections(self) -> int | None:
        """Connections open now, or ``None`` where the library keeps them (gRPC core)."""
        return None

    @property
    def pending_entries(self) -> int | None:
        """Calls taken from a shared queue and not yet acknowledged (Redis), else ``None``."""
        return None

    def refuse_revoked(self, revoked: Callable[[Peer], str | None]) -> None:  # noqa: B027
        """Refuse entries signed by a revoked certificate (``revoked`` says why).

        For transports that check a signature on every entry themselves (Redis).
        Elsewhere the relay's dispatcher refuses revoked peers, so by default
        this does nothing.
        """


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
