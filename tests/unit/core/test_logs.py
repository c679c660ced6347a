"""Log lines as key=value text or one JSON object per line, and the choice between them."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.core import logs
from gateway.core.exceptions import ConfigError
from gateway.core.logs import LOG_FORMATS, JsonFormatter, KeyValueFormatter

NAME = "gateway.relay.dispatcher"


def _record(extra: dict[str, Any] | None = None, level: int = logging.WARNING) -> logging.LogRecord:
    """A record as ``log.warning("relay call failed", extra=extra)`` makes it."""
    return logging.getLogger(NAME).makeRecord(
        NAME, level, __file__, 1, "relay call failed", (), None, extra=extra
    )


def _json(record: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry: dict[str, Any] = json.loads(line)
    return entry


def test_a_record_becomes_one_json_object_with_the_four_base_keys() -> None:
    record = _record(level=logging.ERROR)
    when = dt.datetime(2026, 12, 2, 14, 3, 7, 123000, tzinfo=dt.timezone.utc)
    record.created, record.msecs = when.timestamp(), 123.0
    assert _json(record) == {
        "time": "2026-12-02T14:03:07.123Z",
        "level": "error",
        "logger": NAME,
        "message": "relay call failed",
    }


def test_the_time_is_utc_with_milliseconds_and_parses_back_to_the_records_time() -> None:
    record = _record()
    text = _json(record)["time"]
    assert len(text) == len("2026-12-02T14:03:07.123Z") and text.endswith("Z")
    parsed = dt.datetime.fromisoformat(text)
    assert parsed.utcoffset() == dt.timedelta(0)
    assert abs(parsed.timestamp() - record.created) < 0.001


def test_the_message_has_its_arguments_filled_in() -> None:
    record = logging.getLogger(NAME).makeRecord(
        NAME, logging.INFO, __file__, 1, "%d sites", (3,), None
    )
    assert _json(record)["message"] == "3 sites"


def test_extra_fields_are_top_level_keys_with_their_json_types() -> None:
    entry = _json(
        _record(
            {"job": "job-1", "status": 503, "ok": False, "ratio": 0.5, "hops": [1, 2], "none": None}
        )
    )
    assert {k: entry[k] for k in ("job", "status", "ok", "ratio", "hops", "none")} == {
        "job": "job-1",
        "status": 503,
        "ok": False,
        "ratio": 0.5,
        "hops": [1, 2],
        "none": None,
    }


def test_an_extra_field_named_like_a_base_key_is_prefixed_and_does_not_overwrite_it() -> None:
    entry = _json(
        _record({"level": "mine", "logger": "other", "time": 5, "exception": "no", "stack": "no"})
    )
    assert (entry["level"], entry["logger"]) == ("warning", NAME)
    assert isinstance(entry["time"], str)
    assert "exception" not in entry and "stack" not in entry
    assert {k: entry[k] for k in entry if k.startswith("extra_")} == {
        "extra_level": "mine",
        "extra_logger": "other",
        "extra_time": 5,
        "extra_exception": "no",
        "extra_stack": "no",
    }


def test_a_prefixed_name_that_is_taken_too_is_prefixed_again_and_nothing_is_lost() -> None:
    entry = _json(_record({"level": "a", "extra_level": "b"}))
    assert (entry["level"], entry["extra_level"], entry["extra_extra_level"]) == (
        "warning",
        "b",
        "a",
    )


def test_values_json_cannot_encode_become_their_repr() -> None:
    cyclic: list[object] = []
    cyclic.append(cyclic)
    entry = _json(
        _record(
            {
                "path": Path("/srv/kit"),
                "raw": b"\x00",
                "nan": math.nan,
                "pair_keys": {(1, 2): "x"},
                "cyclic": cyclic,
                "nested": [Path("a"), 1],
            }
        )
    )
    assert entry["path"] == repr(Path("/srv/kit"))
    assert entry["raw"] == "b'\\x00'"
    assert entry["nan"] == "nan"
    assert entry["pair_keys"] == "{(1, 2): 'x'}"
    assert entry["cyclic"] == "[[...]]"
    assert entry["nested"] == [repr(Path("a")), 1]


def test_an_exception_and_a_stack_travel_inside_the_one_line() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("tests.unit.core.test_logs.exception")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise ValueError("bad frame")
        except ValueError:
            log.exception("execution failed", extra={"message_id": "m-1"})
        log.warning("slow", stack_info=True)
    finally:
        log.removeHandler(handler)
        log.propagate = True
        handler.close()
    failed, slow = (json.loads(line) for line in out.getvalue().splitlines())
    assert (failed["level"], failed["message"], failed["message_id"]) == (
        "error",
        "execution failed",
        "m-1",
    )
    assert failed["exception"].startswith("Traceback (most recent call last):")
    assert failed["exception"].endswith("ValueError: bad frame")
    assert "stack" not in failed
    assert slow["stack"].startswith("Stack (most recent call last):")
    assert "exception" not in slow


def test_a_record_with_exc_info_carries_the_formatted_traceback() -> None:
    try:
        raise KeyError("job-9")
    except KeyError:
        exc_info = sys.exc_info()
    record = logging.getLogger(NAME).makeRecord(
        NAME, logging.ERROR, __file__, 1, "lookup failed", (), exc_info
    )
    assert _json(record)["exception"] == logging.Formatter().formatException(exc_info)


def test_the_text_format_still_appends_sorted_key_value_pairs() -> None:
    formatter = KeyValueFormatter("%(levelname)s %(name)s %(message)s")
    line = formatter.format(_record({"status": 503, "job": "job-1"}))
    assert line == f"WARNING {NAME} relay call failed job='job-1' status=503"


def test_the_formats_are_text_then_json() -> None:
    assert LOG_FORMATS == ("text", "json")


def test_configure_writes_text_by_default_and_json_when_asked(
    root_logger: logging.Logger,
) -> None:
    logs.configure()
    (handler,) = root_logger.handlers
    assert type(handler.formatter) is KeyValueFormatter
    assert root_logger.level == logging.WARNING
    logs.configure(2, log_format="json")
    (handler,) = root_logger.handlers
    assert isinstance(handler.formatter, JsonFormatter)
    assert root_logger.level == logging.DEBUG


def test_configure_refuses_an_unknown_format_naming_the_valid_ones_and_changes_nothing(
    root_logger: logging.Logger,
) -> None:
    logs.configure(1, log_format="json")
    before = (list(root_logger.handlers), root_logger.level)
    with pytest.raises(ConfigError, match=r"unknown log format 'yaml'; use one of: text, json"):
        logs.configure(0, log_format="yaml")
    assert (list(root_logger.handlers), root_logger.level) == before
