"""The relay's side of the sites' long-poll: what each site must run, and what it reports.

Each poll returns the full set of jobs the site must run now (this relay's and, with a
board, the other relays'), so a restarted site (or relay) simply reconciles. The poll
also carries what the site reports back: that it is alive, its Flower node key, the
state of each job it runs and its status (transport, Flower release, round trip, Fleet
calls and errors of the last minute). The answer says how long the relay held the poll,
so the agent can tell its round trip from the wait without a call of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable

from ...core.exceptions import JobError
from ...flower.install import FlowerInstalls, dialect_of
from ...proto.control_pb2 import (
    PollTasksRequest,
    PollTasksResponse,
    ShipLogsRequest,
    ShipLogsResponse,
    SiteJob,
    SiteJobState,
    SiteStatus,
)
from ..board import BoardView, Report, Status, newest
from .layout import JobPaths
from .store import DISPATCHED, FLOWER_KEY, RUNNING, JobStore

SITE_ONLINE_SECONDS = 60.0
"""A site that polled within this many seconds counts as online."""
REPORT_TTL = 600.0
"""Site reports of a job are forgotten this long after the last one."""


class SiteTasks:
    """The sites' desired jobs and their reports, for the poll, the scheduler and the runs."""

    def __init__(
        self,
        *,
        store: JobStore,
        installs: FlowerInstalls,
        paths: JobPaths,
        changed: asyncio.Event,
        on_change: Callable[[str, str], None],
    ) -> None:
        """``changed``: set whenever a site reports a new state (and waited on by polls);
        ``on_change(job_id, text)``: told of each such new state."""
        self._store = store
        self._installs = installs
        self._paths = paths
        self._changed = changed
        self._on_change = on_change
        self.online: dict[str, float] = {}
        """When each site last polled this relay."""
        self.node_keys: dict[str, str] = {}
        """Per site: the Flower node public key it reported (bound to its certificate)."""
        self.statuses: dict[str, Status] = {}
        """Per site: when it last reported its status to this relay, and the status."""
        self.reported: dict[str, dict[str, Report]] = {}
        """Per job, per site: the latest state the site reported to this relay."""
        self.others = BoardView()
        """The other relays' shares as the board last gave them (scale-out); else empty."""

    # --- who is online -------------------------------------------------------

    def last_seen(self) -> dict[str, float]:
        """When each site last polled this relay or, with a board, any relay."""
        seen = self.others.seen()
        for site, when in self.online.items():
            seen[site] = max(when, seen.get(site, 0.0))
        return seen

    def online_sites(self) -> list[str]:
        now = time.time()
        return sorted(s for s, when in self.last_seen().items() if now - when < SITE_ONLINE_SECONDS)

    # --- what each site must run -----------------------------------------------

    def desired(self, site: str) -> list[SiteJob]:
        """What ``site`` must run: this relay's jobs' tasks and the other relays'."""
        mine = self.my_tasks(site)
        ids = {task.job_id for task in mine}
        return mine + [task for task in self.others.tasks(site) if task.job_id not in ids]

    def my_tasks(self, site: str) -> list[SiteJob]:
        """What ``site`` must run for this relay's jobs."""
        desired = []
        for record in self._store.list():
            if record.state not in (DISPATCHED, RUNNING) or site not in record.sites:
                continue
            release = record.runtime.get(FLOWER_KEY) or self._installs.default.version_text
            desired.append(
                SiteJob(
                    job_id=record.job_id,
                    dialect=dialect_of(release),
                    flower_version=release,
                    partition_id=record.sites.index(site),
                    num_partitions=len(record.sites),
                    node_auth=record.runtime.get("node_auth") == "1",
                )
            )
        return desired

    async def poll(self, site: str, request: PollTasksRequest) -> PollTasksResponse:
        """Record the site's view; answer with the jobs it must run (long-poll)."""
        held_from = time.monotonic()
        self.online[site] = time.time()
        if request.flower_node_public_key:  # bound to the certificate's site name, never claimed
            self.node_keys[site] = request.flower_node_public_key
        if request.HasField("status"):  # bound like the key; agents that predate it send none
            self.statuses[site] = (time.time(), request.status)
        self.record_states(site, request.jobs)
        current = {j.job_id for j in request.jobs if j.state in ("starting", "running")}
        wait = min(request.wait_ms, 30_000) / 1000
        deadline = time.monotonic() + wait
        while True:
            desired = self.desired(site)
            if {d.job_id for d in desired} != current or time.monotonic() >= deadline:
                break
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - time.monotonic()))
            self.online[site] = time.time()
        return PollTasksResponse(desired=desired, held_ms=(time.monotonic() - held_from) * 1000)

    # --- what the sites report -------------------------------------------------

    def record_states(self, site: str, states: Iterable[SiteJobState]) -> None:
        now = time.time()
        for state in states:
            by_site = self.reported.setdefault(state.job_id, {})
            previous = by_site.get(site)
            by_site[site] = (now, state)
            if previous is None or previous[1].state != state.state:
                self._on_change(state.job_id, f"{site}: {state.state} {state.detail}".strip())
                self._changed.set()

    def state(self, job_id: str, site: str) -> SiteJobState | None:
        """The latest state ``site`` reported for the job, to this relay or another."""
        return newest((self.reported.get(job_id, {}).get(site), self.others.report(job_id, site)))

    def forget_stale_reports(self, now: float) -> None:
        """Drop the reports of jobs that no site reported on for ``REPORT_TTL`` seconds."""
        for job_id in [
            j
            for j, by in self.reported.items()
            if all(now - when > REPORT_TTL for when, _ in by.values())
        ]:
            del self.reported[job_id]

    def status(self, site: str) -> SiteStatus | None:
        """The newest status ``site`` reported to this relay or another, or None if never."""
        return newest((self.statuses.get(site), self.others.status(site)))

    def flower_releases(self, site: str) -> list[str] | None:
        """The Flower releases ``site`` reported it runs jobs with, or None before it
        reported any (agents that predate the list report their one release)."""
        status = self.status(site)
        if status is None:
            return None
        releases = list(status.flower_versions) or [status.flower_version]
        return [r for r in releases if r] or None

    def node_key(self, site: str) -> str:
        """The Flower node key ``site`` reported to this relay or another, or ''."""
        return self.node_keys.get(site) or self.others.node_keys().get(site, "")

    def ship_logs(self, site: str, request: ShipLogsRequest) -> ShipLogsResponse:
        """Append a site's chunk of its job log when it continues where the file ends."""
        record = self._store.require(request.job_id)
        if site not in record.sites:
            raise JobError(f"site {site!r} is not part of job {request.job_id}")
        path = self._paths.log_path(request.job_id, site)
        path.parent.mkdir(parents=True, exist_ok=True)
        size = path.stat().st_size if path.exists() else 0
        if request.offset == size and request.data:
            with path.open("ab") as handle:
                handle.write(request.data)
            size += len(request.data)
        return ShipLogsResponse(next_offset=size)
