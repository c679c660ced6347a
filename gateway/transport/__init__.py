"""Pluggable transports between sites and the relay, chosen by URL scheme.

The built-in transports are the rows of :data:`.registry.TRANSPORTS`; use
:func:`connect` on a site and :func:`listen` on the relay.
"""

from .interface import Handler, TransportClient, TransportServer, TransportURL
from .registry import connect, listen, parse_url, schemes

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
