"""One exception tree for the whole gateway; each kind carries the status it is answered with.

::

    kind                       HTTP grpc code          what
    GatewayError               504  UNAVAILABLE        a gateway failure of no more specific kind
    ├── ConfigError            400  INVALID_ARGUMENT   bad configuration or operator input
    ├── ProtocolError          400  INVALID_ARGUMENT   bytes that do not follow the protocol
    ├── AuthError              403  PERMISSION_DENIED  identity missing, invalid or not allowed
    │   └── ReplayError        403  PERMISSION_DENIED  a signed envelope's nonce was seen before
    ├── UnknownMethodError     404  NOT_FOUND          not a Fleet method / no such operation
    ├── JobError               409  ALREADY_EXISTS     a job cannot do that in its state
    │   ├── UnknownJobError    404  NOT_FOUND          no such job here
    │   └── ProcessError       409  ALREADY_EXISTS     a Flower process failed or exited
    ├── TransportError         503  UNAVAILABLE        a transport could not move an envelope
    │   ├── ConnectError       503  UNAVAILABLE        no connection to the peer
    │   ├── DeadlineError      504  UNAVAILABLE        the deadline passed awaiting a reply
    │   ├── FrameTooLargeError 413  RESOURCE_EXHAUSTED a frame over the configured limit
    │   └── RelayBusyError     503  UNAVAILABLE        over the relay's budget; not executed
    ├── NotDeliveredError      503  UNAVAILABLE        surely did not reach the SuperLink
    └── MaybeDeliveredError    504  UNAVAILABLE        may have reached it; no answer came
        └── AnswerTimeoutError 504  UNAVAILABLE        sent, and no answer within the time

:func:`gateway.core.failures.reply_for_error` turns any of them into the gateway's
reply from these two attributes, so a refusal or failure is answered alike everywhere.

The gateway's own failures are 503 (surely not at the SuperLink: the relay may run the
call again under the same id) or 504 (it may have acted: never run again, the relay's
dedup answers a retry), with ``UNAVAILABLE``: every Flower release retries those. Never
502 (not retried by every release), 401 (the SuperNode shuts down) or 403 (Flower reads
"run not running"); 403 is for refusals only. A kind that says nothing more specific is
a failure of unknown outcome (504), so it keeps Flower retrying and is never run twice.

Third-party errors (``grpc.RpcError``, ``aiohttp.ClientError``, ``OSError``) are
translated where they cross into gateway code and chained with ``from``.
"""

from __future__ import annotations

from typing import ClassVar

from . import fleet


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""

    http_status: ClassVar[int] = 504
    """The HTTP status the gateway answers this kind of error with."""
    grpc_code: ClassVar[int] = fleet.UNAVAILABLE
    """The gRPC code (a ``grpc.StatusCode`` number) it answers a gRPC caller with."""


class ConfigError(GatewayError):
    """Configuration or operator input that cannot work; the message says what to fix."""

    http_status = 400
    grpc_code = fleet.INVALID_ARGUMENT


class ProtocolError(GatewayError):
    """Bytes that do not follow the envelope or Fleet protocol."""

    http_status = 400
    grpc_code = fleet.INVALID_ARGUMENT


class AuthError(GatewayError):
    """A peer's identity is missing, invalid, or not allowed to do this."""

    http_status = 403
    grpc_code = fleet.PERMISSION_DENIED


class ReplayError(AuthError):
    """A site-signed envelope whose nonce the relay accepted before: a replay, or an
    edge relay resending the very bytes it sent already (which may have run)."""


class UnknownMethodError(GatewayError):
    """A method that is not a Fleet method, or an operation the relay does not have."""

    http_status = 404
    grpc_code = fleet.NOT_FOUND


class JobError(GatewayError):
    """A job could not be started, run or stopped (it is in the wrong state for that)."""

    http_status = 409
    grpc_code = fleet.ALREADY_EXISTS
    """What ``fleet.grpc_code_for_http(409)`` says, so both dialects read alike."""


class UnknownJobError(JobError):
    """No job with that id here (this relay does not know it or does not run it)."""

    http_status = 404
    grpc_code = fleet.NOT_FOUND


class ProcessError(JobError):
    """A Flower process failed to start or exited unexpectedly."""


class TransportError(GatewayError):
    """An envelope could not be moved between site and relay."""

    http_status = 503
    grpc_code = fleet.UNAVAILABLE


class ConnectError(TransportError):
    """The peer could not be reached; a later retry may succeed."""


class DeadlineError(TransportError):
    """The call's deadline passed before a reply arrived (the request may have gone out)."""

    http_status = 504


class FrameTooLargeError(TransportError):
    """A frame exceeds the configured limit."""

    http_status = 413
    grpc_code = fleet.RESOURCE_EXHAUSTED


class RelayBusyError(TransportError):
    """The relay refused the call, unread, because the peer (or all peers together) had
    as much in flight as its admission budgets allow. Nothing ran: a retry with the same
    message id is safe, after a backoff."""


class NotDeliveredError(GatewayError):
    """The gateway failed before the call reached the SuperLink (connection refused,
    relay stopping): running it again, even under the same id, is safe."""

    http_status = 503
    grpc_code = fleet.UNAVAILABLE


class MaybeDeliveredError(GatewayError):
    """The call may have reached the SuperLink but its answer did not come back
    (timeout after sending, connection dropped, relay died mid-call): its id must
    never be executed again."""

    http_status = 504
    grpc_code = fleet.UNAVAILABLE


class AnswerTimeoutError(MaybeDeliveredError):
    """A request went out and its answer did not come within the caller's time."""
