"""A site's connection to an edge relay: every envelope it sends goes out signed.

The edge relay in between is the central relay's TLS peer, so the site proves
its identity in the envelope itself (:mod:`gateway.core.site_signing`). Signing
sits under the reliable sender: each attempt, including a retry under the same
message id, is signed afresh (a new nonce and timestamp), so a retry is never
refused as a replay of the attempt before it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..core.signing import Signer
from ..core.site_signing import sign_envelope
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
        return await self._client.send(
            sign_envelope(self._signer, envelope, now=self._clock()), timeout=timeout
        )

    async def aclose(self) -> None:
        await self._client.aclose()
