"""Pluggable transports between sites and the relay, chosen by URL scheme.

Importing this package registers the built-in transports; use :func:`connect`
on a site and :func:`listen` on the relay.
"""

from . import grpc_transport as _grpc_transport  # noqa: F401  (registers grpcs://)
from . import http_transport as _http_transport  # noqa: F401  (registers https://)
from . import tcp_transport as _tcp_transport  # noqa: F401  (registers tcps://)
from .base import (
    Handler,
    TransportClient,
    TransportServer,
    TransportURL,
    connect,
    listen,
    parse_url,
    schemes,
)
from .redis import server as _redis_server  # noqa: F401  (registers redis(s)://)

__all__ = [
    "Handler",
    "TransportClient",
    "TransportServer",
    "TransportURL",
    "connect",
    "listen",
    "parse_url",
    "schemes",
]
