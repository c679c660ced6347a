"""One mapping from a failure to the gateway's reply.

The site's forwarder, the relay's dispatcher, LGC, dedup receiver and control
API answer every refusal and every failure of their own here, with the HTTP
status and gRPC code that the exception's kind carries (the table in
:mod:`gateway.core.exceptions`), so a kind is answered alike wherever it
happens. The SuperLink's own answers never pass through here: they go back
unchanged (:func:`gateway.core.envelope.upstream_reply`).

The status also tells the relay's dedup what it may do with the message id:
the gateway's 503 (:class:`NotDeliveredError`) says the call surely did not
reach the SuperLink, so a retry under the same id may run it; any other reply
may mean it did, so it is kept and replayed, never run twice.
"""

from __future__ import annotations

from ..proto.envelope_pb2 import ORIGIN_GATEWAY, Reply
from .envelope import gateway_reply
from .exceptions import GatewayError, NotDeliveredError


def reply_for_error(message_id: str, exc: GatewayError, *, detail: str | None = None) -> Reply:
    """The gateway's reply to ``exc``: its kind's status and code, and as detail
    ``detail`` if given (e.g. naming the side that failed), else ``str(exc)``."""
    return gateway_reply(
        message_id,
        exc.http_status,
        str(exc) if detail is None else detail,
        grpc_code=exc.grpc_code,
    )


def surely_not_delivered(reply: Reply) -> bool:
    """Whether ``reply`` is the gateway's own word that its call never reached the
    SuperLink, which is the one case where running the same id again is safe."""
    return reply.origin == ORIGIN_GATEWAY and reply.http_status == NotDeliveredError.http_status
