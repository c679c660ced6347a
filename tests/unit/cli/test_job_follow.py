"""Following a job: each round's metrics printed once, and relay outages ridden out."""

from __future__ import annotations

import argparse
import json
from typing import Any, cast

import pytest

from gateway.cli import job_cmd, job_follow
from gateway.cli.common import EXIT_OK
from gateway.cli.job_follow import FollowView, Reconnecting, follow
from gateway.control.admin import AdminClient
from gateway.core.exceptions import ConnectError, NotDeliveredError, UnknownJobError
from gateway.proto.control_pb2 import GetMetricsResponse, JobInfo, MetricPoint


def _answer(state: str, round_: int, *points: tuple[str, int, float]) -> GetMetricsResponse:
    return GetMetricsResponse(
        job=JobInfo(job_id="j", state=state, round=round_, rounds=2),
        points=[MetricPoint(tag=t, step=s, value=v) for t, s, v in points],
    )


def test_each_point_is_printed_once_grouped_by_round() -> None:
    view = FollowView()
    assert view.update(_answer("running", 1), "10:00:00") == ["[10:00:00] running round 1/2"]
    first = _answer("running", 1, ("train/loss", 1, 0.5), ("evaluate/acc", 1, 0.25))
    assert view.update(first, "10:00:01") == ["  round 1: evaluate/acc=0.25 train/loss=0.5"]
    both = _answer(
        "finished", 2, ("train/loss", 1, 0.5), ("evaluate/acc", 1, 0.25), ("train/loss", 2, 3.0)
    )
    assert view.update(both, "10:00:02") == [
        "[10:00:02] finished round 2/2",
        "  round 2: train/loss=3",
    ]
    assert FollowView(metrics_only=True).update(both, "x") == [
        "  round 1: evaluate/acc=0.25 train/loss=0.5",
        "  round 2: train/loss=3",
    ]


class _Relay:
    """The relay as an admin client sees it: a script of answers and failures."""

    def __init__(self, script: list[GetMetricsResponse | Exception]) -> None:
        self.script = script
        self.clients = 0
        self.closed = 0

    def connect(self) -> AdminClient:
        self.clients += 1
        return cast(AdminClient, self)

    async def metrics(self, job_id: str) -> GetMetricsResponse:
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    async def aclose(self) -> None:
        self.closed += 1


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_follow, "POLL_SECONDS", 0.0)
    monkeypatch.setattr(job_follow, "RECONNECT_SECONDS", 0.0)


async def test_a_relay_restart_is_ridden_out_on_a_new_connection() -> None:
    relay = _Relay(
        [
            _answer("running", 1),
            ConnectError("connection refused"),
            NotDeliveredError("relay: shutting down; not executed"),
            _answer("finished", 2, ("train/loss", 2, 1.0)),
        ]
    )
    lines: list[str] = []
    now = iter(range(100))
    reconnecting = Reconnecting(relay.connect, write=lines.append, clock=lambda: next(now))
    info = await follow(reconnecting, "j", FollowView(), lambda line: lines.append(line))
    await reconnecting.aclose()
    assert info.state == "finished"
    assert relay.clients == 3 and relay.closed == 3  # two dropped, the last one closed
    assert lines[1] == "relay unreachable (connection refused); reconnecting for up to 300 s"
    assert lines[2].startswith("reconnected to the relay after ")
    assert lines[-1] == "  round 2: train/loss=1"


async def test_an_outage_longer_than_the_limit_raises_its_last_error() -> None:
    relay = _Relay([ConnectError("down")] * 3)
    times = iter([0.0, job_follow.OUTAGE_LIMIT + 1, job_follow.OUTAGE_LIMIT + 2])
    reconnecting = Reconnecting(relay.connect, write=lambda line: None, clock=lambda: next(times))
    with pytest.raises(ConnectError, match="down"):
        await follow(reconnecting, "j", FollowView(), lambda line: None)


async def test_a_refusal_is_raised_at_once() -> None:
    relay = _Relay([UnknownJobError("no job 'j'")])
    reconnecting = Reconnecting(relay.connect, write=lambda line: None)
    with pytest.raises(UnknownJobError):
        await follow(reconnecting, "j", FollowView(), lambda line: None)


def _metrics(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], **flags: Any
) -> str:
    answer = _answer("finished", 2, ("train/loss", 1, 0.5), ("train/loss", 2, 0.25), ("e/a", 2, 1))
    monkeypatch.setattr(job_cmd, "_call", lambda args, operation: answer)
    options = {"json": False, "csv": False, "follow": False, **flags}
    assert job_cmd._metrics(argparse.Namespace(job_id="j", **options)) == EXIT_OK
    return capsys.readouterr().out


def test_metrics_print_as_a_table_csv_or_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    table = _metrics(monkeypatch, capsys).splitlines()
    assert [line.split() for line in table] == [
        ["ROUND", "e/a", "train/loss"],
        ["1", "-", "0.5"],
        ["2", "1", "0.25"],
    ]
    assert _metrics(monkeypatch, capsys, csv=True).splitlines() == [
        "tag,round,value",
        "train/loss,1,0.5",
        "train/loss,2,0.25",
        "e/a,2,1",
    ]
    assert json.loads(_metrics(monkeypatch, capsys, json=True)) == {
        "job_id": "j",
        "state": "finished",
        "series": {"train/loss": {"1": 0.5, "2": 0.25}, "e/a": {"2": 1.0}},
    }
