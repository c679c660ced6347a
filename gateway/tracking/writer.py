"""Client-side experiment tracking for Flower apps: ``SummaryWriter().add_scalar(...)``.

A ClientApp logs its own scalars the way it would with TensorBoard::

    from gateway.tracking.writer import SummaryWriter

    writer = SummaryWriter()
    writer.add_scalar("train_loss", loss, step=server_round)
    writer.flush()  # optional: also done ~1 s later, on close() and at exit

Inside a gateway job the site agent gives the job's SuperNode (and so every
``flwr-clientapp`` it starts) :data:`URL_ENV` and :data:`TOKEN_ENV`: the writer
batches records in memory and POSTs them as JSON to the site's loopback receiver,
which ships them to the relay, where they join the job's series as
``<site>/<tag>`` (``flgate job metrics``, the job's TensorBoard files). Outside the
gateway (plain Flower, no such variables) it writes TensorBoard event files to a
local ``logdir`` (tensorboardX, imported on first use), so the same app runs
directly.

Bounded and quiet: at most :data:`MAX_BUFFERED` records wait in memory; beyond that
records are dropped and counted (the count goes to the site with the next batch). A
batch is sent when it holds :data:`BATCH_SIZE` records, :data:`SEND_AFTER` seconds
after its first record, or on :meth:`~SummaryWriter.flush`/:meth:`~SummaryWriter.close`
(and at interpreter exit, for up to :data:`CLOSE_TIMEOUT` seconds). A site that is
busy (429, with Retry-After) or unreachable is tried again later; delivery failures
are logged once and never raised into the app. Only bad arguments raise: a tag that
is not a string (TypeError) or breaks the tag rules (ValueError), a value that is not
a real number (TypeError) or not finite (ValueError), a negative step (ValueError).

This module imports the standard library only (the gateway's pure record rules
included), so a ClientApp pays nothing for it.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import numbers
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Any

from .records import check_point

log = logging.getLogger(__name__)

URL_ENV = "FLGATE_TRACKING_URL"
TOKEN_ENV = "FLGATE_TRACKING_TOKEN"
MAX_BUFFERED = 10_000
"""Records kept in memory while they wait to be sent; more are dropped and counted."""
BATCH_SIZE = 500
"""Records per POST."""
SEND_AFTER = 1.0
"""Seconds a record waits, at most, for its batch to fill."""
CLOSE_TIMEOUT = 5.0
"""Seconds :meth:`SummaryWriter.close` (and the exit handler) tries to deliver what is left."""
HTTP_TIMEOUT = 5.0
_RETRY_SECONDS = 1.0
"""Wait after a failure that says nothing of when to retry (the site is restarting)."""


class _Retry(Exception):
    """The site may take the batch later (busy, restarting): keep it."""

    def __init__(self, after: float, reason: str) -> None:
        super().__init__(reason)
        self.after = after


class _Lost(Exception):
    """The site will never take this batch (refused): drop it."""


def default_logdir() -> Path:
    """``./runs/<date-time>_<host>_<pid>``, as TensorBoard users expect."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}_{socket.gethostname()}_{os.getpid()}"


class _HttpSink:
    """Records buffered and POSTed to the site agent by a daemon thread."""

    def __init__(
        self, url: str, token: str, *, max_buffered: int, batch_size: int, send_after: float
    ) -> None:
        self._url = url
        self._token = token
        self._max = max_buffered
        self._batch = batch_size
        self._send_after = send_after
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._sending = threading.Lock()
        self._buffer: deque[dict[str, Any]] = deque()
        self._dropped = 0
        """Records dropped and not yet told to the site."""
        self._first: float | None = None
        """When the oldest unsent record was added (monotonic)."""
        self._retry_at = 0.0
        self._closed = False
        self._warned = False
        self._thread: threading.Thread | None = None
        self.lost = 0
        """Records that will never reach the site (refused, or left at close)."""

    def add(self, tag: str, step: int, value: float) -> None:
        with self._lock:
            if self._closed:
                self.lost += 1
                return
            if len(self._buffer) >= self._max:
                self._dropped += 1
                return
            self._buffer.append({"tag": tag, "step": step, "value": value})
            if self._first is None:
                self._first = time.monotonic()
            if len(self._buffer) in (1, self._batch):
                self._wake.notify()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="flgate-tracking", daemon=True
                )
                self._thread.start()

    def _due(self, now: float) -> float | None:
        """When the next batch should go (None: nothing to send); under the lock."""
        if not self._buffer and not self._dropped:
            return None
        ready = now if len(self._buffer) >= self._batch else (self._first or now) + self._send_after
        return max(ready, self._retry_at)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closed:
                    due = self._due(time.monotonic())
                    if due is not None and due <= time.monotonic():
                        break
                    self._wake.wait(None if due is None else due - time.monotonic())
                if self._closed:
                    return
            self._send_one(flush=False)

    def _send_one(self, *, flush: bool) -> bool:
        """Send one batch; False when it must wait (kept for later). ``flush``: the app
        flushed, so the site ships the last batch to the relay at once."""
        with self._sending:
            with self._lock:
                if not self._buffer and not self._dropped:
                    return True
                batch = [self._buffer.popleft() for _ in range(min(self._batch, len(self._buffer)))]
                dropped, self._dropped = self._dropped, 0
                self._first = time.monotonic() if self._buffer else None
                last = not self._buffer
            body = {"records": batch, "dropped": dropped, "flush": flush and last}
            try:
                self._post(body)
            except _Retry as retry:
                with self._lock:
                    self._buffer.extendleft(reversed(batch))
                    while len(self._buffer) > self._max:
                        self._buffer.pop()
                        dropped += 1
                    self._dropped += dropped
                    self._first = self._first or time.monotonic()
                    self._retry_at = time.monotonic() + retry.after
                self._warn(str(retry))
                return False
            except _Lost as lost:
                self.lost += len(batch)
                self._warn(str(lost))
            return True

    def _post(self, body: dict[str, Any]) -> None:
        request = urllib.request.Request(
            self._url,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as answer:
                answer.read()
        except urllib.error.HTTPError as exc:
            detail = _detail(exc)
            if exc.code in (429, 503):
                after = _retry_after(exc.headers.get("Retry-After"))
                raise _Retry(after, f"the site is busy ({exc.code}): {detail}") from None
            raise _Lost(f"the site refused records ({exc.code}): {detail}") from None
        except (OSError, ValueError) as exc:  # URLError, a cut connection, a bad answer
            raise _Retry(_RETRY_SECONDS, f"cannot reach the site at {self._url}: {exc}") from None

    def _warn(self, reason: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("flgate tracking: records are delayed or lost: %s", reason)

    def flush(self, timeout: float) -> None:
        """Send what is buffered, waiting for a busy site up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._buffer and not self._dropped:
                    return
                wait = self._retry_at - time.monotonic()
            if time.monotonic() + max(wait, 0.0) >= deadline:
                return
            if wait > 0:
                time.sleep(wait)
            self._send_one(flush=True)

    def close(self, timeout: float) -> None:
        self.flush(timeout)
        with self._lock:
            self._closed = True
            left = len(self._buffer)
            self.lost += left
            self._buffer.clear()
            self._wake.notify_all()
        if left:
            log.warning("flgate tracking: %d records were not delivered before close", left)


class _TensorBoardSink:
    """Local TensorBoard event files (plain Flower, no gateway)."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self._writer: Any = None
        self._failed = False

    def add(self, tag: str, step: int, value: float) -> None:
        if self._writer is None and not self._failed:
            try:
                from tensorboardX import SummaryWriter as TensorBoardWriter
            except ImportError:
                self._failed = True
                log.warning("flgate tracking: tensorboardX is not installed; scalars are dropped")
                return
            self._writer = TensorBoardWriter(logdir=str(self.logdir))
        if self._writer is not None:
            self._writer.add_scalar(tag, value, global_step=step)

    def flush(self, timeout: float) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self, timeout: float) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class SummaryWriter:
    """Scalars of a client, to the gateway's site inside a job, else to TensorBoard files.

    ``logdir``: the local directory outside the gateway (default :func:`default_logdir`);
    ``url`` and ``token`` default to :data:`URL_ENV` and :data:`TOKEN_ENV`.
    """

    def __init__(
        self,
        logdir: str | os.PathLike[str] | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        max_buffered: int = MAX_BUFFERED,
        batch_size: int = BATCH_SIZE,
        send_after: float = SEND_AFTER,
    ) -> None:
        url = url if url is not None else os.environ.get(URL_ENV, "")
        token = token if token is not None else os.environ.get(TOKEN_ENV, "")
        self._sink: _HttpSink | _TensorBoardSink
        if url and token:
            self._sink = _HttpSink(
                url, token, max_buffered=max_buffered, batch_size=batch_size, send_after=send_after
            )
        else:
            self._sink = _TensorBoardSink(Path(logdir) if logdir else default_logdir())
        self._steps: dict[str, int] = {}
        self._closed = False
        atexit.register(self.close)

    @property
    def to_gateway(self) -> bool:
        """Whether records go to the gateway's site (else to local TensorBoard files)."""
        return isinstance(self._sink, _HttpSink)

    @property
    def logdir(self) -> Path | None:
        """The local TensorBoard directory, outside the gateway."""
        return self._sink.logdir if isinstance(self._sink, _TensorBoardSink) else None

    @property
    def lost(self) -> int:
        """Records that will never be delivered (refused by the site, or left at close)."""
        return self._sink.lost if isinstance(self._sink, _HttpSink) else 0

    def add_scalar(
        self,
        tag: str,
        scalar_value: float,
        global_step: int | None = None,
        walltime: float | None = None,
        *,
        step: int | None = None,
    ) -> None:
        """Record ``scalar_value`` of ``tag`` at ``global_step`` (or ``step``; default: the
        tag's previous step + 1, from 0). ``walltime`` is accepted and ignored."""
        if not isinstance(tag, str):
            raise TypeError(f"tag must be a string, not {type(tag).__name__}")
        if isinstance(scalar_value, bool) or not isinstance(scalar_value, numbers.Real):
            raise TypeError(
                f"scalar_value must be a real number, not {type(scalar_value).__name__}"
            )
        at = step if step is not None else global_step
        if at is None:
            at = self._steps.get(tag, -1) + 1
        elif isinstance(at, bool) or not isinstance(at, numbers.Integral):
            raise TypeError(f"step must be an integer, not {type(at).__name__}")
        value = float(scalar_value)
        if not math.isfinite(value):
            raise ValueError(f"scalar_value must be finite, not {value}")
        point = check_point(tag, int(at), value, where="add_scalar")
        self._steps[tag] = point.step
        self._sink.add(point.tag, point.step, point.value)

    def flush(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Deliver what is buffered now (waiting up to ``timeout`` s for a busy site)."""
        self._sink.flush(timeout)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Flush and stop; later scalars are dropped. Called at interpreter exit too."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._sink.close(timeout)

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _retry_after(header: str | None) -> float:
    try:
        return min(max(float(header or _RETRY_SECONDS), 0.0), 60.0)
    except ValueError:
        return _RETRY_SECONDS


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read() or b"{}")
    except (OSError, ValueError):
        return error.reason
    return str(body.get("error", error.reason)) if isinstance(body, dict) else error.reason
