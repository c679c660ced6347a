"""The relay's PushTracking: a site's client-side records, refused with a clear reason
unless the site is part of a job that runs, and checked again on the relay."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.control.jobs.store import FINISHED, RUNNING, JobRecord
from gateway.control.relay_api import ControlService
from gateway.core.envelope import new_message_id, now_ms
from gateway.core.identity import AdminRole, Peer, Role
from gateway.observability import metrics
from gateway.proto.control_pb2 import MetricPoint, PushTrackingRequest
from gateway.proto.envelope_pb2 import KIND_AGENT, Envelope
from tests.support.relay import offline_job_manager

SITE_1 = Peer("site-1", Role.SITE)
SITE_3 = Peer("site-3", Role.SITE)


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[ControlService]:
    manager = offline_job_manager(tmp_path)
    for job_id, state in (("done", FINISHED), ("live", RUNNING)):
        manager.store.add(
            JobRecord(
                job_id=job_id,
                name="n",
                state=state,
                sites=("site-1", "site-2"),
                submitted_by="admin",
            )
        )
    yield ControlService(manager)
    await manager.aclose()


def _push(job_id: str, *points: MetricPoint, dropped: int = 0) -> Envelope:
    return Envelope(
        kind=KIND_AGENT,
        job_id=job_id,
        message_id=new_message_id(),
        method="PushTracking",
        body=PushTrackingRequest(job_id=job_id, points=points, dropped=dropped).SerializeToString(),
        deadline_unix_ms=now_ms() + 10_000,
        attempt=1,
    )


def _refusals() -> float:
    sample = metrics.REGISTRY.get_sample_value(
        "flgate_relay_refusals_total", {"reason": "not_in_job"}
    )
    return sample or 0.0


LOSS = MetricPoint(tag="train_loss", step=1, value=0.5)


async def test_a_site_pushing_records_for_a_job_it_is_not_in_is_refused_and_counted(
    control: ControlService,
) -> None:
    metrics.enable()
    before = _refusals()
    reply = await control.handle(SITE_3, _push("live", LOSS))
    assert reply.http_status == 403
    assert reply.detail == "site site-3 is not part of job live; its tracking records are refused"
    assert _refusals() == before + 1


@pytest.mark.parametrize(
    ("peer", "envelope", "status", "detail"),
    [
        (SITE_1, _push("nope", LOSS), 404, "no job 'nope'"),
        (SITE_1, _push("done", LOSS), 409, "job done has ended (finished)"),
        # Stored as running, but no run of it here: nothing to keep the points with.
        (SITE_1, _push("live", LOSS), 409, "job live is not running on this relay"),
        (
            SITE_1,
            _push("live", MetricPoint(tag="bad tag", step=1, value=1.0)),
            400,
            "a malformed tracking batch from site-1: points[0].tag: only letters",
        ),
        (
            SITE_1,
            _push("live", LOSS, MetricPoint(tag="x", step=1, value=float("nan"))),
            400,
            "points[1].value: not a finite number",
        ),
        (
            SITE_1,
            _push("live", *[LOSS] * 10_001),
            400,
            "a tracking batch of 10001 points from site-1, more than 10000",
        ),
        (
            Peer("admin", Role.ADMIN, admin_role=AdminRole.PROJECT_ADMIN),
            _push("live", LOSS),
            403,
            "needs a site certificate",
        ),
    ],
)
async def test_a_push_that_cannot_be_kept_gets_a_clear_reason(
    control: ControlService, peer: Peer, envelope: Envelope, status: int, detail: str
) -> None:
    reply = await control.handle(peer, envelope)
    assert reply.http_status == status
    assert detail in reply.detail


async def test_a_malformed_request_is_refused(control: ControlService) -> None:
    envelope = _push("live")
    envelope.body = b"\xff\xff"
    reply = await control.handle(SITE_1, envelope)
    assert reply.http_status == 400
    assert "malformed PushTracking request" in reply.detail
