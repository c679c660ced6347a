"""The edge relay: carries the envelopes of the sites in a closed network to the central relay."""

from .relay import EdgeRelay

__all__ = ["EdgeRelay"]
