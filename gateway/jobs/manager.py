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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..exceptions import ConfigError, JobError
from ..flower.install import FlowerInstall
from ..flower.process import ManagedProcess, port_open
from ..flower.runner import (
    final_status,
    SuperLinkAddresses,
    flwr_run,
    run_id_from_output,
    run_logs,
    run_status,
    launch_superlink,
    write_flwr_home,
)
from ..identity import Peer
from ..proto.control_pb2 import (
    GetLogsResponse,
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


class RouteTable(Protocol):
    """What the manager needs of the relay: add and remove a job's Fleet route."""

    def add_job(
        self, job_id: str, *, sites: frozenset[str], dialect: Dialect, superlink: str
    ) -> None: ...

    async def remove_job(self, job_id: str) -> None: ...


@dataclass
class _LiveJob:
    """The in-memory side of a running job."""

    task: asyncio.Task[None] | None = None
    superlink: ManagedProcess | None = None
    abort_reason: str | None = None
    site_states: dict[str, SiteJobState] = field(default_factory=dict)


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
    ) -> None:
        self.workspace = workspace
        self.store = JobStore(workspace / "jobs.db")
        self._routes = routes
        self._install = install
        self._known_sites = known_sites
        self._site_start_timeout = site_start_timeout
        self._online: dict[str, float] = {}
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

    async def aclose(self) -> None:
        self._closing = True
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
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

    def online_sites(self) -> list[str]:
        now = time.time()
        return sorted(s for s, seen in self._online.items() if now - seen < SITE_ONLINE_SECONDS)

    def sites(self) -> list[SiteInfo]:
        """Every known site: online or not, and the active jobs it is in."""
        names = set(self._online) | set(self._known_sites or ())
        active = [r for r in self.store.list() if r.state in ACTIVE_STATES]
        now = time.time()
        return [
            SiteInfo(
                name=name,
                last_seen=self._online.get(name, 0.0),
                online=now - self._online.get(name, 0.0) < SITE_ONLINE_SECONDS,
                jobs=[r.job_id for r in active if name in r.sites],
            )
            for name in sorted(names)
        ]

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
        known = self._known_sites if self._known_sites is not None else set(self._online)
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
                )
            )
        return desired

    async def poll(self, site: str, request: PollTasksRequest) -> PollTasksResponse:
        """Record the site's view; answer with the jobs it must run (long-poll)."""
        self._online[site] = time.time()
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
        for state in states:
            live = self._live.get(state.job_id)
            if live is not None:
                previous = live.site_states.get(site)
                live.site_states[site] = state
                if previous is None or previous.state != state.state:
                    self.on_event(state.job_id, f"{site}: {state.state} {state.detail}".strip())
                    self._changed.set()

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
            if adopted:
                addresses = SuperLinkAddresses(
                    control=record.runtime["control"], fleet=record.runtime["fleet"]
                )
            else:
                superlink, addresses = await launch_superlink(self._install, job_dir / "superlink")
                live.superlink = superlink
            self._routes.add_job(
                job_id,
                sites=frozenset(record.sites),
                dialect=self._install.dialect,
                superlink=addresses.fleet,
            )
            routed = True
            if adopted and record.run_id:
                await self._follow_adopted_run(record, addresses.control)
                return
            assert live.superlink is not None
            self.store.update(
                job_id,
                state=DISPATCHED,
                reason="starting SuperNodes on its sites",
                runtime={
                    "superlink_pid": str(live.superlink.pid),
                    "control": addresses.control,
                    "fleet": addresses.fleet,
                },
            )
            self._changed.set()
            await self._wait_for_sites(record, live)
            flwr_home = write_flwr_home(job_dir / "flwr-home", addresses.control)
            spec = JobSpec.load(job_dir / "app")
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
        flwr_home = write_flwr_home(self.job_dir(job_id) / "flwr-home", control)
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
            states = {s: live.site_states.get(s) for s in record.sites}
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
