"""Calling the relay's control plane (agent and admin operations) over any transport."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from ..core.envelope import new_message_id, now_ms
from ..core.exceptions import (
    AuthError,
    ConfigError,
    JobError,
    MaybeDeliveredError,
    NotDeliveredError,
    ProtocolError,
    UnknownJobError,
)
from ..proto.envelope_pb2 import Envelope, Kind
from ..transport import TransportClient

M = TypeVar("M", bound=Message)


async def control_call(
    client: TransportClient,
    kind: Kind,
    method: str,
    request: Message,
    response_type: type[M],
    *,
    timeout: float = 30.0,
) -> M:
    """Send one control request; raise the gateway error its status stands for."""
    # A call about one job carries the job's id, so that transports that route by
    # job (Redis, with several relays) deliver it to the relay that owns the job.
    job_id = getattr(request, "job_id", "")
    envelope = Envelope(
        kind=kind,
        job_id=job_id if isinstance(job_id, str) else "",
        message_id=new_message_id(),
        method=method,
        body=request.SerializeToString(),
        deadline_unix_ms=now_ms() + int(timeout * 1000),
        attempt=1,
    )
    reply = await client.send(envelope, timeout=timeout)
    if reply.http_status == 200:
        try:
            return response_type.FromString(reply.body)
        except DecodeError as exc:
            raise ProtocolError(f"the relay's answer to {method} is malformed") from exc
    detail = reply.detail or f"status {reply.http_status}"
    if reply.http_status in (401, 403):
        raise AuthError(detail)
    if reply.http_status == 400:
        raise ConfigError(detail)
    if reply.http_status == 404:
        raise UnknownJobError(detail)
    if reply.http_status == 503:  # the relay did not run it (busy, stopping): may be sent again
        raise NotDeliveredError(detail)
    if reply.http_status == 504:
        raise MaybeDeliveredError(detail)
    raise JobError(detail)
