"""LGS (local gateway server): the SuperLink, as a job's SuperNode sees it.

One LGS per job on a site, bound to 127.0.0.1 on a free port. It speaks the
Fleet API in the SuperNode's dialect and hands every Fleet call to a forwarder;
everything else (Control, Runtime, ``/health``, ``/docs``) is refused here and
never leaves the site.

The LGS is plain HTTP/gRPC, except for jobs with Flower's node authentication:
``flower-supernode`` refuses to sign its calls over an insecure connection, so
there the LGS serves TLS with a loopback certificate (:class:`LoopbackTLS`).
"""

from __future__ import annotations

import abc
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from ..observability import metrics
from ..proto.envelope_pb2 import Dialect, Reply

Forward = Callable[[str, Dialect, list[tuple[str, bytes]], bytes], Awaitable[Reply]]
"""forward(method, dialect, headers, body) -> reply; see JobForwarder.forward."""


def metered(forward: Forward, *, job: str, site: str, in_flight: Counter[str]) -> Forward:
    """``forward``, its calls counted and timed end to end (``flgate_site_*``), and
    counted in ``in_flight[job]`` while they wait for their answer."""

    async def call(
        method: str, dialect: Dialect, headers: list[tuple[str, bytes]], body: bytes
    ) -> Reply:
        started = time.perf_counter()
        in_flight[job] += 1
        try:
            reply = await forward(method, dialect, headers, body)
        finally:
            in_flight[job] -= 1
        elapsed = time.perf_counter() - started
        metrics.site_call(job, site, method, reply.http_status, elapsed, len(body), len(reply.body))
        return reply

    return call


REFUSAL_DETAIL = "the gateway serves only the Flower Fleet API ({what}); {request} is not forwarded"


class LocalGatewayServer(abc.ABC):
    """A Fleet API endpoint on loopback for one job's SuperNode."""

    host = "127.0.0.1"

    @property
    @abc.abstractmethod
    def port(self) -> int:
        """The bound port (valid after start)."""

    @property
    def address(self) -> str:
        """What ``flower-supernode --superlink`` takes."""
        return f"{self.host}:{self.port}"

    @abc.abstractmethod
    async def start(self, port: int = 0) -> None:
        """Bind ``port`` on loopback (0: a free one) and serve.

        A restarted site agent passes the port of the LGS it replaces, so that
        the job's surviving SuperNode finds its SuperLink where it was.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop serving."""
