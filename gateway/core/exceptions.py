"""One exception tree for the whole gateway.

::

    GatewayError
    ├── ConfigError            bad configuration or input given by an operator
    ├── TransportError         a transport could not move an envelope
    │   ├── ConnectError       no connection to the peer (retry may help)
    │   ├── DeadlineError      the call's deadline passed
    │   └── FrameTooLargeError a frame over the configured limit
    ├── ProtocolError          bytes that do not follow the protocol
    ├── AuthError              a peer's identity is missing, invalid or not allowed
    └── JobError               a job could not be started, run or stopped
        └── ProcessError       a Flower process failed or exited early

Third-party errors (``grpc.RpcError``, ``aiohttp.ClientError``, ``OSError``) are
translated where they cross into gateway code and chained with ``from``.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """Configuration or operator input that cannot work; the message says what to fix."""


class TransportError(GatewayError):
    """An envelope could not be moved between site and relay."""


class ConnectError(TransportError):
    """The peer could not be reached; a later retry may succeed."""


class DeadlineError(TransportError):
    """The call's deadline passed before a reply arrived."""


class FrameTooLargeError(TransportError):
    """A frame exceeds the configured limit."""


class ProtocolError(GatewayError):
    """Bytes that do not follow the envelope or Fleet protocol."""


class AuthError(GatewayError):
    """A peer's identity is missing, invalid, or not allowed to do this."""


class JobError(GatewayError):
    """A job could not be started, run or stopped."""


class ProcessError(JobError):
    """A Flower process failed to start or exited unexpectedly."""
