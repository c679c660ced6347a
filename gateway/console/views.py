"""What the console's pages show, made from the relay's answers (pure: no I/O).

Each function turns a control-plane message into the JSON the page reads
(``docs/CONSOLE.md`` lists the shapes). What a viewer may do with a job is
decided here by the same rule the relay enforces (``Peer.may_manage``), so the
page offers only what the relay would allow; the relay still checks every call.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..control.jobs.store import ACTIVE_STATES
from ..core.identity import Peer
from ..proto.control_pb2 import GetMetricsResponse, JobInfo, ListSitesResponse, SiteInfo

JSON = dict[str, Any]


def whoami(peer: Peer, relay_url: str) -> JSON:
    return {
        "name": peer.name,
        "admin_role": peer.admin_role_name,
        "relay": relay_url,
    }


def job_view(info: JobInfo, viewer: Peer, now: float) -> JSON:
    """One job as the Jobs and Job pages show it; ``now`` in unix seconds."""
    ended = info.state not in ACTIVE_STATES
    end = info.updated if ended else now
    try:
        result = json.loads(info.result_json) if info.result_json else None
    except ValueError:  # the app printed a line that is not JSON: show it as text
        result = info.result_json
    return {
        "job_id": info.job_id,
        "name": info.name,
        "state": info.state,
        "reason": info.reason,
        "sites": list(info.sites),
        "submitted_by": info.submitted_by,
        "created": info.created,
        "updated": info.updated,
        "duration_s": max(0.0, end - info.created) if info.created else 0.0,
        "round": info.round,
        "rounds": info.rounds,
        "progress": min(1.0, info.round / info.rounds) if info.rounds else None,
        "flower": info.flower,
        "run_config": info.run_config,
        "result": result,
        "ended": ended,
        "may_manage": viewer.may_manage(info.submitted_by),
        "fleet_calls": info.fleet_calls,
    }


def jobs_view(jobs: list[JobInfo], viewer: Peer, now: float) -> JSON:
    """Every job, newest first."""
    ordered = sorted(jobs, key=lambda j: (j.created, j.job_id), reverse=True)
    return {"jobs": [job_view(j, viewer, now) for j in ordered]}


def site_view(site: SiteInfo) -> JSON:
    status = site.status if site.HasField("status") else None
    versions = list(status.flower_versions) if status is not None else []
    if status is not None and not versions and status.flower_version:
        versions = [status.flower_version]
    return {
        "name": site.name,
        "online": site.online,
        "last_seen": site.last_seen or None,
        "transport": status.transport if status is not None else "",
        "flower_versions": versions,
        "rtt_ms": status.rtt_ms if status is not None and status.HasField("rtt_ms") else None,
        "calls_last_minute": status.calls_last_minute if status is not None else 0,
        "errors_last_minute": status.errors_last_minute if status is not None else 0,
        "jobs": list(site.jobs),
    }


def federation_view(answer: ListSitesResponse, relay_url: str) -> JSON:
    return {
        "relay": {
            "url": relay_url,
            "name": answer.relay.name,
            "listeners": list(answer.relay.listeners),
            "started": answer.relay.started or None,
        },
        "sites": [site_view(s) for s in answer.sites],
    }


def metrics_view(answer: GetMetricsResponse) -> JSON:
    """The job's series split for the charts: the ServerApp's by tag, and the sites'
    client-side series (stored as ``<site>/<tag>``) by tag, then site."""
    sites = set(answer.job.sites)
    server: dict[str, list[list[float]]] = {}
    by_site: dict[str, dict[str, list[list[float]]]] = {}
    for point in answer.points:
        site, _, tag = point.tag.partition("/")
        row = [point.step, point.value]
        if site in sites and tag:
            by_site.setdefault(tag, {}).setdefault(site, []).append(row)
        else:
            server.setdefault(point.tag, []).append(row)
    for series in [*server.values(), *(s for t in by_site.values() for s in t.values())]:
        series.sort(key=lambda row: row[0])
    return {"server": server, "sites": by_site}


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_ANSI_PARTIAL = re.compile(r"\x1b(\[[0-9;?]*[ -/]*)?$")


class PlainText:
    """Log text without terminal colour codes (Flower colours its log levels).

    Text arrives in chunks, so a code cut at a chunk's end is held back until the
    next chunk completes it."""

    def __init__(self) -> None:
        self._held = ""

    def feed(self, text: str) -> str:
        text = self._held + text
        partial = _ANSI_PARTIAL.search(text)
        self._held = partial.group(0) if partial else ""
        if partial:
            text = text[: partial.start()]
        return _ANSI.sub("", text)
