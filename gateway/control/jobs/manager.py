"""The relay's job manager: accept jobs, run each on its own SuperLink, tell sites what to run.

The manager is the façade the relay's control service talks to: it validates and
stores submitted jobs, schedules a job once all its sites are online, answers admin
requests (list, info, logs, download, abort) and hands the sites' polls on. The work
is done by three parts it wires together:

- :class:`~.site_tasks.SiteTasks`: what each site must run and what the sites report;
- :class:`~.board_exchange.BoardExchange`: with a board (scale-out), trading those
  with the other relays;
- :class:`~.execution.JobRunner`: running each job on its own SuperLink to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from ...core.exceptions import ConfigError, JobError, UnknownJobError
from ...core.identity import Peer
from ...flower.install import FlowerInstall
from ...proto.control_pb2 import (
    GetLogsResponse,
    JobInfo,
    PollTasksRequest,
    PollTasksResponse,
    ShipLogsRequest,
    ShipLogsResponse,
    SiteInfo,
    SubmitJobRequest,
)
from ..board import Board
from .archive import unpack_app
from .board_exchange import BoardExchange
from .execution import JobRunner, RouteTable
from .layout import SERVER_LOG, SUPERLINK_LOG, JobPaths
from .site_tasks import SITE_ONLINE_SECONDS, SiteTasks
from .spec import JobSpec, parse_run_config
from .store import ABORTED, ACTIVE_STATES, SUBMITTED, JobRecord, JobStore, job_info

__all__ = ["JobManager", "RouteTable", "job_info"]

log = logging.getLogger(__name__)


class JobManager:
    """Durable jobs, their SuperLinks and the sites' desired state."""

    def __init__(
        self,
        *,
        workspace: Path,
        routes: RouteTable,
        install: FlowerInstall,
        known_sites: frozenset[str] | None = None,
        site_start_timeout: float = 120.0,
        board: Board | None = None,
    ) -> None:
        """``board``: where relays sharing one Redis exchange what their jobs need
        (scale-out); without it this relay answers from its own jobs alone."""
        self.workspace = workspace
        self.store = JobStore(workspace / "jobs.db")
        self._paths = JobPaths(workspace)
        self._known_sites = known_sites
        self._changed = asyncio.Event()
        """Set when a job or a site's report changes: wakes the scheduler and waiting polls."""
        self._scheduler: asyncio.Task[None] | None = None
        self._closing = False
        self.on_event: Callable[[str, str], None] = lambda job_id, text: None
        self._sites = SiteTasks(
            store=self.store,
            install=install,
            paths=self._paths,
            changed=self._changed,
            on_change=self._site_changed,
        )
        self._runner = JobRunner(
            store=self.store,
            install=install,
            routes=routes,
            paths=self._paths,
            sites=self._sites,
            changed=self._changed,
            on_event=lambda job_id, text: self.on_event(job_id, text),
            closing=lambda: self._closing,
            site_start_timeout=site_start_timeout,
        )
        self._exchange = (
            BoardExchange(board, store=self.store, sites=self._sites, changed=self._changed)
            if board is not None
            else None
        )

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Find jobs again after a restart, then schedule."""
        for record in self.store.list():
            if record.state in ACTIVE_STATES and record.state != SUBMITTED:
                await self._runner.adopt(record)
        self._scheduler = asyncio.create_task(self._schedule_forever(), name="job-scheduler")
        if self._exchange is not None:
            self._exchange.start()

    async def aclose(self) -> None:
        self._closing = True
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
        if self._exchange is not None:
            await self._exchange.aclose()
        await self._runner.stop_all("the relay shut down")
        self.store.close()

    async def _schedule_forever(self) -> None:
        """Start each submitted job once all its sites are online."""
        while not self._closing:
            online = set(self.online_sites())
            for record in self.store.list():
                startable = record.state == SUBMITTED and set(record.sites) <= online
                if startable and record.job_id not in self._runner:
                    self._runner.start(record)
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 1.0)

    def _site_changed(self, job_id: str, text: str) -> None:
        """A site reported a new state of a job: an event when the job runs here."""
        if job_id in self._runner:
            self.on_event(job_id, text)

    # --- paths ---------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        return self._paths.job_dir(job_id)

    def log_path(self, job_id: str, source: str) -> Path:
        return self._paths.log_path(job_id, source)

    # --- admin operations ----------------------------------------------------

    def online_sites(self) -> list[str]:
        return self._sites.online_sites()

    def sites(self) -> list[SiteInfo]:
        """Every known site: online or not, and the active jobs it is in."""
        seen = self._sites.last_seen()
        names = set(seen) | set(self._known_sites or ())
        active = [j for j in self.job_list() if j.state in ACTIVE_STATES]
        now = time.time()
        return [
            SiteInfo(
                name=name,
                last_seen=seen.get(name, 0.0),
                online=now - seen.get(name, 0.0) < SITE_ONLINE_SECONDS,
                jobs=[j.job_id for j in active if name in j.sites],
            )
            for name in sorted(names)
        ]

    def owns(self, job_id: str) -> bool:
        """Whether this relay keeps the job (relays sharing a Redis own what they started)."""
        return self.store.get(job_id) is not None

    def job_list(self) -> list[JobInfo]:
        """This relay's jobs and, with a board, the other relays' jobs."""
        mine = [job_info(r) for r in self.store.list()]
        known = {j.job_id for j in mine}
        return mine + [j for j in self._sites.others.jobs() if j.job_id not in known]

    def info(self, job_id: str) -> JobInfo:
        """A job's summary, from its record here or from the relay that owns it."""
        record = self.store.get(job_id)
        if record is not None:
            return job_info(record)
        shared = self._sites.others.job(job_id)
        if shared is None:
            raise UnknownJobError(f"no job {job_id!r}; `flgate job list` shows the jobs")
        return shared[1]

    def submit(self, peer: Peer, request: SubmitJobRequest) -> JobRecord:
        """Validate and store a job; the error says what to fix."""
        job_id = uuid.uuid4().hex[:12]
        app_dir = self.job_dir(job_id) / "app"
        try:
            unpack_app(request.app_archive, app_dir)
            spec = JobSpec.load(app_dir)
            overrides = parse_run_config(request.run_config) if request.run_config else {}
        except ConfigError:
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
            raise
        sites = sorted(set(request.sites))
        known = self._known_sites if self._known_sites is not None else set(self._sites.last_seen())
        if sites:
            unknown = [s for s in sites if s not in known]
            if unknown:
                raise ConfigError(
                    f"unknown site(s) {', '.join(unknown)}; known sites: "
                    f"{', '.join(sorted(known)) or 'none has connected yet'}"
                )
        else:
            wanted = max(request.min_sites or spec.min_sites, 1)
            online = self.online_sites()
            if len(online) < wanted:
                raise ConfigError(
                    f"the job needs {wanted} sites but {len(online)} are online "
                    f"({', '.join(online) or 'none'}); start more sites or name them with --sites"
                )
            sites = online[:wanted]
        if len(sites) < spec.min_sites:
            raise ConfigError(
                f"job {spec.name} needs at least {spec.min_sites} sites, got {len(sites)}"
            )
        config = {**spec.run_config, **overrides}
        record = JobRecord(
            job_id=job_id,
            name=request.name or spec.name,
            state=SUBMITTED,
            sites=tuple(sites),
            submitted_by=peer.name,
            run_config=" ".join(f"{k}={v}" for k, v in config.items()),
            time_limit=request.time_limit or spec.time_limit,
            reason="waiting for its sites",
        )
        self.store.add(record)
        self._changed.set()
        log.info("job submitted", extra={"job": job_id, "by": peer.name, "sites": sites})
        return record

    async def abort(self, job_id: str, reason: str) -> JobRecord:
        record = self._get(job_id)
        if record.ended:
            raise JobError(f"job {job_id} has already ended ({record.state})")
        if not await self._runner.abort(job_id, reason):
            self.store.update(job_id, state=ABORTED, reason=reason)
        self._changed.set()
        return self._get(job_id)

    def _get(self, job_id: str) -> JobRecord:
        return self.store.require(job_id)

    def get(self, job_id: str) -> JobRecord:
        return self._get(job_id)

    async def logs(self, job_id: str, source: str, offset: int, wait: float) -> GetLogsResponse:
        record = self._get(job_id)
        sources = [SERVER_LOG, SUPERLINK_LOG, *record.sites]
        if source not in sources:
            raise ConfigError(f"job {job_id} has no log {source!r}; logs: {', '.join(sources)}")
        path = self.log_path(job_id, source)
        deadline = time.monotonic() + wait
        while True:
            size = path.stat().st_size if path.exists() else 0
            record = self._get(job_id)
            if size > offset or record.ended or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.25)
        data = b""
        if size > offset:
            with path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read(min(size - offset, 4 * 1024 * 1024))
        next_offset = offset + len(data)
        return GetLogsResponse(
            data=data,
            next_offset=next_offset,
            ended=record.ended and next_offset >= size,
            sources=sources,
        )

    def download(self, job_id: str) -> bytes:
        """The job's logs and result as .tar.gz bytes."""
        record = self._get(job_id)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            summary = json.dumps(
                {
                    "job_id": record.job_id,
                    "name": record.name,
                    "state": record.state,
                    "reason": record.reason,
                    "sites": list(record.sites),
                    "run_id": record.run_id,
                    "rounds": record.rounds,
                    "result": json.loads(record.result_json) if record.result_json else None,
                },
                indent=2,
            ).encode()
            info = tarfile.TarInfo(f"{job_id}/job.json")
            info.size = len(summary)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(summary))
            logs = self.job_dir(job_id) / "logs"
            if logs.is_dir():
                tar.add(logs, arcname=f"{job_id}/logs")
        return buffer.getvalue()

    # --- site agent operations -----------------------------------------------

    async def poll(self, site: str, request: PollTasksRequest) -> PollTasksResponse:
        """Record the site's view; answer with the jobs it must run (long-poll)."""
        return await self._sites.poll(site, request)

    def ship_logs(self, site: str, request: ShipLogsRequest) -> ShipLogsResponse:
        return self._sites.ship_logs(site, request)

    # --- internals that tests reach for ------------------------------------------

    @property
    def _node_keys(self) -> dict[str, str]:
        return self._sites.node_keys

    @_node_keys.setter
    def _node_keys(self, keys: dict[str, str]) -> None:
        self._sites.node_keys = keys

    async def _register_node_keys(self, record: JobRecord, flwr_home: Path) -> None:
        await self._runner.register_node_keys(record, flwr_home)
