"""The transport seam's names where they were first defined, for code that imports them here.

The interface lives in :mod:`.interface` and the scheme registry (``connect``,
``listen``, ``parse_url``, ``schemes``) in :mod:`.registry`; new code imports
both from :mod:`gateway.transport`. Transport modules import :mod:`.interface`
only, never this module, which depends on all of them through the registry.
"""

from __future__ import annotations

from .interface import Handler, TransportClient, TransportServer, TransportURL
from .registry import ClientFactory, ServerFactory, connect, listen, parse_url, schemes

__all__ = [
    "ClientFactory",
    "Handler",
    "ServerFactory",
    "TransportClient",
    "TransportServer",
    "TransportURL",
    "connect",
    "listen",
    "parse_url",
    "schemes",
]
