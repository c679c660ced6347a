"""The gateway's Prometheus metrics: every name, label and bucket, in one place.

Names follow Prometheus's conventions (``flgate_`` prefix, ``_total``, ``_seconds``,
``_bytes``); a job is ``job_id``, since Prometheus gives ``job`` and ``instance`` to
the scrape target. Labels take bounded values, never message ids: a job's series are
removed once :data:`KEEP_ENDED_JOBS` newer jobs have ended (:func:`job_ended`), and
method names beyond :data:`MAX_METHODS` distinct ones count as ``other`` (a site may
name any method; only its own calls could grow the set).

Nothing is recorded until :func:`enable` (the process serves a metrics endpoint):
with ``--metrics-listen off`` a call costs one test of a boolean. What a process
already keeps as state (jobs by state, sites online, processes running) is read at
scrape time from the sources given to :func:`observe`, never copied on each change.

This is the only module that knows ``prometheus_client``; the layers above call the
functions below.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
"""The gateway's own registry (not the library's global one, which also collects
the Python process; :func:`enable` adds those collectors here)."""

KEEP_ENDED_JOBS = 20
"""A job's series stay this many ended jobs long, so that the scrapes after its
last calls still see its final counts."""
MAX_METHODS = 64
"""Distinct method label values at most (Fleet has about 15 methods)."""
OTHER = "other"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
"""Seconds: a Fleet call takes milliseconds, a large object seconds, and Flower gives
each call 30 s."""

_on = False


def enable() -> None:
    """Start recording (once the process serves its metrics endpoint); idempotent."""
    global _on
    if _on:
        return
    from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        REGISTRY.register(collector)
    _on = True


def enabled() -> bool:
    return _on


# --- Fleet calls --------------------------------------------------------------------

SITE_CALLS = Counter(
    "flgate_site_fleet_calls_total",
    "Fleet calls of the site's SuperNodes, by the status the LGS answered.",
    ["job_id", "site", "method", "status"],
    registry=REGISTRY,
)
SITE_CALL_SECONDS = Histogram(
    "flgate_site_fleet_call_seconds",
    "Fleet calls end to end at the site: from the SuperNode's request to the LGS's answer.",
    ["method"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
RELAY_CALLS = Counter(
    "flgate_relay_fleet_calls_total",
    "Fleet calls the relay answered for a job (executed or answered from the dedup store).",
    ["job_id", "site", "method", "status"],
    registry=REGISTRY,
)
SUPERLINK_SECONDS = Histogram(
    "flgate_relay_superlink_call_seconds",
    "The job's SuperLink's own time for a Fleet call, as the relay's LGC waited for it.",
    ["method"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)

# --- reliability --------------------------------------------------------------------

SITE_RETRIES = Counter(
    "flgate_site_retries_total",
    "Attempts a site sent again with the same message id after a transport failure.",
    ["job_id", "method"],
    registry=REGISTRY,
)
SITE_GIVE_UPS = Counter(
    "flgate_site_give_ups_total",
    "Calls whose every attempt failed; the SuperNode got 503 or 504 and retries itself.",
    ["job_id", "method"],
    registry=REGISTRY,
)
RELAY_RETRIES = Counter(
    "flgate_relay_retries_total",
    "Envelopes that reached the relay as a second or later attempt of one message id.",
    ["job_id", "site"],
    registry=REGISTRY,
)
DEDUP_ANSWERS = Counter(
    "flgate_relay_dedup_answers_total",
    "Attempts the relay answered without executing them: from the dedup store (cached), "
    "by joining the execution in flight (joined), or refused as of unknown outcome (refused).",
    ["kind"],
    registry=REGISTRY,
)
REFUSALS = Counter(
    "flgate_relay_refusals_total",
    "Calls and connections the relay refused, by reason class (busy: a budget was full; "
    "handshakes: too many TLS handshakes pending; blocked: the peer was refused too often; "
    "revoked, not_a_site, wrong_site, unknown_job, not_in_job, not_fleet: the dispatcher's "
    "checks).",
    ["reason"],
    registry=REGISTRY,
)
OVERSIZED = Counter(
    "flgate_oversized_envelopes_total",
    "Envelopes or replies refused for exceeding the frame limit.",
    ["transport"],
    registry=REGISTRY,
)

# --- bytes --------------------------------------------------------------------------

SITE_SENT = Counter(
    "flgate_site_sent_bytes_total",
    "Fleet request bodies the site sent to the relay.",
    ["job_id", "site"],
    registry=REGISTRY,
)
SITE_RECEIVED = Counter(
    "flgate_site_received_bytes_total",
    "Fleet reply bodies the site received from the relay.",
    ["job_id", "site"],
    registry=REGISTRY,
)
RELAY_RECEIVED = Counter(
    "flgate_relay_received_bytes_total",
    "Fleet request bodies the relay received from sites.",
    ["job_id", "site"],
    registry=REGISTRY,
)
RELAY_SENT = Counter(
    "flgate_relay_sent_bytes_total",
    "Fleet reply bodies the relay sent back to sites.",
    ["job_id", "site"],
    registry=REGISTRY,
)

# --- the site's link ----------------------------------------------------------------

SITE_ROUND_TRIP = Gauge(
    "flgate_site_relay_round_trip_seconds",
    "The site agent's last measured round trip to the relay (its poll less the relay's hold).",
    registry=REGISTRY,
)
BUILD_INFO = Gauge(
    "flgate_build_info",
    "Always 1; the labels say the gateway's version and a Flower release it runs jobs "
    "with (one sample per release).",
    ["version", "flower"],
    registry=REGISTRY,
)


# --- state read at scrape time ------------------------------------------------------


@dataclass(frozen=True)
class StateMetric:
    """A metric whose values a process already keeps: read from a source at scrape time."""

    name: str
    documentation: str
    labels: tuple[str, ...] = ()
    counter: bool = False
    """A counter kept elsewhere (its name then ends in ``_total``); else a gauge."""


Sample = tuple[tuple[str, ...], float]
"""Label values (in the metric's label order) and a value."""
Source = Callable[[], Iterable[Sample]]

JOBS = StateMetric("flgate_relay_jobs", "Jobs in the relay's store, by state.", ("state",))
SITES_ONLINE = StateMetric(
    "flgate_relay_sites_online",
    "Sites that polled the relay within the last minute, by the transport they reported.",
    ("transport",),
)
SITE_LAST_SEEN = StateMetric(
    "flgate_relay_site_last_seen_timestamp_seconds",
    "Unix time the relay (or, scaled out, any relay) last heard from each site.",
    ("site",),
)
CONNECTIONS = StateMetric(
    "flgate_relay_connections",
    "Connections open on each listener (grpcs: not known, gRPC core keeps them).",
    ("transport",),
)
IN_FLIGHT = StateMetric("flgate_relay_calls_in_flight", "Calls the relay is handling now.")
AT_SUPERLINK = StateMetric(
    "flgate_relay_superlink_calls_in_flight",
    "Fleet calls waiting for a SuperLink's answer now, by method (a relay that dies "
    "now loses those answers: 0 is the moment to restart it).",
    ("method",),
)
SUPERLINKS = StateMetric(
    "flgate_relay_superlinks_running", "SuperLink processes the relay runs for its jobs."
)
SITE_CONNECTED = StateMetric(
    "flgate_site_connected",
    "1 while the site agent has polled its relay within the last minute, else 0.",
    ("transport",),
)
SITE_IN_FLIGHT = StateMetric(
    "flgate_site_calls_in_flight",
    "Fleet calls of the SuperNodes waiting at the site's LGS for their answer now, by job.",
    ("job_id",),
)
SUPERNODES = StateMetric(
    "flgate_site_supernodes_running", "SuperNode processes the site agent runs for its jobs."
)
REDIS_PENDING = StateMetric(
    "flgate_redis_pending_entries",
    "Entries read from the Redis request streams but not yet acknowledged.",
)
STATE_METRICS = (
    JOBS,
    SITES_ONLINE,
    SITE_LAST_SEEN,
    CONNECTIONS,
    IN_FLIGHT,
    AT_SUPERLINK,
    SUPERLINKS,
    SITE_CONNECTED,
    SITE_IN_FLIGHT,
    SUPERNODES,
    REDIS_PENDING,
)


class _StateCollector(Collector):
    def __init__(self) -> None:
        self.sources: dict[str, Source] = {}

    def collect(self) -> Iterator[Metric]:
        for metric in STATE_METRICS:
            source = self.sources.get(metric.name)
            if source is None:
                continue
            family: CounterMetricFamily | GaugeMetricFamily
            if metric.counter:
                family = CounterMetricFamily(
                    metric.name.removesuffix("_total"), metric.documentation, labels=metric.labels
                )
            else:
                family = GaugeMetricFamily(metric.name, metric.documentation, labels=metric.labels)
            try:
                samples = list(source())
            except Exception:  # one broken source must not fail the whole scrape
                log.warning("a metrics source failed", extra={"metric": metric.name}, exc_info=True)
                continue
            for labels, value in samples:
                family.add_metric(list(labels), value)
            yield family

    def describe(self) -> Iterator[Metric]:
        # Registered before any source: the names are reserved, nothing is read.
        return iter(())


_STATE = _StateCollector()
REGISTRY.register(_STATE)


def observe(metric: StateMetric, source: Source) -> None:
    """Read ``metric``'s samples from ``source`` at every scrape (replacing an earlier one).

    A source must be cheap and must not raise: it runs on the event loop, in the scrape."""
    _STATE.sources[metric.name] = source


def metric_names() -> frozenset[str]:
    """Every metric name the gateway exports (as in a query), for dashboards' checks."""
    names = {m.name for m in STATE_METRICS}
    for family in REGISTRY.collect():
        if not family.name.startswith("flgate_"):
            continue  # the process and Python collectors
        if family.type == "histogram":
            names.update(f"{family.name}_{part}" for part in ("bucket", "sum", "count"))
        elif family.type == "counter":
            names.add(f"{family.name}_total")
        else:
            names.add(family.name)
    return frozenset(names)


# --- bounded labels -----------------------------------------------------------------

_methods: set[str] = set()
_job_series: dict[str, dict[tuple[Counter, tuple[str, ...]], Counter]] = {}
"""Per job, the children of its series, kept for :func:`job_ended` (and so that a call
looks its child up once, not through ``labels()`` with its lock every time)."""
_ended: deque[str] = deque()


def method_label(name: str) -> str:
    """``name``, or ``other`` once :data:`MAX_METHODS` names are in use."""
    if name in _methods:
        return name
    if len(_methods) >= MAX_METHODS:
        return OTHER
    _methods.add(name)
    return name


def _job_counter(counter: Counter, job: str, *rest: str) -> Counter:
    """The child of ``counter`` for ``job`` and ``rest``, remembered for :func:`job_ended`."""
    labels = (job, *rest)
    series = _job_series.setdefault(job, {})
    child = series.get((counter, labels))
    if child is None:
        child = series[(counter, labels)] = counter.labels(*labels)
    return child


def job_ended(job: str) -> None:
    """``job`` is over here: its series go once :data:`KEEP_ENDED_JOBS` newer ones ended."""
    if job in _ended or job not in _job_series:
        return
    _ended.append(job)
    while len(_ended) > KEEP_ENDED_JOBS:
        old = _ended.popleft()
        for counter, labels in _job_series.pop(old, {}):
            counter.remove(*labels)


# --- what the layers record ---------------------------------------------------------


def site_call(
    job: str, site: str, method: str, status: int, seconds: float, sent: int, received: int
) -> None:
    """One Fleet call of a SuperNode, answered by its LGS."""
    if not _on:
        return
    name = method_label(method)
    _job_counter(SITE_CALLS, job, site, name, str(status)).inc()
    SITE_CALL_SECONDS.labels(name).observe(seconds)
    _job_counter(SITE_SENT, job, site).inc(sent)
    _job_counter(SITE_RECEIVED, job, site).inc(received)


def relay_call(job: str, site: str, method: str, status: int, received: int, sent: int) -> None:
    """One Fleet call the relay answered for ``job`` after its checks."""
    if not _on:
        return
    _job_counter(RELAY_CALLS, job, site, method_label(method), str(status)).inc()
    _job_counter(RELAY_RECEIVED, job, site).inc(received)
    _job_counter(RELAY_SENT, job, site).inc(sent)


def superlink_call(method: str, seconds: float) -> None:
    if _on:
        SUPERLINK_SECONDS.labels(method_label(method)).observe(seconds)


def site_retry(job: str, method: str) -> None:
    if _on:
        _job_counter(SITE_RETRIES, job, method_label(method)).inc()


def site_give_up(job: str, method: str) -> None:
    if _on:
        _job_counter(SITE_GIVE_UPS, job, method_label(method)).inc()


def relay_retry(job: str, site: str) -> None:
    if _on:
        _job_counter(RELAY_RETRIES, job, site).inc()


def dedup_answer(kind: str) -> None:
    """``kind``: ``cached``, ``joined`` or ``refused``."""
    if _on:
        DEDUP_ANSWERS.labels(kind).inc()


def refusal(reason: str) -> None:
    if _on:
        REFUSALS.labels(reason).inc()


def oversized(transport: str) -> None:
    if _on:
        OVERSIZED.labels(transport).inc()


def site_round_trip(seconds: float) -> None:
    """The round trip of the site agent's last poll of the relay."""
    if _on:
        SITE_ROUND_TRIP.set(seconds)


def build_info(version: str, flower: Sequence[str]) -> None:
    if _on:
        for release in flower:
            BUILD_INFO.labels(version, release).set(1)
