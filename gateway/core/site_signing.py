"""Envelopes a site signs so that the central relay can authorize them through an edge relay.

An edge relay carries the envelopes of the sites in its network over its own
connection, so the central relay's TLS peer is the edge, not the site. A site
behind an edge therefore signs every envelope it sends (Fleet calls and its
agent's calls alike) with the key of its site certificate, as on Redis
(:mod:`gateway.transport.redis.protocol`): the exact serialized bytes of its
envelope, its certificate, a timestamp in ms, a random nonce and an ECDSA
(SHA-256) signature over all of them (:class:`~gateway.proto.envelope_pb2.SiteSignature`).
The bytes are carried opaque: protobuf re-serialization is not canonical.

The outer envelope the edge forwards copies only the routing fields (job, site,
message id, method, kind, deadline, attempt) and the signature; the relay
(:class:`CarriedEnvelopes`) believes the inner envelope when, in order of cost:

1. the carrier may carry signed envelopes at all (an edge relay, or a site
   carrying its own);
2. the timestamp is within ``max_skew`` seconds of the relay's clock;
3. the certificate chains to the federation's root CA, is valid now and not
   revoked (:class:`~gateway.core.signing.CertificateChecker`), and is a site's;
4. the signature matches it, and the inner envelope decodes and names the same
   routing fields as the outer one;
5. the site is provisioned behind *that* edge (the relay kit's ``edges``), or,
   for a site carrier, is the carrier itself;
6. the nonce was never accepted before within the window (:class:`NonceWindow`):
   checked last, so that a forgery cannot burn a genuine site's nonce.

No I/O here: time is passed in.
"""

from __future__ import annotations

import secrets
import struct
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from ..proto.envelope_pb2 import Envelope, Header, Reply, SiteSignature
from .exceptions import AuthError, ReplayError
from .identity import Peer, Role
from .signing import (
    MAX_CERT_BYTES,
    MAX_SIGNATURE_BYTES,
    CertificateChecker,
    Signer,
    signature_matches,
    staleness,
)

REFUSAL_HEADER = "flgate-refusal"
"""A reply header naming a refusal that the edge relay or the site acts on."""
REPLAY = b"replay"
"""The relay's: it accepted this signed envelope before (so a copy the edge resent
may have run already)."""
RESEND = b"resend"
"""The edge's: the relay's answer did not come; the site should send again under the
same message id, signed afresh (the relay's dedup answers it if it ran)."""

_TAG = b"flgate-site-envelope-v1"
DEFAULT_MAX_SKEW = 60.0
"""Seconds a signed envelope's timestamp may differ from the relay's clock (as on Redis)."""
_ROUTING_FIELDS = ("job_id", "site", "message_id", "method", "kind")


def signed_payload(signature: SiteSignature) -> bytes:
    """What a site signs: a domain tag and each field but the certificate, length-prefixed."""
    parts = (signature.envelope, str(signature.ts_ms).encode(), signature.nonce.encode())
    return _TAG + b"".join(struct.pack(">Q", len(p)) + p for p in parts)


def sign_envelope(signer: Signer, envelope: Envelope, *, now: float) -> Envelope:
    """The outer envelope that carries ``envelope`` signed by ``signer`` (a site).

    A retry signs again: a fresh nonce and timestamp, the same message id.
    """
    signature = SiteSignature(
        envelope=envelope.SerializeToString(),
        cert=signer.cert_pem,
        ts_ms=int(now * 1000),
        nonce=secrets.token_hex(16),
    )
    signature.signature = signer.sign(signed_payload(signature))
    return Envelope(
        job_id=envelope.job_id,
        site=envelope.site,
        message_id=envelope.message_id,
        method=envelope.method,
        dialect=envelope.dialect,
        deadline_unix_ms=envelope.deadline_unix_ms,
        attempt=envelope.attempt,
        kind=envelope.kind,
        signed=signature,
    )


def marked(reply: Reply, mark: bytes) -> bool:
    """Whether ``reply`` carries the refusal mark ``mark`` (:data:`REPLAY`, :data:`RESEND`)."""
    return any(h.name == REFUSAL_HEADER and h.value == mark for h in reply.headers)


def mark(reply: Reply, value: bytes) -> Reply:
    """``reply`` with the refusal mark ``value`` added."""
    reply.headers.append(Header(name=REFUSAL_HEADER, value=value))
    return reply


class NonceWindow:
    """Nonces accepted within the last ``window`` seconds; an older one is stale anyway.

    ``window`` must cover the whole freshness interval (``2 * max_skew``): an
    envelope is fresh from ``max_skew`` seconds before the relay's clock to
    ``max_skew`` after. ``limit`` bounds the memory; when it is reached, the
    oldest nonces are forgotten first (and the caller should log it).
    """

    def __init__(self, window: float, *, limit: int = 1_000_000) -> None:
        self._window = window
        self._limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def first_use(self, nonce: str, now: float) -> bool:
        """Remember ``nonce``; whether it was new (``False``: a replay)."""
        while self._seen:
            oldest, expires = next(iter(self._seen.items()))
            if expires > now and len(self._seen) < self._limit:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            return False
        self._seen[nonce] = now + self._window
        return True


class CarriedEnvelopes:
    """The central relay's checks of site-signed envelopes (see the module's docstring)."""

    def __init__(
        self,
        checker: CertificateChecker,
        *,
        edges: Mapping[str, Iterable[str]],
        max_skew: float = DEFAULT_MAX_SKEW,
    ) -> None:
        """``edges``: each edge relay's name and the sites provisioned behind it."""
        self._checker = checker
        self._behind = {edge: frozenset(sites) for edge, sites in edges.items()}
        self.edge_of = {site: edge for edge, sites in self._behind.items() for site in sites}
        """The edge relay each site behind one is provisioned behind."""
        self._max_skew = max_skew
        self.nonces = NonceWindow(2 * max_skew + 1)

    def open(self, carrier: Peer, outer: Envelope, *, now: float) -> tuple[Peer, Envelope]:
        """The site that signed ``outer``'s envelope and that envelope, if ``carrier``
        may carry it; else ``AuthError`` (``ReplayError`` for a nonce seen before)."""
        if carrier.role not in (Role.EDGE, Role.SITE):
            raise AuthError(f"{carrier} may not carry site-signed envelopes")
        if not outer.HasField("signed"):
            raise AuthError(
                f"{carrier} is an edge relay: it carries only envelopes signed by the sites "
                "behind it, and this one is not signed"
            )
        signed = outer.signed
        stale = staleness(signed.ts_ms, now=now, max_skew=self._max_skew, signer="site")
        if stale is not None:
            raise AuthError(f"stale site signature: {stale}")
        if len(signed.cert) > MAX_CERT_BYTES or len(signed.signature) > MAX_SIGNATURE_BYTES:
            raise AuthError("the site signature's certificate or signature is oversized")
        try:
            site, key = self._checker.check(signed.cert, now=now)
        except AuthError as exc:
            raise AuthError(f"the envelope's signing certificate is refused: {exc}") from None
        if site.role is not Role.SITE:
            raise AuthError(f"the envelope is signed by {site}, not by a site")
        if not signature_matches(key, signed.signature, signed_payload(signed)):
            raise AuthError(
                f"the site signature does not match the certificate of {site}: "
                f"{carrier} may not speak for a site"
            )
        try:
            inner = Envelope.FromString(signed.envelope)
        except Exception:  # protobuf raises DecodeError and others
            raise AuthError(f"the envelope signed by {site} does not decode") from None
        if inner.HasField("signed"):
            raise AuthError(f"the envelope signed by {site} carries another signed envelope")
        changed = [f for f in _ROUTING_FIELDS if getattr(inner, f) != getattr(outer, f)]
        if changed:
            raise AuthError(
                f"{carrier} changed the routing fields ({', '.join(changed)}) of an "
                f"envelope signed by {site}"
            )
        self._check_carrier(carrier, site)
        if not self.nonces.first_use(signed.nonce, now):
            raise ReplayError(
                f"replayed envelope: {site}'s signed envelope (message {inner.message_id}, "
                f"nonce {signed.nonce[:8]}...) was accepted before; {carrier} may not send "
                "it again"
            )
        return site, inner

    def _check_carrier(self, carrier: Peer, site: Peer) -> None:
        if carrier.role is Role.SITE:
            if carrier.name != site.name:
                raise AuthError(
                    f"{carrier} is a site certificate, not an edge relay: it may not carry "
                    f"the envelopes of {site}"
                )
            return
        if site.name not in self._behind.get(carrier.name, frozenset()):
            edge = self.edge_of.get(site.name)
            where = f"behind edge relay {edge!r}" if edge else "to dial the relay directly"
            raise AuthError(
                f"{site} is not provisioned behind edge relay {carrier.name!r} (it is "
                f"provisioned {where}); {carrier} may carry only its own sites' envelopes"
            )
