"""``flgate job sites``: the sites' table and JSON, from what the relay answers."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from gateway.cli import job_cmd
from gateway.cli.common import EXIT_OK
from gateway.proto.control_pb2 import SiteInfo, SiteStatus

SITES = [
    SiteInfo(
        name="site-1",
        online=True,
        jobs=["job-1"],
        status=SiteStatus(
            transport="grpcs",
            flower_version="1.41.0",
            rtt_ms=12.345,
            calls_last_minute=120,
            errors_last_minute=3,
            flower_versions=["1.41.0", "1.39.0"],  # every release it offers, default first
        ),
    ),
    # Polled before it measured a round trip, with no Flower release it could tell.
    SiteInfo(name="site-2", online=True, status=SiteStatus(transport="https"), via="edge-a"),
    SiteInfo(name="site-3"),  # never polled, or its agent predates the status
]


def _sites(monkeypatch: pytest.MonkeyPatch, *, json_output: bool) -> int:
    def answer(args: argparse.Namespace, operation: Callable[[Any], Any]) -> list[SiteInfo]:
        return SITES

    monkeypatch.setattr(job_cmd, "_call", answer)
    return job_cmd._sites(argparse.Namespace(json=json_output))


def test_the_table_shows_each_sites_link_and_calls_and_dashes_for_what_it_never_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _sites(monkeypatch, json_output=False) == EXIT_OK
    header, *rows = capsys.readouterr().out.splitlines()
    assert re.split(r"\s{2,}", header) == [
        "SITE",
        "ONLINE",
        "LAST SEEN",
        "TRANSPORT",
        "PATH",
        "FLOWER",
        "RTT MS",
        "CALLS/MIN",
        "ERRORS/MIN",
        "JOBS",
    ]
    assert [row.split() for row in rows] == [
        ["site-1", "yes", "-", "grpcs", "direct", "1.41.0,1.39.0", "12.3", "120", "3", "job-1"],
        ["site-2", "yes", "-", "https", "via:edge-a", "-", "-", "0", "0", "-"],
        ["site-3", "no", "-", "-", "direct", "-", "-", "-", "-", "-"],
    ]
    # Numbers are right-aligned under their headers.
    column = header.index("CALLS/MIN") + len("CALLS/MIN")
    assert {row[column - 3 : column] for row in rows} == {"120", "  0", "  -"}


def test_json_carries_the_status_and_leaves_out_what_was_never_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _sites(monkeypatch, json_output=True) == EXIT_OK
    one, two, three = json.loads(capsys.readouterr().out)
    assert one["status"] == {
        "transport": "grpcs",
        "flower_version": "1.41.0",
        "rtt_ms": 12.345,
        "calls_last_minute": 120,
        "errors_last_minute": 3,
        "flower_versions": ["1.41.0", "1.39.0"],
    }
    assert two["status"] == {
        "transport": "https",
        "flower_version": "",
        "calls_last_minute": 0,
        "errors_last_minute": 0,
        "flower_versions": [],
    }
    assert "status" not in three
    assert (one["via"], two["via"]) == ("", "edge-a")  # "": it dials the relay directly
