"""The relay's control plane: site agents' and admins' calls, authorized by role.

A site certificate may poll for its own tasks, ship its own logs and push the
client-side tracking records of the jobs it is part of; an admin
certificate may submit, list, read, abort and download jobs, as its admin role
allows: a ``project_admin`` any job, a ``member`` may abort and download only
the jobs it submitted. Requests and responses are the messages of
``protos/gateway/proto/control.proto``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from google.protobuf.message import DecodeError, Message

from ..core.exceptions import AuthError, ConfigError, JobError, ProtocolError, UnknownMethodError
from ..core.failures import reply_for_error
from ..core.identity import AdminRole, Peer, Role
from ..observability import metrics
from ..proto.control_pb2 import (
    DownloadResponse,
    GetLogsRequest,
    JobRef,
    ListJobsRequest,
    ListJobsResponse,
    ListSitesRequest,
    ListSitesResponse,
    PollTasksRequest,
    PushTrackingRequest,
    RelayInfo,
    ShipLogsRequest,
    SubmitJobRequest,
)
from ..proto.envelope_pb2 import KIND_ADMIN, KIND_AGENT, Envelope, Reply
from .jobs.manager import JobManager, job_info

log = logging.getLogger(__name__)

Operation = Callable[[Peer, bytes], Awaitable[Message]]

MEMBER_OPERATIONS = frozenset(
    {
        "SubmitJob",
        "ListJobs",
        "ListSites",
        "GetJob",
        "GetLogs",
        "GetMetrics",
        "AbortJob",
        "Download",
    }
)
"""What a ``member`` admin may call at all (AbortJob and Download on its own jobs
only); an operation added later is for project admins until listed here."""


class ControlService:
    """Answers AGENT and ADMIN envelopes from the job manager."""

    def __init__(self, manager: JobManager, relay: Callable[[], RelayInfo] = RelayInfo) -> None:
        """``relay``: what ``ListSites`` says of this relay (its name and listeners)."""
        self._manager = manager
        self._relay = relay
        self._agent: dict[str, Operation] = {
            "PollTasks": self._poll_tasks,
            "ShipLogs": self._ship_logs,
            "PushTracking": self._push_tracking,
        }
        self._admin: dict[str, Operation] = {
            "SubmitJob": self._submit,
            "ListJobs": self._list,
            "ListSites": self._sites,
            "GetJob": self._get,
            "GetLogs": self._logs,
            "GetMetrics": self._metrics,
            "AbortJob": self._abort,
            "Download": self._download,
        }

    async def handle(self, peer: Peer, envelope: Envelope) -> Reply:
        if envelope.kind == KIND_AGENT:
            role, table = Role.SITE, self._agent
        elif envelope.kind == KIND_ADMIN:
            role, table = Role.ADMIN, self._admin
        else:
            return reply_for_error(envelope.message_id, ProtocolError("unknown envelope kind"))
        if peer.role is not role:
            return reply_for_error(
                envelope.message_id,
                AuthError(
                    f"{peer} may not call {envelope.method!r}: it needs a {role.value} certificate"
                ),
            )
        operation = table.get(envelope.method)
        if operation is None:
            return reply_for_error(
                envelope.message_id, UnknownMethodError(f"no operation {envelope.method!r}")
            )
        if (
            role is Role.ADMIN
            and peer.admin_role is not AdminRole.PROJECT_ADMIN
            and envelope.method not in MEMBER_OPERATIONS
        ):
            return reply_for_error(
                envelope.message_id,
                AuthError(
                    f"{peer} is a {peer.admin_role_name} and may not call {envelope.method!r}: "
                    "it needs a project_admin certificate"
                ),
            )
        try:
            response = await operation(peer, envelope.body)
        except DecodeError:
            return reply_for_error(
                envelope.message_id, ProtocolError(f"malformed {envelope.method} request")
            )
        except (AuthError, ConfigError, JobError) as exc:
            # An unknown job is an UnknownJobError (404); any other JobError is a conflict
            # with the job's state (409).
            return reply_for_error(envelope.message_id, exc)
        return Reply(
            message_id=envelope.message_id, http_status=200, body=response.SerializeToString()
        )

    async def _poll_tasks(self, peer: Peer, body: bytes) -> Message:
        return await self._manager.poll(peer.name, PollTasksRequest.FromString(body))

    async def _ship_logs(self, peer: Peer, body: bytes) -> Message:
        return self._manager.ship_logs(peer.name, ShipLogsRequest.FromString(body))

    async def _push_tracking(self, peer: Peer, body: bytes) -> Message:
        request = PushTrackingRequest.FromString(body)
        if peer.name not in self._manager.get(request.job_id).sites:
            metrics.refusal("not_in_job")
            raise AuthError(
                f"site {peer.name} is not part of job {request.job_id}; "
                "its tracking records are refused"
            )
        return await self._manager.push_tracking(peer.name, request)

    async def _submit(self, peer: Peer, body: bytes) -> Message:
        return job_info(await self._manager.submit(peer, SubmitJobRequest.FromString(body)))

    async def _list(self, peer: Peer, body: bytes) -> Message:
        ListJobsRequest.FromString(body)
        return ListJobsResponse(jobs=self._manager.job_list())

    async def _sites(self, peer: Peer, body: bytes) -> Message:
        ListSitesRequest.FromString(body)
        return ListSitesResponse(sites=self._manager.sites(), relay=self._relay())

    async def _get(self, peer: Peer, body: bytes) -> Message:
        return self._manager.info(JobRef.FromString(body).job_id)

    async def _logs(self, peer: Peer, body: bytes) -> Message:
        request = GetLogsRequest.FromString(body)
        return await self._manager.logs(
            request.job_id,
            request.source or "server",
            request.offset,
            min(request.wait_ms, 25_000) / 1000,
        )

    async def _metrics(self, peer: Peer, body: bytes) -> Message:
        return self._manager.metrics(JobRef.FromString(body).job_id)

    def _check_owner(self, peer: Peer, job_id: str, action: str) -> None:
        """A member may ``action`` only the jobs it submitted; a project admin any job."""
        submitted_by = self._manager.get(job_id).submitted_by
        if not peer.may_manage(submitted_by):
            raise AuthError(
                f"{peer} is a {peer.admin_role_name} and may {action} only the jobs it submitted; "
                f"job {job_id} was submitted by {submitted_by} (ask them or a project_admin)"
            )

    async def _abort(self, peer: Peer, body: bytes) -> Message:
        job_id = JobRef.FromString(body).job_id
        self._check_owner(peer, job_id, "abort")
        log.info("job abort requested", extra={"job": job_id, "by": peer.name})
        return job_info(await self._manager.abort(job_id, f"aborted by {peer.name}"))

    async def _download(self, peer: Peer, body: bytes) -> Message:
        job_id = JobRef.FromString(body).job_id
        self._check_owner(peer, job_id, "download")
        return DownloadResponse(archive=self._manager.download(job_id))
