"""The site agent: dial the relay, learn which jobs to run, run their SuperNodes.

The agent long-polls the relay with its view of its jobs and gets back the set
of jobs it must run; it reconciles (start what is missing, stop what is no
longer wanted), so restarts of either side need no special protocol. For each
job it opens an LGS on loopback and starts ``flower-supernode`` against it with
``partition-id``, ``num-partitions`` and ``site-name`` in its node config, and
ships the SuperNode's log to the relay. The site never accepts a connection
from outside: its LGSs and its tracking receiver (:mod:`.site_tracking`, which
gives each SuperNode ``FLGATE_TRACKING_URL`` and a token of the job's own, so its
ClientApps' ``SummaryWriter`` records reach the relay) listen on loopback only.

Each poll also reports the site's status: its transport, its Flower release, its
round trip to the relay and its Fleet calls and errors of the last minute. The round
trip costs no call of its own: the relay says how long it held the long-poll, and the
rest of the time the poll took is the round trip, reported on the next poll.

Each job's LGS port and SuperNode pid are written to the job's directory, so an
agent that was killed and restarted adopts the SuperNodes that survived it and
reopens their LGS on the same port: the SuperNode's own retry reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.json_format import MessageToDict, ParseDict, ParseError

from ..core.config import Limits, LoopbackTLS, TLSConfig
from ..core.exceptions import ConfigError, GatewayError, ProcessError
from ..core.identity import Role, peer_from_pem
from ..flower.install import FlowerInstalls
from ..flower.launch import launch_supernode
from ..flower.node_auth import (
    fingerprint,
    load_private_key,
    openssh_public_key,
    write_loopback_tls,
)
from ..flower.process import ManagedProcess
from ..observability import metrics
from ..proto.control_pb2 import (
    PollTasksRequest,
    PollTasksResponse,
    ShipLogsRequest,
    ShipLogsResponse,
    SiteJob,
    SiteJobState,
    SiteStatus,
)
from ..proto.envelope_pb2 import KIND_AGENT
from ..site.gateway import SiteGateway
from ..tracking.writer import TOKEN_ENV
from ..transport import parse_url
from .client import control_call
from .site_tracking import SiteTracking

log = logging.getLogger(__name__)

POLL_WAIT_SECONDS = 20.0
CONTACT_SECONDS = 60.0
"""A site that polled its relay this recently counts as connected (the relay counts a
site online the same way: ``site_tasks.SITE_ONLINE_SECONDS``)."""
SLOT_FILE = "slot.json"
RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)
LOG_CHUNK_BYTES = 1024 * 1024
"""The most of a SuperNode's log one ``ShipLogs`` carries."""


@dataclass
class _JobSlot:
    job: SiteJob
    state: str = "starting"
    detail: str = ""
    supernode: ManagedProcess | None = None
    shipped: int = 0
    shipping: asyncio.Lock = field(default_factory=asyncio.Lock)
    """One shipment of the log at a time: two sent from the same offset would leave
    the second one's tail unshipped (the relay keeps the first, ignores the second)."""
    lgs_port: int = 0
    tracking_token: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "job": MessageToDict(self.job, preserving_proto_field_name=True),
                "lgs_port": self.lgs_port,
                "tracking_token": self.tracking_token,
                "supernode_pid": self.supernode.pid if self.supernode else 0,
            }
        )

    def view(self) -> SiteJobState:
        return SiteJobState(job_id=self.job.job_id, state=self.state, detail=self.detail)


def round_trip_ms(elapsed: float, response: PollTasksResponse) -> float | None:
    """The round trip of a poll that took ``elapsed`` seconds, less the time the relay held it.

    None from a relay that does not say how long it held the poll (an older release):
    the whole elapsed time would be mostly its wait, not the network's.
    """
    if not response.HasField("held_ms"):
        return None
    return max(0.0, elapsed * 1000 - response.held_ms)  # durations only: the clocks need not agree


class SiteAgent:
    """One site's long-lived process."""

    def __init__(
        self,
        *,
        relay_url: str,
        tls: TLSConfig,
        workspace: Path,
        installs: FlowerInstalls,
        limits: Limits = Limits(),
        poll_wait: float = POLL_WAIT_SECONDS,
        flower_node_key: Path | None = None,
        sign: bool = False,
    ) -> None:
        """``flower_node_key``: the site's Flower node key (OpenSSH private key, 0600).
        ``sign``: sign every envelope (a site behind an edge relay: its kit's ``via``).

        Its public half is reported to the relay on every poll, which registers it
        with the SuperLink of each job that asks for Flower's node authentication;
        such jobs' SuperNodes sign their Fleet calls with it.
        """
        peer = peer_from_pem(tls.cert.read_bytes())
        if peer.role is not Role.SITE:
            raise ConfigError(f"{tls.cert} is a {peer.role.value} certificate, not a site's")
        self.name = peer.name
        self._node_key = flower_node_key
        self._node_public_key = ""
        if flower_node_key is not None:
            public = load_private_key(flower_node_key).public_key()
            self._node_public_key = openssh_public_key(public)
            log.info(
                "Flower node key loaded",
                extra={"site": self.name, "fingerprint": fingerprint(public)},
            )
        self.workspace = workspace
        self._installs = installs
        self._poll_wait = poll_wait
        self._gateway = SiteGateway(
            name=self.name, relay_url=relay_url, tls=tls, limits=limits, sign=sign
        )
        self.tracking = SiteTracking(self._gateway.client, workspace=workspace)
        self._transport = parse_url(relay_url).scheme
        self._rtt_ms: float | None = None
        """The last poll's round trip, reported on the next poll."""
        self._jobs: dict[str, _JobSlot] = {}
        self.connected = asyncio.Event()
        """Set while the last poll of the relay succeeded."""
        self.last_contact: float | None = None
        """When (monotonic) a poll of the relay last succeeded."""

    @property
    def jobs(self) -> dict[str, _JobSlot]:
        return self._jobs

    async def _recover(self) -> None:
        """Adopt the SuperNodes of a previous run of this agent that are still alive."""
        for state_file in sorted(self.workspace.glob(f"jobs/*/{SLOT_FILE}")):
            try:
                saved = json.loads(state_file.read_text())
                job = ParseDict(saved["job"], SiteJob())
                port, pid = int(saved["lgs_port"]), int(saved["supernode_pid"])
            except (OSError, ValueError, KeyError, ParseError):
                state_file.unlink(missing_ok=True)
                continue
            job_dir = state_file.parent
            supernode = ManagedProcess.adopt(
                "supernode", pid, log_path=job_dir / "supernode.log", marker=str(job_dir)
            )
            if supernode is None:
                state_file.unlink(missing_ok=True)
                continue
            slot = _JobSlot(job=job, supernode=supernode, lgs_port=port, state="running")
            if token := str(saved.get("tracking_token", "")):
                slot.tracking_token = token
                self.tracking.add_job(job.job_id, token)
            slot.shipped = supernode.log_path.stat().st_size if supernode.log_path.exists() else 0
            try:
                await self._gateway.open_job(
                    job.job_id, job.dialect, port=port, tls=self._lgs_tls(job)
                )
            except (GatewayError, OSError, RuntimeError) as exc:
                slot.state, slot.detail = "failed", f"cannot reopen the LGS on port {port}: {exc}"
            self._jobs[job.job_id] = slot
            log.warning(
                "adopted a running SuperNode after a restart",
                extra={"job": job.job_id, "pid": pid, "lgs_port": port},
            )

    async def run_forever(self) -> None:
        """Poll, reconcile and ship logs until cancelled; survive relay outages."""
        failures = 0
        await self.tracking.start()
        await self._recover()
        try:
            while True:
                started = time.monotonic()
                try:
                    response = await control_call(
                        self._gateway.client,
                        KIND_AGENT,
                        "PollTasks",
                        PollTasksRequest(
                            jobs=[s.view() for s in self._jobs.values()],
                            wait_ms=int(self._poll_wait * 1000),
                            flower_node_public_key=self._node_public_key,
                            status=self._status(),
                        ),
                        PollTasksResponse,
                        timeout=self._poll_wait + 15,
                    )
                except GatewayError as exc:
                    delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                    failures += 1
                    log.warning(
                        "cannot reach the relay; retrying",
                        extra={"site": self.name, "error": str(exc), "retry_in": delay},
                    )
                    self.connected.clear()
                    await asyncio.sleep(delay)
                    continue
                failures = 0
                self._rtt_ms = round_trip_ms(time.monotonic() - started, response)
                self.connected.set()
                self.last_contact = time.monotonic()
                if self._rtt_ms is not None:
                    metrics.site_round_trip(self._rtt_ms / 1000)
                await self._reconcile(response.desired)
                self._check_supernodes()
                await self._ship_logs()
        finally:
            await self.aclose()

    def _status(self) -> SiteStatus:
        """What this poll reports; the relay keeps the newest, so no history is sent."""
        calls, errors = self._gateway.call_window.counts(time.monotonic())
        status = SiteStatus(
            transport=self._transport,
            flower_version=self._installs.default.version_text,
            flower_versions=self._installs.releases,
            calls_last_minute=calls,
            errors_last_minute=errors,
        )
        if self._rtt_ms is not None:
            status.rtt_ms = self._rtt_ms
        return status

    async def _reconcile(self, desired: Iterable[SiteJob]) -> None:
        wanted = {job.job_id: job for job in desired}
        for job_id in [j for j in self._jobs if j not in wanted]:
            await self._stop_job(job_id)
        for job_id, job in wanted.items():
            if job_id not in self._jobs:
                await self._start_job(job)

    def _job_dir(self, job_id: str) -> Path:
        return self.workspace / "jobs" / job_id

    def _lgs_tls(self, job: SiteJob) -> LoopbackTLS | None:
        """The LGS's loopback certificate for a job with Flower's node auth, else None.

        flower-supernode signs its calls only over TLS; the certificate is kept in
        the job's directory so a restarted agent reopens the LGS with the same one.
        """
        if not job.node_auth:
            return None
        tls = LoopbackTLS.in_directory(self._job_dir(job.job_id) / "lgs-tls")
        return tls if tls.exists() else write_loopback_tls(tls.ca_cert.parent, name="lgs")

    async def _start_job(self, job: SiteJob) -> None:
        slot = _JobSlot(job=job)
        self._jobs[job.job_id] = slot
        install = self._installs.matching(job.flower_version)
        if install is None:
            slot.state = "failed"
            slot.detail = (
                f"this site runs flwr {', '.join(self._installs.releases)} but the job's "
                f"SuperLink runs flwr {job.flower_version}; install the same major.minor "
                "release (flgate site start --flower-bin DIR, repeatable)"
            )
            log.error("cannot start job", extra={"job": job.job_id, "reason": slot.detail})
            return
        if job.node_auth and self._node_key is None:
            slot.state = "failed"
            slot.detail = (
                "the job uses Flower's node authentication but this site has no node key; "
                "start the site with --flower-node-key PATH"
            )
            log.error("cannot start job", extra={"job": job.job_id, "reason": slot.detail})
            return
        try:
            tls = self._lgs_tls(job)
            lgs = await self._gateway.open_job(job.job_id, job.dialect, tls=tls)
            slot.lgs_port = lgs.port
            tracking_env = self.tracking.add_job(job.job_id)
            slot.tracking_token = tracking_env[TOKEN_ENV]
            slot.supernode = await launch_supernode(
                install,
                lgs.address,
                self._job_dir(job.job_id),
                name="supernode",
                node_config={
                    "partition-id": job.partition_id,
                    "num-partitions": job.num_partitions,
                    "site-name": self.name,
                },
                auth_key=self._node_key if job.node_auth else None,
                root_certificates=tls.ca_cert if tls is not None else None,
                env=tracking_env,
            )
        except (GatewayError, OSError) as exc:
            slot.state, slot.detail = "failed", f"cannot start the SuperNode: {exc}"
            return
        slot.state = "running"
        (self._job_dir(job.job_id) / SLOT_FILE).write_text(slot.to_json())
        log.info("job started", extra={"job": job.job_id, "site": self.name})

    def _check_supernodes(self) -> None:
        for slot in self._jobs.values():
            if slot.state == "running" and slot.supernode is not None:
                try:
                    slot.supernode.check_alive()
                except ProcessError as exc:
                    slot.state, slot.detail = "failed", str(exc)

    @property
    def transport(self) -> str:
        """The scheme of the relay URL this agent dials."""
        return self._transport

    def in_contact(self, within: float = CONTACT_SECONDS) -> bool:
        """Whether a poll of the relay succeeded in the last ``within`` seconds: one
        failed poll (a cut connection, retried) does not make the site unready."""
        return self.last_contact is not None and time.monotonic() - self.last_contact < within

    @property
    def calls_in_flight(self) -> Counter[str]:
        """Per job, the SuperNodes' Fleet calls waiting at the LGS for their answer."""
        return self._gateway.calls_in_flight

    def supernodes_running(self) -> int:
        """The jobs' SuperNode processes that are alive now."""
        return sum(1 for slot in self._jobs.values() if slot.supernode and slot.supernode.alive())

    async def _stop_job(self, job_id: str) -> None:
        slot = self._jobs[job_id]
        if slot.supernode is not None:
            await asyncio.to_thread(slot.supernode.stop)
        await self._gateway.close_job(job_id)
        await self.tracking.remove_job(job_id)
        with contextlib.suppress(GatewayError):
            await self._ship_log(slot, to_end=True)
        (self._job_dir(job_id) / SLOT_FILE).unlink(missing_ok=True)
        del self._jobs[job_id]
        log.info("job stopped", extra={"job": job_id, "site": self.name})

    async def _ship_logs(self) -> None:
        for slot in list(self._jobs.values()):
            with contextlib.suppress(GatewayError):
                await self._ship_log(slot)

    async def _ship_log(self, slot: _JobSlot, *, to_end: bool = False) -> None:
        """Ship the next chunk (at most 1 MiB) of the SuperNode's log; ``to_end``: every
        chunk up to the end of the file, as a stopped job's last shipment must."""
        if slot.supernode is None:
            return
        path = slot.supernode.log_path
        async with slot.shipping:
            while True:
                size = path.stat().st_size if path.exists() else 0
                if size <= slot.shipped:
                    return
                with path.open("rb") as handle:
                    handle.seek(slot.shipped)
                    data = handle.read(min(size - slot.shipped, LOG_CHUNK_BYTES))
                response = await control_call(
                    self._gateway.client,
                    KIND_AGENT,
                    "ShipLogs",
                    ShipLogsRequest(job_id=slot.job.job_id, offset=slot.shipped, data=data),
                    ShipLogsResponse,
                )
                progressed = response.next_offset > slot.shipped
                slot.shipped = response.next_offset
                if not (to_end and progressed):
                    return

    async def aclose(self) -> None:
        for job_id in list(self._jobs):
            with contextlib.suppress(GatewayError, OSError):
                await self._stop_job(job_id)
        await self.tracking.aclose()
        await self._gateway.aclose()
