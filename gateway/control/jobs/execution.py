"""Running jobs: each on its own SuperLink, from launch (or adoption) to its end.

For each job the runner starts a SuperLink on a free loopback port with its own
database, routes the job's Fleet calls to it, waits until every site of the job runs
its SuperNode, submits the app with ``flwr run`` (with a private ``FLWR_HOME``),
follows it to the end and stops everything. A SuperLink that outlived a relay restart
is adopted and its run followed to the end. A site that reports a failure while the
run goes on (its SuperNode exited) fails the job at once: Flower would wait for that
node's replies until the job's time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from ...core.exceptions import ConfigError, JobError
from ...flower.flwr_cli import (
    final_status,
    flwr_run,
    run_id_from_output,
    run_logs,
    run_status,
    write_flwr_home,
)
from ...flower.install import FlowerInstall, FlowerInstalls
from ...flower.launch import SuperLinkAddresses, launch_superlink
from ...flower.node_auth import write_loopback_tls
from ...flower.process import ManagedProcess, port_open
from ...proto.control_pb2 import PushTrackingRequest, SiteJobState
from ...proto.envelope_pb2 import Dialect
from ...tracking.exporters import Exporters, JobRun
from ...tracking.series import Point, ServerOutput
from .layout import SERVER_LOG, SUPERLINK_LOG, JobPaths
from .node_keys import register_node_keys
from .results import COMPLETED, parse_result
from .series_keeper import SeriesKeeper
from .spec import JobSpec, parse_run_config
from .store import (
    ABORTED,
    DISPATCHED,
    FAILED,
    FINISHED,
    FLOWER_KEY,
    RUNNING,
    JobRecord,
    JobStore,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


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


class SiteReports(Protocol):
    """What a running job needs to know of its sites."""

    def state(self, job_id: str, site: str) -> SiteJobState | None: ...

    def node_key(self, site: str) -> str: ...


@dataclass
class _LiveJob:
    """The in-memory side of a running job."""

    task: asyncio.Task[None] | None = None
    superlink: ManagedProcess | None = None
    abort_reason: str | None = None


class JobRunner:
    """The jobs this relay runs now, each in a task that ends with the job."""

    def __init__(
        self,
        *,
        store: JobStore,
        installs: FlowerInstalls,
        routes: RouteTable,
        paths: JobPaths,
        sites: SiteReports,
        changed: asyncio.Event,
        on_event: Callable[[str, str], None],
        closing: Callable[[], bool],
        site_start_timeout: float,
        exporters: Exporters,
    ) -> None:
        """``changed``: set when a job's state changes, and waited on for the sites' reports;
        ``closing()``: whether the relay shuts down (a job it cancels then fails, not aborts)."""
        self._store = store
        self._installs = installs
        self._routes = routes
        self._paths = paths
        self._sites = sites
        self._changed = changed
        self._on_event = on_event
        self._closing = closing
        self._site_start_timeout = site_start_timeout
        self._exporters = exporters
        self._live: dict[str, _LiveJob] = {}
        self._series = SeriesKeeper(store, exporters)
        self._broken: dict[str, str] = {}
        """Why a running job cannot complete although all its parts run (a lost message)."""

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._live

    def superlinks_running(self) -> int:
        """The jobs' SuperLink processes that are alive now."""
        return sum(1 for live in self._live.values() if live.superlink and live.superlink.alive())

    # --- starting and stopping -----------------------------------------------

    def start(self, record: JobRecord) -> None:
        """Run a submitted job on a new SuperLink."""
        live = _LiveJob()
        self._live[record.job_id] = live
        live.task = asyncio.create_task(self._run(record, live), name=f"job-{record.job_id}")

    async def adopt(self, record: JobRecord) -> None:
        """Carry on with a job whose SuperLink outlived a relay restart, or fail it."""
        pid = int(record.runtime.get("superlink_pid", "0") or 0)
        job_dir = self._paths.job_dir(record.job_id)
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
        fleet = record.runtime.get("fleet", "")
        if (
            superlink is None
            or not (control and fleet)
            or not await port_open(*_host_port(control))
        ):
            if superlink is not None:  # ours, but no longer serving: end it
                await asyncio.to_thread(superlink.stop)
            self._store.update(
                record.job_id,
                state=FAILED,
                reason=f"the relay restarted while the job was {record.state} "
                "and the job's SuperLink did not survive",
            )
            return
        try:
            self._install_of(record)
        except ConfigError as exc:
            await asyncio.to_thread(superlink.stop)
            self._store.update(
                record.job_id,
                state=FAILED,
                reason=f"the relay restarted without the job's Flower release: {exc}",
            )
            return
        # Routed here, before the relay listens again: the sites' retries arrive
        # the moment it does, and a 404 for this job would make Flower give up.
        self._route(record, fleet)
        live = _LiveJob(superlink=superlink)
        self._live[record.job_id] = live
        live.task = asyncio.create_task(
            self._run(record, live, adopted=True), name=f"job-{record.job_id}"
        )
        log.warning(
            "adopted a running job after a relay restart",
            extra={"job": record.job_id, "superlink_pid": pid},
        )

    def break_run(self, job_id: str, reason: str) -> None:
        """Fail a job running here with ``reason`` as soon as its run is watched."""
        if job_id in self._live and job_id not in self._broken:
            self._broken[job_id] = reason
            log.error("a running job cannot complete", extra={"job": job_id, "reason": reason})
            self._changed.set()

    async def abort(self, job_id: str, reason: str) -> bool:
        """End a job running here with ``reason``; False when it does not run here."""
        live = self._live.get(job_id)
        if live is None or live.task is None:
            return False
        live.abort_reason = reason
        live.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await live.task
        return True

    async def stop_all(self, reason: str) -> None:
        """End every job running here with ``reason`` (the relay shuts down)."""
        for job_id, live in list(self._live.items()):
            live.abort_reason = reason
            if live.task is not None:
                live.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await live.task
            self._live.pop(job_id, None)

    # --- one job ---------------------------------------------------------------

    async def _run(self, record: JobRecord, live: _LiveJob, *, adopted: bool = False) -> None:
        """Run a job to its end; ``adopted``: its SuperLink survived a relay restart."""
        job_id = record.job_id
        job_dir = self._paths.job_dir(job_id)
        logs = job_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        flwr_home = write_flwr_home(job_dir / "flwr-home", "0.0.0.0:0")
        routed = adopted  # adopt() routed it already
        exporting = False
        try:
            spec = JobSpec.load(job_dir / "app")
            self._exporters.start(_job_run(record, job_dir, spec))
            exporting = True
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
                    self._install_of(record),
                    job_dir / "superlink",
                    tls=tls,
                    node_auth=spec.node_auth,
                )
                live.superlink = superlink
                self._route(record, addresses.fleet)
                routed = True
            if adopted and record.run_id:
                await unless_raised(
                    self._until_the_run_breaks(record),
                    self._follow_adopted_run(record, addresses.control),
                )
                return
            assert live.superlink is not None
            flwr_home = write_flwr_home(
                job_dir / "flwr-home",
                addresses.control,
                root_certificates=self.superlink_ca(job_id),
            )
            if spec.node_auth and not adopted:  # an adopted SuperLink keeps its registrations
                await self.register_node_keys(record, flwr_home)
            self._store.update(
                job_id,
                state=DISPATCHED,
                reason="starting SuperNodes on its sites",
                runtime={
                    **record.runtime,
                    "superlink_pid": str(live.superlink.pid),
                    "control": addresses.control,
                    "fleet": addresses.fleet,
                    "node_auth": "1" if spec.node_auth else "",
                },
            )
            self._changed.set()
            await self._wait_for_sites(record)
            config = parse_run_config(record.run_config) if record.run_config else {}
            server_log = (logs / f"{SERVER_LOG}.log").open("a", buffering=1)
            reader = ServerOutput()

            def on_line(line: str) -> None:
                server_log.write(line + "\n")
                current = self._store.require(job_id)
                if not current.run_id and (run_id := run_id_from_output(line)):
                    self._store.update(job_id, state=RUNNING, run_id=run_id, reason="")
                self._read_output(job_id, reader, line)

            try:
                exit_code, output = await asyncio.wait_for(
                    unless_raised(
                        self._until_the_run_breaks(record),
                        flwr_run(
                            self._install_of(record),
                            spec.app_dir,
                            flwr_home,
                            run_config=config,
                            on_line=on_line,
                        ),
                    ),
                    timeout=record.time_limit,
                )
            finally:
                server_log.close()
                self._keep_points(job_id, reader.close())
            run_id = run_id_from_output(output)
            status = (
                await final_status(self._install_of(record), flwr_home, run_id) if run_id else None
            )
            if self._store.require(job_id).state == DISPATCHED:
                self._store.update(job_id, state=RUNNING)
            self._record_outcome(job_id, exit_code, status, output)
        except asyncio.CancelledError:
            reason = live.abort_reason or "cancelled"
            state = ABORTED if live.abort_reason and not self._closing() else FAILED
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
                _copy(live.superlink.log_path, self._paths.log_path(job_id, SUPERLINK_LOG))
            if exporting:
                self._series.end(job_id, self._store.require(job_id).state)
            self._live.pop(job_id, None)
            self._broken.pop(job_id, None)
            self._changed.set()
            self._on_event(job_id, f"ended: {self._store.require(job_id).state}")

    async def _follow_adopted_run(self, record: JobRecord, control: str) -> None:
        """Follow a run that started before a relay restart, from the SuperLink's state."""
        job_id, run_id = record.job_id, record.run_id
        flwr_home = write_flwr_home(
            self._paths.job_dir(job_id) / "flwr-home",
            control,
            root_certificates=self.superlink_ca(job_id),
        )
        self._on_event(job_id, f"following run {run_id} after a relay restart")
        deadline = record.created + record.time_limit
        status = None
        while time.time() < deadline:
            status = await run_status(self._install_of(record), flwr_home, run_id)
            if status is not None and status.startswith("finished"):
                break
            await asyncio.sleep(2.0)
        else:
            raise asyncio.TimeoutError
        output = await run_logs(self._install_of(record), flwr_home, run_id)
        self._paths.log_path(job_id, SERVER_LOG).write_text(output + "\n")
        # The whole run's output, read again: points already kept are replaced as they were.
        reader = ServerOutput()
        for line in output.splitlines():
            self._read_output(job_id, reader, line)
        self._keep_points(job_id, reader.close())
        self._record_outcome(job_id, 0, status, output)

    def _read_output(self, job_id: str, reader: ServerOutput, line: str) -> None:
        """One line of the ServerApp's output: the round it starts, the points it ends."""
        before = (reader.round, reader.rounds)
        points = reader.feed(line)
        if (reader.round, reader.rounds) != before:
            self._store.update(job_id, round=reader.round, rounds=reader.rounds)
            total = f"/{reader.rounds}" if reader.rounds else ""
            if reader.round != before[0]:
                self._on_event(job_id, f"round {reader.round}{total}")
        self._keep_points(job_id, points)

    def _keep_points(self, job_id: str, points: list[Point]) -> int:
        """Store and export ``points``; return how many the full series dropped."""
        return self._series.keep(job_id, points)

    async def keep_site_points(self, job_id: str, site: str, request: PushTrackingRequest) -> int:
        """A site's batch of client-side records, checked and kept as ``<site>/<tag>``
        through the same path as the ServerApp's points, in worker threads (see
        :mod:`.series_keeper`); return how many the full series dropped. Refused with
        :class:`ConfigError` for a bad record, and with :class:`JobError` unless the
        job runs here now (not before, not after)."""
        points = await self._series.check_site(site, request)
        if job_id not in self._live:
            raise JobError(f"job {job_id} is not running on this relay; its records are refused")
        return await self._series.keep_site(job_id, points)

    def _route(self, record: JobRecord, fleet: str) -> None:
        """Send the job's Fleet calls from its sites to its SuperLink's ``fleet`` address."""
        self._routes.add_job(
            record.job_id,
            sites=frozenset(record.sites),
            dialect=self._install_of(record).dialect,
            superlink=fleet,
            superlink_ca=self.superlink_ca(record.job_id),
        )

    def _install_of(self, record: JobRecord) -> FlowerInstall:
        """The Flower installation the job runs with (chosen when it was submitted)."""
        return self._installs.choose(record.runtime.get(FLOWER_KEY, ""))

    def superlink_ca(self, job_id: str) -> Path | None:
        """The CA of the job's SuperLink when it serves TLS (jobs with node auth), else None."""
        ca = self._paths.job_dir(job_id) / "superlink" / "tls" / "ca.pem"
        return ca if ca.is_file() else None

    async def register_node_keys(self, record: JobRecord, flwr_home: Path) -> None:
        """Admit the job's sites' Flower node keys to its SuperLink (jobs with node auth)."""
        await register_node_keys(
            self._install_of(record),
            flwr_home,
            sites=record.sites,
            key_of=self._sites.node_key,
            key_dir=self._paths.job_dir(record.job_id) / "node-keys",
            on_event=lambda text: self._on_event(record.job_id, text),
        )

    def _record_outcome(self, job_id: str, exit_code: int, status: str | None, output: str) -> None:
        """Finished with the app's result when the SuperLink says completed, else failed."""
        if exit_code == 0 and status == COMPLETED:
            result = parse_result(output)
            self._store.update(
                job_id,
                state=FINISHED,
                reason=COMPLETED,
                result_json=json.dumps(result) if result else "",
            )
        else:
            self._store.update(
                job_id, state=FAILED, reason=_failure_reason(exit_code, status, output)
            )

    def _end(self, job_id: str, state: str, reason: str) -> None:
        """Record how the job ended, unless it already has."""
        if not self._store.require(job_id).ended:
            self._store.update(job_id, state=state, reason=reason)

    async def _wait_for_sites(self, record: JobRecord) -> None:
        """Return once every site of the job runs its SuperNode; raise if one cannot."""
        deadline = time.monotonic() + self._site_start_timeout
        while True:
            if failed := self._failed_sites(record):
                raise JobError(f"a site could not start the job: {failed}")
            states = {s: self._sites.state(record.job_id, s) for s in record.sites}
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

    async def _until_the_run_breaks(self, record: JobRecord) -> None:
        """Return never; raise once a site of the running job reports a failure, or
        the relay lost a message of the run (:meth:`break_run`)."""
        while True:
            if failed := self._failed_sites(record):
                raise JobError(f"a site failed during the run: {failed}")
            if broken := self._broken.get(record.job_id):
                raise JobError(f"a message of the run was lost: {broken}")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 1.0)

    def _failed_sites(self, record: JobRecord) -> str:
        """What the job's sites that report a failure said ("" when none does)."""
        states = {s: self._sites.state(record.job_id, s) for s in record.sites}
        return "; ".join(
            f"{site}: {state.detail}"
            for site, state in states.items()
            if state is not None and state.state == "failed"
        )


def _job_run(record: JobRecord, job_dir: Path, spec: JobSpec) -> JobRun:
    """The job as its exporters see it."""
    config = parse_run_config(record.run_config) if record.run_config else {}
    return JobRun(
        job_id=record.job_id,
        name=record.name,
        job_dir=job_dir,
        sites=record.sites,
        run_config={key: str(value) for key, value in config.items()},
        flower=record.runtime.get(FLOWER_KEY, ""),
        submitted_by=record.submitted_by,
        tracking_uri=spec.mlflow_tracking_uri,
    )


async def unless_raised(watch: Awaitable[None], work: Awaitable[T]) -> T:
    """``work``'s result, unless ``watch`` raises first: then ``work`` is cancelled
    and ``watch``'s error raised. Neither outlives the call."""
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(watch)
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
        if work_task.done():
            return work_task.result()
        watch_task.result()
        raise RuntimeError("the watch ended without an error")
    finally:
        for task in (work_task, watch_task):
            task.cancel()
        await asyncio.gather(work_task, watch_task, return_exceptions=True)


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
