"""Typed, keyword-only configuration shared by every component."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024

READ_BUFFER_BYTES = 4 * MiB
"""How much of a body the relay's https listener (aiohttp) buffers before it pauses its
socket. aiohttp's 64 KiB default pauses and wakes the reader every 128 KiB, 40 times
for one of Flower's 5 MiB objects; this is a ceiling, not an allocation (an A/B of
PushObject through https: 154 -> 198 MB/s)."""
STREAM_READ_LIMIT = 1 * MiB
"""The tcps transport's stream readers: they pause the socket at twice this (asyncio's
64 KiB default: every 128 KiB). Frames larger than the memory budget admits are not
sent before the relay's GO, so this bounds what a connection buffers unasked."""


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Size limits; ``None`` turns a limit off."""

    max_frame_bytes: int | None = 64 * MiB
    """Largest envelope a transport accepts. Flower >= 1.20 chunks models into
    5 MiB objects; older Flower sends whole models, so raise this for them."""


@dataclass(frozen=True, kw_only=True)
class Budgets:
    """What the relay admits in flight at once, per peer (certificate) and in total, on
    all its transports together, and, before a peer is known (during the TLS
    handshake), per source address; ``None`` turns a budget off.

    The defaults fit a relay on 2 cores and a few GB: two envelopes of the largest
    size per site, three in all (195 MiB of bodies; a body costs up to two copies
    while it is decoded, its receive buffer and the parsed envelope, so at most about
    400 MiB above the relay's base of about 80), many more small calls than Flower makes (a
    SuperNode has a few in flight; Flower >= 1.20 moves models in 5 MiB objects), and
    a site's pool of https connections (100 by default).
    """

    bytes_per_peer: int | None = 2 * (64 + 1) * MiB
    """Bytes of requests in flight per peer; at least one largest envelope."""
    bytes_total: int | None = 3 * (64 + 1) * MiB
    """Bytes of requests in flight from all peers; at least ``bytes_per_peer``."""
    calls_per_peer: int | None = 1024
    """Calls in flight per peer."""
    calls_total: int | None = 8192
    """Calls in flight from all peers."""
    connections_per_peer: int | None = 128
    """Open connections per peer (a site needs one on grpcs and tcps, a pool on https)."""
    handshakes_per_source: int | None = 256
    """TLS handshakes in progress per source address (an IPv4 address, an IPv6 /64) on
    tcps and https; a connection over it is closed at once, unread. An honest site has
    one connection on tcps, a pool of at most 100 on https, and a handshake takes
    milliseconds: the rest is room for a few sites behind one NAT address."""
    handshakes_total: int | None = 1024
    """TLS handshakes in progress from all addresses on tcps and https together. Each
    costs about 300 KiB until it ends (asyncio's TLS layer holds a 256 KiB read buffer
    per connection), so a flood of handshakes that never finish holds about 300 MiB at
    most, for the handshake timeout (10 s); ten https pools opening at once still fit."""
    grpcs_connections: int | None = 1024
    """Connections open at once on each grpcs listener, pending *and* established
    (gRPC's ``grpc.max_allowed_incoming_connections``; gRPC closes one over it at once).
    gRPC core does the TLS handshake itself, out of the relay's sight, so the two
    handshake budgets above, per source and in total, and the handshake logs do not
    exist on grpcs: this is its only cap on connections. A site keeps one there."""


@dataclass(frozen=True, kw_only=True)
class TLSConfig:
    """PEM files of one participant: the federation's root CA, its cert and key."""

    ca_cert: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """Return (ca, cert, key) bytes."""
        return self.ca_cert.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()


@dataclass(frozen=True)
class LoopbackTLS:
    """Certificate files of a server that Flower reaches over TLS on loopback."""

    ca_cert: Path
    cert: Path
    key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> LoopbackTLS:
        return cls(
            ca_cert=directory / "ca.pem",
            cert=directory / "server.crt",
            key=directory / "server.key",
        )

    def exists(self) -> bool:
        return all(p.is_file() for p in (self.ca_cert, self.cert, self.key))
