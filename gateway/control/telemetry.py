"""What the relay and a site agent show on their metrics endpoint besides their counters:
the state they keep (jobs, sites, processes, connections), read at each scrape, and
whether they are ready for work.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

from .. import __version__
from ..observability import metrics
from ..observability.metrics import Sample
from .jobs.site_tasks import SITE_ONLINE_SECONDS
from .jobs.store import ABORTED, DISPATCHED, FAILED, FINISHED, RUNNING, SUBMITTED
from .relay_app import RelayApp
from .site_agent import SiteAgent

JOB_STATES = (SUBMITTED, DISPATCHED, RUNNING, FINISHED, FAILED, ABORTED)
UNKNOWN = "unknown"
"""The transport of a site that has not said (an agent older than the metrics)."""


def observe_relay(app: RelayApp, *, flower: Sequence[str]) -> None:
    """Read the relay's state at each scrape; ``flower``: the release its SuperLinks run."""
    metrics.build_info(__version__, flower)

    def jobs() -> list[Sample]:
        store = app.manager.store
        counts = {} if store.closed else store.count_by_state()
        return [((state,), counts.get(state, 0)) for state in JOB_STATES]

    def online() -> list[Sample]:
        """Sites online by transport: from the poll times and statuses, without the
        job list that ``manager.sites()`` builds."""
        if app.manager.store.closed:  # stopping: the sites' jobs are no longer known
            return []
        now = time.time()
        counts = Counter(
            app.manager.site_transport(site) or UNKNOWN
            for site, seen in app.manager.last_seen().items()
            if now - seen < SITE_ONLINE_SECONDS
        )
        return [((t,), n) for t, n in sorted(counts.items())]

    def last_seen() -> list[Sample]:
        if app.manager.store.closed:
            return []
        return [((site,), seen) for site, seen in sorted(app.manager.last_seen().items()) if seen]

    def pending() -> list[Sample]:
        count = app.relay.pending_entries()
        return [] if count is None else [((), count)]

    metrics.observe(metrics.JOBS, jobs)
    metrics.observe(metrics.SITES_ONLINE, online)
    metrics.observe(metrics.SITE_LAST_SEEN, last_seen)
    metrics.observe(
        metrics.CONNECTIONS, lambda: [((s,), n) for s, n in app.relay.connections().items()]
    )
    metrics.observe(metrics.IN_FLIGHT, lambda: [((), app.in_flight)])
    at_superlink = app.relay.dispatcher.stats.at_superlink
    metrics.observe(
        metrics.AT_SUPERLINK, lambda: [((m,), n) for m, n in sorted(at_superlink.items())]
    )
    metrics.observe(metrics.SUPERLINKS, lambda: [((), app.manager.superlinks_running())])
    metrics.observe(metrics.REDIS_PENDING, pending)


def observe_site(agent: SiteAgent, *, flower: Sequence[str]) -> None:
    """Read the site agent's state at each scrape; ``flower``: its SuperNodes' release."""
    metrics.build_info(__version__, flower)
    metrics.observe(metrics.SUPERNODES, lambda: [((), agent.supernodes_running())])
    in_flight = agent.calls_in_flight
    metrics.observe(
        metrics.SITE_IN_FLIGHT, lambda: [((job,), n) for job, n in sorted(in_flight.items())]
    )
    metrics.observe(
        metrics.SITE_CONNECTED, lambda: [((agent.transport,), 1 if agent.in_contact() else 0)]
    )


def site_not_ready(agent: SiteAgent) -> str | None:
    """Why the site cannot take work now (``/readyz``), or ``None``."""
    if not agent.in_contact():
        return "no poll of the relay has succeeded in the last minute"
    return None
