"""Flower gateway: run unmodified Flower apps across sites through one relay.

A site's LGS impersonates the SuperLink's Fleet API, every call travels as an
envelope over a pluggable transport to the relay, and the relay's LGC replays it
to the job's real SuperLink. The package never imports flwr: it forwards bytes.
"""

__version__ = "0.1.0"
