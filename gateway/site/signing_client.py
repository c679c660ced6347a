"""A site's connection to an edge relay: every envelope it sends goes out signed.

The edge relay in between is the central relay's TLS peer, so the site proves
its identity in the envelope itself (:mod:`gateway.core.site_signing`). Signing
sits under the reliable sender: each attempt, including a retry under the same
message id, is signed afresh (a new nonce and timestamp), so a retry is never
refused as a replay of the attempt before it. An edge that could not get the
relay's answer says so ("resend"): that is a transport failure to the site.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..core.exceptions import TransportError
from ..core.signing import Signer
from ..core.site_signing import RESEND, marked, sign_envelope
from ..proto.envelope_pb2 import Envelope, Reply
from ..transport import TransportClient


class SigningClient(TransportClient):
    """Signs each envelope with the site's key, then sends it over ``client``."""

    def __init__(
        self, client: TransportClient, signer: Signer, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._client = client
        self._signer = signer
        self._clock = clock

    async def send(self, envelope: Envelope, *, timeout: float) -> Reply:
        """Sign and send; an edge's "send again" (``RESEND``) raises ``TransportError``,
        which the reliable sender retries under the same message id, signed afresh."""
        reply = await self._client.send(
            sign_envelope(self._signer, envelope, now=self._clock()), timeout=timeout
        )
        if marked(reply, RESEND):
            raise TransportError(reply.detail or "the edge relay asks to send again")
        return reply

    async def aclose(self) -> None:
        await self._client.aclose()
