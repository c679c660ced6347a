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
import shlex
import shutil
import tarfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from ...core.exceptions import ConfigError, JobError, UnknownJobError
from ...core.identity import Peer
from ...flower.install import FlowerInstalls, release_matches
from ...proto.control_pb2 import (
    GetLogsResponse,
    GetMetricsResponse,
    JobInfo,
    MetricPoint,
    PollTasksRequest,
    PollTasksResponse,
    PushTrackingRequest,
    PushTrackingResponse,
    ShipLogsRequest,
    ShipLogsResponse,
    SiteInfo,
    SubmitJobRequest,
)
from ...tracking.exporters import TENSORBOARD_DIR, Exporters
from ..board import Board
from .archive import unpack_app
from .board_exchange import BoardExchange
from .execution import JobRunner, RouteTable
from .layout import SERVER_LOG, SUPERLINK_LOG, JobPaths
from .site_tasks import SITE_ONLINE_SECONDS, SiteTasks
from .spec import (
    JobSpec,
    RunConfigValue,
    check_flower_app,
    check_job_name,
    check_time_limit,
    parse_run_config,
)
from .store import ABORTED, ACTIVE_STATES, FLOWER_KEY, SUBMITTED, JobRecord, JobStore, job_info

__all__ = ["JobManager", "RouteTable", "job_info"]

log = logging.getLogger(__name__)

UNPACKS_AT_ONCE = 1
"""Submitted archives unpacked at the same time: each takes a worker thread and a core,
so a member admin's flood of submissions waits here instead of taking the relay's
threads from the parts that stop SuperLinks."""


class JobManager:
    """Durable jobs, their SuperLinks and the sites' desired state."""

    def __init__(
        self,
        *,
        workspace: Path,
        routes: RouteTable,
        installs: FlowerInstalls,
        known_sites: frozenset[str] | None = None,
        site_start_timeout: float = 120.0,
        board: Board | None = None,
        exporters: Exporters | None = None,
    ) -> None:
        """``board``: where relays sharing one Redis exchange what their jobs need
        (scale-out); without it this relay answers from its own jobs alone.
        ``exporters``: where the jobs' series go besides the job store (none by default)."""
        self.workspace = workspace
        self._installs = installs
        self.store = JobStore(workspace / "jobs.db")
        self._paths = JobPaths(workspace)
        self._known_sites = known_sites
        self._changed = asyncio.Event()
        """Set when a job or a site's report changes: wakes the scheduler and waiting polls."""
        self._scheduler: asyncio.Task[None] | None = None
        self._closing = False
        self._unpacking = asyncio.Semaphore(UNPACKS_AT_ONCE)
        self.on_event: Callable[[str, str], None] = lambda job_id, text: None
        self.fleet_calls: Callable[[str], int] = lambda job_id: 0
        """The Fleet calls the relay answered for a job (the relay sets it)."""
        self._tracking_dropped: dict[str, int] = {}
        """Per job, client-side records its sites or writers dropped (logged once a job)."""
        self.edge_of: dict[str, str] = {}
        """The edge relay each site behind one is provisioned behind (the relay sets it)."""
        self._sites = SiteTasks(
            store=self.store,
            installs=installs,
            paths=self._paths,
            changed=self._changed,
            on_change=self._site_changed,
        )
        self._runner = JobRunner(
            store=self.store,
            installs=installs,
            routes=routes,
            paths=self._paths,
            sites=self._sites,
            changed=self._changed,
            on_event=lambda job_id, text: self.on_event(job_id, text),
            closing=lambda: self._closing,
            site_start_timeout=site_start_timeout,
            exporters=exporters if exporters is not None else Exporters(),
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

    def superlinks_running(self) -> int:
        return self._runner.superlinks_running()

    def message_lost(self, job_id: str, reason: str) -> None:
        """The relay lost a reply that carried the job's data: fail the job with ``reason``
        rather than let it wait for that data until its time limit."""
        self._runner.break_run(job_id, reason)

    def _summary(self, record: JobRecord) -> JobInfo:
        info = job_info(record)
        info.fleet_calls = self.fleet_calls(record.job_id)
        return info

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

    def last_seen(self) -> dict[str, float]:
        """When each site last polled this relay or, scaled out, any relay."""
        return self._sites.last_seen()

    def site_transport(self, site: str) -> str:
        """The transport ``site`` last reported ("" if it never did)."""
        status = self._sites.status(site)
        return status.transport if status is not None else ""

    def sites(self) -> list[SiteInfo]:
        """Every known site: online or not, the active jobs it is in, and the newest status
        it reported to any relay."""
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
                status=self._sites.status(name),
                via=self.edge_of.get(name, ""),
            )
            for name in sorted(names)
        ]

    def owns(self, job_id: str) -> bool:
        """Whether this relay keeps the job (relays sharing a Redis own what they started)."""
        return self.store.get(job_id) is not None

    def job_list(self) -> list[JobInfo]:
        """This relay's jobs and, with a board, the other relays' jobs."""
        mine = [self._summary(r) for r in self.store.list()]
        known = {j.job_id for j in mine}
        return mine + [j for j in self._sites.others.jobs() if j.job_id not in known]

    def info(self, job_id: str) -> JobInfo:
        """A job's summary, from its record here or from the relay that owns it."""
        record = self.store.get(job_id)
        if record is not None:
            return self._summary(record)
        shared = self._sites.others.job(job_id)
        if shared is None:
            raise UnknownJobError(f"no job {job_id!r}; `flgate job list` shows the jobs")
        return shared[1]

    async def submit(self, peer: Peer, request: SubmitJobRequest) -> JobRecord:
        """Validate and store a job; the error says what to fix.

        All or nothing: the job directory exists only for a job that was stored. The
        archive is unpacked (and its files checked) in a worker thread, one at a time,
        so a hostile archive costs the relay a thread, never its event loop.
        """
        name = check_job_name(request.name, "the job's name") if request.name else ""
        time_limit = (
            check_time_limit(request.time_limit, "the job's time limit")
            if request.time_limit
            else 0.0
        )
        overrides = parse_run_config(request.run_config) if request.run_config else {}
        sites = sorted(set(request.sites))
        known = self._known_sites if self._known_sites is not None else set(self._sites.last_seen())
        unknown = [s for s in sites if s not in known]
        if unknown:
            raise ConfigError(
                f"unknown site(s) {', '.join(unknown)}; known sites: "
                f"{', '.join(sorted(known)) or 'none has connected yet'}"
            )
        job_id = uuid.uuid4().hex[:12]
        job_dir = self.job_dir(job_id)
        async with self._unpacking:
            spec = await self._unpack(request.app_archive, job_dir)
        try:
            record = self._admit(job_id, peer, request, spec, sites, name, time_limit, overrides)
            self.store.add(record)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, job_dir, True)
            raise
        self._changed.set()
        log.info(
            "job submitted", extra={"job": job_id, "by": peer.name, "sites": list(record.sites)}
        )
        return record

    async def _unpack(self, archive: bytes, job_dir: Path) -> JobSpec:
        """The submitted app, unpacked and checked in ``job_dir`` by a worker thread.

        A refusal leaves no ``job_dir`` (the worker removes it). So does a submission
        given up meanwhile (the client went away, the relay stops): the worker is told
        to stop and ``job_dir`` is removed once it has, whatever it got to.
        """
        job_dir.mkdir(parents=True)  # a new id: never another job's directory to remove
        stop = threading.Event()
        work = asyncio.ensure_future(asyncio.to_thread(_unpack_job, archive, job_dir, stop))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            stop.set()
            work.add_done_callback(lambda done: _remove_after(done, job_dir))
            raise

    def _admit(
        self,
        job_id: str,
        peer: Peer,
        request: SubmitJobRequest,
        spec: JobSpec,
        sites: list[str],
        name: str,
        time_limit: float,
        overrides: dict[str, RunConfigValue],
    ) -> JobRecord:
        """The job's record, once its sites are settled; refused when there are too few."""
        if not sites:
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
        release = self._release_for(spec, sites)
        return JobRecord(
            job_id=job_id,
            name=name or spec.name,
            state=SUBMITTED,
            sites=tuple(sites),
            submitted_by=peer.name,
            # quoted as parse_run_config reads it back when the job starts
            run_config=" ".join(f"{k}={_quoted(v)}" for k, v in config.items()),
            time_limit=time_limit or spec.time_limit,
            reason="waiting for its sites",
            runtime={FLOWER_KEY: release},
        )

    def _release_for(self, spec: JobSpec, sites: list[str]) -> str:
        """The Flower release ("x.y.z") the job runs with: the one its job file names,
        else the relay's default; refused when the relay or a site lacks it (a site
        that has not reported its releases yet is checked when it starts the job)."""
        try:
            release = self._installs.choose(spec.flower).version_text
        except ConfigError as exc:
            raise ConfigError(
                f"job {spec.name} needs Flower {spec.flower}, but the relay has "
                f"{', '.join(self._installs.releases)}: start the relay with "
                f"--flower-bin DIR of a Flower {spec.flower} environment"
            ) from exc
        wanted = spec.flower or ".".join(release.split(".")[:2])
        lacking = {
            site: offered
            for site in sites
            if (offered := self._sites.flower_releases(site)) is not None
            and not any(release_matches(wanted, r) for r in offered)
        }
        if lacking:
            raise ConfigError(
                f"job {spec.name} runs with Flower {release}, which "
                + "; ".join(f"site {s} lacks (it has {', '.join(r)})" for s, r in lacking.items())
                + f": install Flower {wanted} there (flgate site start --flower-bin DIR)"
            )
        return release

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

    def metrics(self, job_id: str) -> GetMetricsResponse:
        """The job's metric series as the relay has read them so far, and the job."""
        self._get(job_id)
        points = [
            MetricPoint(tag=p.tag, step=p.step, value=p.value) for p in self.store.points(job_id)
        ]
        return GetMetricsResponse(points=points, job=self.info(job_id))

    def download(self, job_id: str) -> bytes:
        """The job's logs, result and TensorBoard files as .tar.gz bytes."""
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
            for part in ("logs", TENSORBOARD_DIR):
                if (self.job_dir(job_id) / part).is_dir():
                    tar.add(self.job_dir(job_id) / part, arcname=f"{job_id}/{part}")
        return buffer.getvalue()

    # --- site agent operations -----------------------------------------------

    async def poll(self, site: str, request: PollTasksRequest) -> PollTasksResponse:
        """Record the site's view; answer with the jobs it must run (long-poll)."""
        return await self._sites.poll(site, request)

    def ship_logs(self, site: str, request: ShipLogsRequest) -> ShipLogsResponse:
        return self._sites.ship_logs(site, request)

    async def push_tracking(self, site: str, request: PushTrackingRequest) -> PushTrackingResponse:
        """Keep a batch of ``site``'s client-side records of a running job as
        ``<site>/<tag>`` points, after checking every record again (a site is not trusted:
        a bad record refuses the whole batch, and the job goes on). The caller checked
        that ``site`` is part of the job. A batch sent again replaces the same points."""
        record = self._get(request.job_id)
        if record.ended:
            raise JobError(
                f"job {record.job_id} has ended ({record.state}); its client-side records "
                "are refused"
            )
        over = await self._runner.keep_site_points(record.job_id, site, request)
        if request.dropped:
            total = self._tracking_dropped.get(record.job_id, 0)
            self._tracking_dropped[record.job_id] = total + request.dropped
            if not total:
                log.warning(
                    "a site dropped client-side records of a job (over its limits)",
                    extra={"job": record.job_id, "site": site, "dropped": request.dropped},
                )
        return PushTrackingResponse(kept=len(request.points) - over, over_limit=over)

    # --- internals that tests reach for ------------------------------------------

    @property
    def _node_keys(self) -> dict[str, str]:
        return self._sites.node_keys

    @_node_keys.setter
    def _node_keys(self, keys: dict[str, str]) -> None:
        self._sites.node_keys = keys

    async def _register_node_keys(self, record: JobRecord, flwr_home: Path) -> None:
        await self._runner.register_node_keys(record, flwr_home)


def _unpack_job(archive: bytes, job_dir: Path, stop: threading.Event) -> JobSpec:
    """Unpack and check a submitted app in its new job directory (in a worker thread);
    on any refusal the job directory is removed."""
    app_dir = job_dir / "app"
    try:
        unpacked = unpack_app(archive, app_dir, stop=stop)
        spec = JobSpec.load(app_dir, shown_as="the submitted app")
        check_flower_app(app_dir)
    except BaseException:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise
    log.debug("app unpacked", extra={"members": unpacked.members, "bytes": unpacked.bytes})
    return spec


def _remove_after(work: asyncio.Future[JobSpec], job_dir: Path) -> None:
    """Once a given-up unpack has ended (its outcome no longer matters), remove its job
    directory in a worker thread."""
    if not work.cancelled():
        work.exception()  # retrieved: nobody awaits it any more
    asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, job_dir, True)


def _quoted(value: RunConfigValue) -> str:
    return shlex.quote(value) if isinstance(value, str) else str(value)
