"""Structured, quiet-by-default logging, as ``time level logger message key=value ...`` lines
for people or as one JSON object per line for log collectors.

Log calls pass constant messages and their details in ``extra=``; both formatters keep those
details as separate fields, so either output can be filtered by field rather than by text.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from .exceptions import ConfigError

# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

# Keys the JSON formatter writes itself; an ``extra`` field of the same name is prefixed,
# always (not only when the record has an exception), so a field keeps one name in every line.
_JSON_OWN_KEYS = frozenset({"time", "level", "logger", "message", "exception", "stack"})
_EXTRA_PREFIX = "extra_"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a log call passed in ``extra=``."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class KeyValueFormatter(logging.Formatter):
    """Appends the ``extra`` fields of a record as ``key=value`` pairs."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields = _extras(record)
        if not fields:
            return base
        return base + " " + " ".join(f"{k}={v!r}" for k, v in sorted(fields.items()))


def _json_value(value: object) -> str:
    """``value`` as JSON text, or its ``repr()`` as a JSON string when JSON cannot encode it.

    Objects inside containers become their ``repr()`` one by one; what fails as a whole (NaN,
    which is not JSON, tuple keys, cycles) becomes the container's ``repr()``: a log line is
    never lost to an odd value.
    """
    try:
        return json.dumps(value, default=repr, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(repr(value))


def _utc_time(record: logging.LogRecord) -> str:
    """``2026-12-02T14:03:07.123Z``: UTC, so lines from hosts in other zones sort together."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601 with milliseconds), ``level``,
    ``logger``, ``message``, each ``extra`` field as a key of its own, and ``exception``
    and ``stack`` when the record carries them.

    For collectors (journald, Loki, Elasticsearch) that read a line as a record: a
    traceback stays inside its record instead of spreading over lines, and the
    ``extra`` fields arrive as fields to query.
    """

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        fields = {
            "time": json.dumps(_utc_time(record)),
            "level": json.dumps(record.levelname.lower()),
            "logger": json.dumps(record.name),
            "message": json.dumps(record.message),
        }
        if record.exc_info and not record.exc_text:
            # Cached on the record as logging.Formatter does, for the other handlers.
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            fields["exception"] = json.dumps(record.exc_text)
        if record.stack_info:
            fields["stack"] = json.dumps(self.formatStack(record.stack_info))
        for key, value in sorted(_extras(record).items()):
            name = key
            while name in _JSON_OWN_KEYS or name in fields:
                name = _EXTRA_PREFIX + name
            fields[name] = _json_value(value)
        return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in fields.items()) + "}"


def _text_formatter() -> logging.Formatter:
    return KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", "%H:%M:%S")


_FORMATTERS: dict[str, Callable[[], logging.Formatter]] = {
    "text": _text_formatter,
    "json": JsonFormatter,
}
LOG_FORMATS: tuple[str, ...] = tuple(_FORMATTERS)
"""The names ``configure`` accepts; ``text`` is the default."""


def configure(verbosity: int = 0, log_format: str = "text") -> None:
    """WARNING by default, INFO with -v, DEBUG with -vv; to stderr, as ``log_format``.

    An unknown format raises :class:`ConfigError` before the handlers change, so the
    logging in place still reports what follows.
    """
    make = _FORMATTERS.get(log_format)
    if make is None:
        raise ConfigError(
            f"unknown log format {log_format!r}; use one of: {', '.join(LOG_FORMATS)}"
        )
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
