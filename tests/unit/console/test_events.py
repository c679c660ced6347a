"""Server-Sent Events: the encoding and the change filter (pure)."""

from __future__ import annotations

import json

from gateway.console.events import Changes, encode_event


def test_an_event_is_one_data_line_whatever_its_text_holds() -> None:
    raw = encode_event("log", {"text": "a\nb\r\n"}, event_id="42").decode()
    assert raw.endswith("\n\n")
    lines = raw.rstrip("\n").split("\n")
    assert lines[:2] == ["event: log", "id: 42"]
    assert len(lines) == 3
    assert json.loads(lines[2].removeprefix("data: ")) == {"text": "a\nb\r\n"}


def test_only_what_changed_is_sent_again() -> None:
    changes = Changes()
    assert changes.changed("jobs", {"a": 1, "b": 2})
    assert not changes.changed("jobs", {"b": 2, "a": 1})
    assert changes.changed("relay", {"a": 1, "b": 2})  # another event keeps its own
    assert changes.changed("jobs", {"a": 1, "b": 3})
