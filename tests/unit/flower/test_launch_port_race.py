"""A Flower process that lost the race for the port it was given is started again."""

from __future__ import annotations

import pytest

from gateway.flower.launch import port_taken


@pytest.mark.parametrize(
    "tail",
    [
        # uvicorn (the HTTP APIs of 1.34+): the OS's error
        "ERROR: [Errno 98] error while attempting to bind on address ('127.0.0.1', 9093): "
        "address already in use",
        # Flower's gRPC servers (the Fleet API of 1.36, seen in a fresh-clone run)
        "SystemExit: Port in server address 127.0.0.1:37421 is already in use.",
    ],
)
def test_both_ways_flower_reports_a_taken_port_are_recognised(tail: str) -> None:
    assert port_taken("INFO : starting\n" + tail + "\n")


def test_other_exits_are_not_taken_for_a_port_race() -> None:
    assert not port_taken("SystemExit: Error: the database is locked\n")
    assert not port_taken("")
