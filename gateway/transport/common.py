"""What the transports share.

Every transport: the envelope size limit and the reply that stands in for a
failed handler. The TLS-socket transports (``https://``, ``tcps://``): TLS
contexts built from a participant's kit (the relay requires and verifies a
client certificate, TLS >= 1.2), the verified peer of a TLS connection, and how
a refused certificate is recognized among connection errors.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

from ..core.config import Limits, TLSConfig
from ..core.exceptions import AuthError, ConfigError
from ..core.identity import Peer, peer_from_pem
from ..proto.envelope_pb2 import ORIGIN_GATEWAY, Envelope, Reply
from .interface import Handler
from .refusals import RefusalMeter

log = logging.getLogger(__name__)

ENVELOPE_OVERHEAD = 1024 * 1024
"""Room for an envelope's own fields around a maximal Fleet body."""

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a relay listener waits for a TLS handshake before it drops the connection
(the libraries' own defaults are 60 s for asyncio and 120 s for gRPC: long enough for
a few thousand idle connections to pin hundreds of MB)."""

_GRPC_INTERNAL = 13  # grpc.StatusCode.INTERNAL, without importing grpc here

# OpenSSL reasons that mean "this certificate was refused": by our own check
# (CERTIFICATE_VERIFY_FAILED) or by the peer's, which reports it in an alert.
_CERTIFICATE_REASONS = ("CERTIFICATE", "UNKNOWN_CA", "ACCESS_DENIED")


def frame_limit(limits: Limits) -> int | None:
    """Largest serialized envelope or reply accepted, or ``None`` for no limit."""
    if limits.max_frame_bytes is None:
        return None
    return limits.max_frame_bytes + ENVELOPE_OVERHEAD


def _context(purpose: ssl.Purpose, tls: TLSConfig) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(purpose, cafile=str(tls.ca_cert))
        context.load_cert_chain(certfile=str(tls.cert), keyfile=str(tls.key))
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(
            f"cannot load TLS files (ca {tls.ca_cert}, cert {tls.cert}, key {tls.key}): {exc}"
        ) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def server_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """The relay's context: its own certificate, and every client must present
    a certificate signed by the federation's root CA."""
    context = _context(ssl.Purpose.CLIENT_AUTH, tls)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """A site's (or admin's) context: its certificate for the relay, and the
    relay's certificate checked against the root CA and the host name."""
    return _context(ssl.Purpose.SERVER_AUTH, tls)


def peer_from_ssl_object(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> Peer:
    """The verified peer of a TLS connection whose context required a client certificate."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise AuthError("a client certificate is required")
    return peer_from_pem(ssl.DER_cert_to_PEM_cert(der).encode("ascii"))


def certificate_refused(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says that a
    certificate was refused, by us or by the peer. Such a failure is never
    worth a retry, unlike a refused or reset connection."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        if isinstance(current, ssl.SSLError):
            reason = current.reason or ""
            if any(word in reason for word in _CERTIFICATE_REASONS):
                return True
        current = current.__cause__ or current.__context__
    return False


def failure_reply(envelope: Envelope) -> Reply:
    """The gateway's answer when the relay's handler raised."""
    return Reply(
        message_id=envelope.message_id,
        origin=ORIGIN_GATEWAY,
        http_status=500,
        grpc_code=_GRPC_INTERNAL,
        detail="internal error in the relay; see the relay's log",
    )


async def call_handler(handler: Handler, peer: Peer, envelope: Envelope) -> Reply:
    """``handler(peer, envelope)``; a failure becomes a 500 reply, never a dead server."""
    try:
        return await handler(peer, envelope)
    except Exception:
        log.exception("relay handler failed", extra={"peer": str(peer)})
        return failure_reply(envelope)


async def hold_refusal(refusals: RefusalMeter, peer: str) -> None:
    """Wait before refusing a call of ``peer`` while it is blocked (a tarpit, see
    :attr:`~.refusals.RefusalPolicy.hold_seconds`); at once when it is not blocked or
    holds too many already, so a transport calls it before every refusal."""
    seconds = refusals.hold(peer, time.monotonic())
    if seconds > 0:
        try:
            await asyncio.sleep(seconds)
        finally:
            refusals.unhold(peer)
