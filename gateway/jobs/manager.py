"""The relay's job manager: accept jobs, run each on its own SuperLink, tell sites what to run.

For each job the manager unpacks the app into the job's directory, starts a
SuperLink on a free loopback port with its own database, routes the job's Fleet
calls to it, waits until every site of the job runs its SuperNode, submits the
app with ``flwr run`` (with a private ``FLWR_HOME``), follows it to the end and
stops everything. Sites learn what to run by long-polling: each poll returns the
full set of jobs the site must run now, so a restarted site (or relay) simply
reconciles.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..exceptions import ConfigError, GatewayError, JobError
from ..flower.install import FlowerInstall
from ..flower.node_auth import (
    fingerprint,
    load_public_key,
    openssh_public_key,
    write_loopback_tls,
)
from ..flower.process import ManagedProcess, port_open
from ..flower.runner import (
    SuperLinkAddresses,
    final_status,
    flwr_run,
    launch_superlink,
    register_supernode,
    run_id_from_output,
    run_logs,
    run_status,
    write_flwr_home,
)
from ..identity import Peer
from ..proto.control_pb2 import (
    GetLogsResponse,
    JobInfo,
    PollTasksRequest,
    PollTasksResponse,
    ShipLogsRequest,
    ShipLogsResponse,
    SiteInfo,
    SiteJob,
    SiteJobState,
    SubmitJobRequest,
)
from ..proto.envelope_pb2 import Dialect
from ..relay.board import Board, BoardView, Report, Share, newest
from .archive import unpack_app
from .local_run import COMPLETED, ROUND_RE, parse_result
from .spec import JobSpec, parse_run_config
from .store import (
    ABORTED,
    ACTIVE_STATES,
    DISPATCHED,
    FAILED,
    FINISHED,
    RUNNING,
    SUBMITTED,
    JobRecord,
    JobStore,
)

log = logging.getLogger(__name__)

SERVER_LOG = "server"
SUPERLINK_LOG = "superlink"
SITE_ONLINE_SECONDS = 60.0
"""A site that polled within this many seconds counts as online."""
BOARD_INTERVAL = 1.0
"""Seconds between exchanges of shares with the other relays (scale-out)."""
REPORT_TTL = 600.0
"""Site reports of a job are forgotten this long after the last one."""
SHARED_JOBS = 500
"""The newest jobs of this relay that other relays list."""


def job_info(record: JobRecord) -> JobInfo:
    return JobInfo(
        job_id=record.job_id,
        name=record.name,
        state=record.state,
        reason=record.reason,
        sites=list(record.sites),
        submitted_by=record.submitted_by,
        created=record.created,
        updated=record.updated,
        run_id=record.run_id,
        round=record.round,
        rounds=record.rounds,
        result_json=record.result_json,
        run_config=record.run_config,
    )


class RouteTable(Protocol):
    """What the manager needs of the relay: add and remove a job's Fleet route."""

    def add_job(
        self,
        job_id: str,
        *,
        sites: frozenset[str],
        dialect: Dialect,
        superlink: str,
        superlink_ca: Path | None = None,
    ) -> None: ...

    async def remove_job(self, job_id: str) -> None: ...


@dataclass
class _LiveJob:
    """The in-memory side of a running job."""

    task: asyncio.Task[None] | None = None
    superlink: ManagedProcess | None = None
    abort_reason: str | None = None


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
        self._routes = routes
        self._install = install
        self._known_sites = known_sites
        self._site_start_timeout = site_start_timeout
        self._online: dict[str, float] = {}
        self._node_keys: dict[str, str] = {}  # site -> Flower node public key it reported
        self._reported: dict[str, dict[str, Report]] = {}
        """Per job, per site: the latest state the site reported to this relay."""
        self._board = board
        self._others = BoardView()
        self._board_task: asyncio.Task[None] | None = None
        self._live: dict[str, _LiveJob] = {}
        self._changed = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._closing = False
        self.on_event: Callable[[str, str], None] = lambda job_id, text: None

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Find jobs again after a restart, then schedule."""
        for record in self.store.list():
            if record.state in ACTIVE_STATES and record.state != SUBMITTED:
                await self._adopt(record)
        self._scheduler = asyncio.create_task(self._schedule_forever(), name="job-scheduler")
        if self._board is not None:
            self._board_task = asyncio.create_task(self._share_forever(), name="relay-board")

    async def aclose(self) -> None:
        self._closing = True
        for task in (self._scheduler, self._board_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._board is not None:
            await self._board.aclose()
        for job_id, live in list(self._live.items()):
            live.abort_reason = "the relay shut down"
            if live.task is not None:
                live.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await live.task
            self._live.pop(job_id, None)
        self.store.close()

    async def _adopt(self, record: JobRecord) -> None:
        """Carry on with a job whose SuperLink outlived a relay restart, or fail it."""
        pid = int(record.runtime.get("superlink_pid", "0") or 0)
        job_dir = self.job_dir(record.job_id)
        superlink = (
            ManagedProcess.adopt(
                "superlink",
                pid,
                log_path=job_dir / "superlink" / "superlink.log",
                marker=str(job_dir),
            )
            if pid > 0
            else None
        )
        control = record.runtime.get("control", "")
        if superlink is None or not control or not await port_open(*_host_port(control)):
            if superlink is not None:  # ours, but no longer serving: end it
                await asyncio.to_thread(superlink.stop)
            self.store.update(
                record.job_id,
                state=FAILED,
                reason=f"the relay restarted while the job was {record.state} "
                "and the job's SuperLink did not survive",
            )
            return
        live = _LiveJob(superlink=superlink)
        self._live[record.job_id] = live
        live.task = asyncio.create_task(
            self._run_job(record, live, adopted=True), name=f"job-{record.job_id}"
        )
        log.warning(
            "adopted a running job after a relay restart",
            extra={"job": record.job_id, "superlink_pid": pid},
        )

    # --- paths ---------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        return self.workspace / "jobs" / job_id

    def log_path(self, job_id: str, source: str) -> Path:
        return self.job_dir(job_id) / "logs" / f"{source}.log"

    # --- admin operations ----------------------------------------------------

    def _last_seen(self) -> dict[str, float]:
        """When each site last polled this relay or, with a board, any relay."""
        seen = self._others.seen()
        for site, when in self._online.items():
            seen[site] = max(when, seen.get(site, 0.0))
        return seen

    def online_sites(self) -> list[str]:
        now = time.time()
        return sorted(
            s for s, when in self._last_seen().items() if now - when < SITE_ONLINE_SECONDS
        )

    def sites(self) -> list[SiteInfo]:
        """Every known site: online or not, and the active jobs it is in."""
        seen = self._last_seen()
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
        return mine + [j for j in self._others.jobs() if j.job_id not in known]

    def info(self, job_id: str) -> JobInfo:
        """A job's summary, from its record here or from the relay that owns it."""
        record = self.store.get(job_id)
        if record is not None:
            return job_info(record)
        shared = self._others.job(job_id)
        if shared is None:
            raise JobError(f"no job {job_id!r}; `flgate job list` shows the jobs")
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
        known = self._known_sites if self._known_sites is not None else set(self._last_seen())
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
        live = self._live.get(job_id)
        if live is not None and live.task is not None:
            live.abort_reason = reason
            live.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await live.task
        else:
            self.store.update(job_id, state=ABORTED, reason=reason)
        self._changed.set()
        return self._get(job_id)

    def _get(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        if record is None:
            raise JobError(f"no job {job_id!r}; `flgate job list` shows the jobs")
        return record

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

    def _desired(self, site: str) -> list[SiteJob]:
        """What ``site`` must run: this relay's jobs' tasks and the other relays'."""
        mine = self._my_tasks(site)
        ids = {task.job_id for task in mine}
        return mine + [task for task in self._others.tasks(site) if task.job_id not in ids]

    def _my_tasks(self, site: str) -> list[SiteJob]:
        desired = []
        for record in self.store.list():
            if record.state not in (DISPATCHED, RUNNING) or site not in record.sites:
                continue
            desired.append(
                SiteJob(
                    job_id=record.job_id,
                    dialect=self._install.dialect,
                    flower_version=self._install.version_text,
                    partition_id=record.sites.index(site),
                    num_partitions=len(record.sites),
                    node_auth=record.runtime.get("node_auth") == "1",
                )
            )
        return desired

    async def poll(self, site: str, request: PollTasksRequest) -> PollTasksResponse:
        """Record the site's view; answer with the jobs it must run (long-poll)."""
        self._online[site] = time.time()
        if request.flower_node_public_key:  # bound to the certificate's site name, never claimed
            self._node_keys[site] = request.flower_node_public_key
        self._record_site_states(site, request.jobs)
        current = {j.job_id for j in request.jobs if j.state in ("starting", "running")}
        wait = min(request.wait_ms, 30_000) / 1000
        deadline = time.monotonic() + wait
        while True:
            desired = self._desired(site)
            if {d.job_id for d in desired} != current or time.monotonic() >= deadline:
                break
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - time.monotonic()))
            self._online[site] = time.time()
        return PollTasksResponse(desired=desired)

    def _record_site_states(self, site: str, states: Iterable[SiteJobState]) -> None:
        now = time.time()
        for state in states:
            by_site = self._reported.setdefault(state.job_id, {})
            previous = by_site.get(site)
            by_site[site] = (now, state)
            if previous is None or previous[1].state != state.state:
                if state.job_id in self._live:
                    self.on_event(state.job_id, f"{site}: {state.state} {state.detail}".strip())
                self._changed.set()

    def _site_state(self, job_id: str, site: str) -> SiteJobState | None:
        """The latest state ``site`` reported for the job, to this relay or another."""
        return newest((self._reported.get(job_id, {}).get(site), self._others.report(job_id, site)))

    # --- sharing with other relays (scale-out over Redis) ----------------------

    def _share(self) -> Share:
        now = time.time()
        for job_id in [
            j
            for j, by in self._reported.items()
            if all(now - when > REPORT_TTL for when, _ in by.values())
        ]:
            del self._reported[job_id]
        records = self.store.list()
        sites = {site for r in records if r.state in (DISPATCHED, RUNNING) for site in r.sites}
        assert self._board is not None
        return Share(
            relay=self._board.relay,
            written=now,
            tasks={site: self._my_tasks(site) for site in sorted(sites)},
            jobs=[job_info(r) for r in records[-SHARED_JOBS:]],
            seen=dict(self._online),
            reports=self._reported,
            node_keys=dict(self._node_keys),
        )

    async def _share_forever(self) -> None:
        """Publish this relay's share and take the others' about once a second."""
        assert self._board is not None
        failing = False
        while not self._closing:
            try:
                others = await self._board.exchange(self._share())
            except GatewayError as exc:
                if not failing:
                    log.warning(
                        "relay board unreachable; answering from own jobs",
                        extra={"error": str(exc)},
                    )
                failing = True
            else:
                if failing:
                    log.info("relay board reachable again")
                failing = False
                changed = others.task_ids() != self._others.task_ids()
                self._others = others
                if changed:  # a poll waiting for new tasks answers now
                    self._changed.set()
            await asyncio.sleep(BOARD_INTERVAL)

    def ship_logs(self, site: str, request: ShipLogsRequest) -> ShipLogsResponse:
        record = self._get(request.job_id)
        if site not in record.sites:
            raise JobError(f"site {site!r} is not part of job {request.job_id}")
        path = self.log_path(request.job_id, site)
        path.parent.mkdir(parents=True, exist_ok=True)
        size = path.stat().st_size if path.exists() else 0
        if request.offset == size and request.data:
            with path.open("ab") as handle:
                handle.write(request.data)
            size += len(request.data)
        return ShipLogsResponse(next_offset=size)

    # --- running jobs ----------------------------------------------------------

    async def _schedule_forever(self) -> None:
        while not self._closing:
            online = set(self.online_sites())
            for record in self.store.list():
                startable = record.state == SUBMITTED and set(record.sites) <= online
                if startable and record.job_id not in self._live:
                    live = _LiveJob()
                    self._live[record.job_id] = live
                    live.task = asyncio.create_task(
                        self._run_job(record, live), name=f"job-{record.job_id}"
                    )
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 1.0)

    async def _run_job(self, record: JobRecord, live: _LiveJob, *, adopted: bool = False) -> None:
        """Run a job to its end; ``adopted``: its SuperLink survived a relay restart."""
        job_id = record.job_id
        job_dir = self.job_dir(job_id)
        logs = job_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        flwr_home = write_flwr_home(job_dir / "flwr-home", "0.0.0.0:0")
        routed = False
        try:
            spec = JobSpec.load(job_dir / "app")
            if adopted:
                addresses = SuperLinkAddresses(
                    control=record.runtime["control"], fleet=record.runtime["fleet"]
                )
            else:
                # Flower refuses node authentication without TLS: such a SuperLink serves TLS.
                tls = (
                    write_loopback_tls(job_dir / "superlink" / "tls", name="superlink")
                    if spec.node_auth
                    else None
                )
                superlink, addresses = await launch_superlink(
                    self._install, job_dir / "superlink", tls=tls, node_auth=spec.node_auth
                )
                live.superlink = superlink
            ca = self._superlink_ca(job_id)
            self._routes.add_job(
                job_id,
                sites=frozenset(record.sites),
                dialect=self._install.dialect,
                superlink=addresses.fleet,
                superlink_ca=ca,
            )
            routed = True
            if adopted and record.run_id:
                await self._follow_adopted_run(record, addresses.control)
                return
            assert live.superlink is not None
            flwr_home = write_flwr_home(
                job_dir / "flwr-home", addresses.control, root_certificates=ca
            )
            if spec.node_auth and not adopted:  # an adopted SuperLink keeps its registrations
                await self._register_node_keys(record, flwr_home)
            self.store.update(
                job_id,
                state=DISPATCHED,
                reason="starting SuperNodes on its sites",
                runtime={
                    "superlink_pid": str(live.superlink.pid),
                    "control": addresses.control,
                    "fleet": addresses.fleet,
                    "node_auth": "1" if spec.node_auth else "",
                },
            )
            self._changed.set()
            await self._wait_for_sites(record, live)
            config = parse_run_config(record.run_config) if record.run_config else {}
            server_log = (logs / f"{SERVER_LOG}.log").open("a", buffering=1)

            def on_line(line: str) -> None:
                server_log.write(line + "\n")
                current = self._get(job_id)
                if not current.run_id and (run_id := run_id_from_output(line)):
                    self.store.update(job_id, state=RUNNING, run_id=run_id, reason="")
                match = ROUND_RE.search(line)
                if match:
                    self.store.update(job_id, round=int(match.group(1)), rounds=int(match.group(2)))
                    self.on_event(job_id, f"round {match.group(1)}/{match.group(2)}")

            try:
                exit_code, output = await asyncio.wait_for(
                    flwr_run(
                        self._install, spec.app_dir, flwr_home, run_config=config, on_line=on_line
                    ),
                    timeout=record.time_limit,
                )
            finally:
                server_log.close()
            run_id = run_id_from_output(output)
            status = await final_status(self._install, flwr_home, run_id) if run_id else None
            if self._get(job_id).state == DISPATCHED:
                self.store.update(job_id, state=RUNNING)
            self._record_outcome(job_id, exit_code, status, output)
        except asyncio.CancelledError:
            reason = live.abort_reason or "cancelled"
            state = ABORTED if live.abort_reason and not self._closing else FAILED
            self._end(job_id, state, reason)
            raise
        except asyncio.TimeoutError:
            self._end(
                job_id, FAILED, f"the job exceeded its time limit of {record.time_limit:.0f} s"
            )
        except (JobError, ConfigError, OSError) as exc:
            self._end(job_id, FAILED, str(exc))
        finally:
            if routed:
                await self._routes.remove_job(job_id)
            if live.superlink is not None:
                await asyncio.to_thread(live.superlink.stop)
                _copy(live.superlink.log_path, self.log_path(job_id, SUPERLINK_LOG))
            self._live.pop(job_id, None)
            self._changed.set()
            self.on_event(job_id, f"ended: {self._get(job_id).state}")

    async def _follow_adopted_run(self, record: JobRecord, control: str) -> None:
        """Follow a run that started before a relay restart, from the SuperLink's state."""
        job_id, run_id = record.job_id, record.run_id
        flwr_home = write_flwr_home(
            self.job_dir(job_id) / "flwr-home",
            control,
            root_certificates=self._superlink_ca(job_id),
        )
        self.on_event(job_id, f"following run {run_id} after a relay restart")
        deadline = record.created + record.time_limit
        status = None
        while time.time() < deadline:
            status = await run_status(self._install, flwr_home, run_id)
            if status is not None and status.startswith("finished"):
                break
            await asyncio.sleep(2.0)
        else:
            raise asyncio.TimeoutError
        output = await run_logs(self._install, flwr_home, run_id)
        (self.job_dir(job_id) / "logs" / f"{SERVER_LOG}.log").write_text(output + "\n")
        self._record_outcome(job_id, 0, status, output)

    def _superlink_ca(self, job_id: str) -> Path | None:
        """The CA of the job's SuperLink when it serves TLS (jobs with node auth), else None."""
        ca = self.job_dir(job_id) / "superlink" / "tls" / "ca.pem"
        return ca if ca.is_file() else None

    async def _register_node_keys(self, record: JobRecord, flwr_home: Path) -> None:
        """Register each site's Flower node key with the job's SuperLink before any
        SuperNode starts (Flower refuses self-registration when node auth is on).

        A key comes from the polls of the site that the relay authenticated by its
        certificate, so a site can only bring its own key; a key that two sites
        report is refused rather than registered for whichever came first.
        """
        key_dir = self.job_dir(record.job_id) / "node-keys"
        key_dir.mkdir(parents=True, exist_ok=True)
        owners: dict[str, str] = {}
        files: dict[str, Path] = {}
        for index, site in enumerate(record.sites):
            line = self._node_keys.get(site) or self._others.node_keys().get(site, "")
            if not line:
                raise JobError(
                    f"the job uses Flower's node authentication but site {site} reported no "
                    "node key; start the site with --flower-node-key PATH"
                )
            try:
                key = load_public_key(line)
            except ConfigError as exc:
                raise JobError(f"site {site} reported an unusable Flower node key: {exc}") from exc
            key_id = fingerprint(key)
            if key_id in owners:
                raise JobError(
                    f"sites {owners[key_id]} and {site} reported the same Flower node key "
                    f"({key_id}); every site needs a key of its own"
                )
            owners[key_id] = site
            files[site] = key_dir / f"{index}.pub"
            files[site].write_text(openssh_public_key(key) + "\n")
        # One `flwr` process per key, at once: each spends seconds importing Flower.
        results = await asyncio.gather(
            *(register_supernode(self._install, flwr_home, f, name=s) for s, f in files.items()),
            return_exceptions=True,
        )
        for (key_id, site), result in zip(owners.items(), results, strict=True):
            if isinstance(result, BaseException):
                raise result
            self.on_event(record.job_id, f"{site}: node key {key_id} registered as node {result}")

    def _record_outcome(self, job_id: str, exit_code: int, status: str | None, output: str) -> None:
        """Finished with the app's result when the SuperLink says completed, else failed."""
        if exit_code == 0 and status == COMPLETED:
            result = parse_result(output)
            self.store.update(
                job_id,
                state=FINISHED,
                reason=COMPLETED,
                result_json=json.dumps(result) if result else "",
            )
        else:
            self.store.update(
                job_id, state=FAILED, reason=_failure_reason(exit_code, status, output)
            )

    def _end(self, job_id: str, state: str, reason: str) -> None:
        current = self._get(job_id)
        if not current.ended:
            self.store.update(job_id, state=state, reason=reason)

    async def _wait_for_sites(self, record: JobRecord, live: _LiveJob) -> None:
        deadline = time.monotonic() + self._site_start_timeout
        while True:
            states = {s: self._site_state(record.job_id, s) for s in record.sites}
            failed = {s: st for s, st in states.items() if st is not None and st.state == "failed"}
            if failed:
                detail = "; ".join(f"{s}: {st.detail}" for s, st in failed.items())
                raise JobError(f"a site could not start the job: {detail}")
            if all(st is not None and st.state == "running" for st in states.values()):
                return
            if time.monotonic() > deadline:
                waiting = [s for s, st in states.items() if st is None or st.state != "running"]
                raise JobError(
                    f"site(s) {', '.join(waiting)} did not start their SuperNode within "
                    f"{self._site_start_timeout:.0f} s"
                )
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 1.0)


_EXCEPTION_RE = re.compile(r"^\s*[\w.]+(?:Error|Exception): ")


def _failure_reason(exit_code: int, status: str | None, output: str) -> str:
    """Why a run failed, with the ServerApp's own error line when there is one."""
    lines = output.splitlines()
    raised = [line.strip() for line in lines if _EXCEPTION_RE.match(line)]
    errors = raised or [line.strip() for line in lines if "ERROR" in line]
    detail = f": {errors[-1][:300]}" if errors else ""
    if status:
        return f"run {status}{detail}"
    return f"flwr run exited {exit_code}{detail}"


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _copy(source: Path, target: Path) -> None:
    with contextlib.suppress(OSError):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
