"""A ClientApp that floods its job's tracking writer, as a process of its own.

``python -m gateway.bench.flooder --records 100000 --stats FILE`` does what a
ClientApp could do: with the job's ``FLGATE_TRACKING_URL`` and
``FLGATE_TRACKING_TOKEN`` in its environment, it opens a
:class:`~gateway.tracking.writer.SummaryWriter`, calls ``add_scalar`` ``--records``
times as fast as it can, closes it (which flushes, waiting a bounded time for a
busy site) and starts again, until SIGTERM. Each record has a step of its own
(counting on across writers), so every record the relay stores is a new point of
the job's series and the bench can count them there.

It imports only the writer (the standard library), like a ClientApp would, and
writes its counts to ``--stats`` after each writer and when it is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from ..tracking.writer import TOKEN_ENV, URL_ENV, SummaryWriter

TAG = "flood"


class _Counts:
    def __init__(self, stats: Path) -> None:
        self.stats = stats
        self.started = time.monotonic()
        self.added = 0
        """``add_scalar`` calls so far."""
        self.writers = 0
        """Writers closed so far (each after ``--records`` calls)."""
        self.lost = 0
        """Records the closed writers report they never delivered."""

    def write(self) -> None:
        temporary = self.stats.with_suffix(".tmp")
        temporary.write_text(
            json.dumps(
                {
                    "added": self.added,
                    "writers": self.writers,
                    "lost": self.lost,
                    "seconds": time.monotonic() - self.started,
                }
            )
        )
        os.replace(temporary, self.stats)


def flood(records: int, counts: _Counts) -> None:
    """Writers of ``records`` scalars each, one after another, for ever."""
    step = 0
    while True:
        writer = SummaryWriter()
        if not writer.to_gateway:
            raise SystemExit(f"{URL_ENV} and {TOKEN_ENV} must name the site's receiver")
        for _ in range(records):
            writer.add_scalar(TAG, float(step), step=step)
            step += 1
            counts.added += 1
        writer.close()
        counts.writers += 1
        counts.lost += writer.lost
        counts.write()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.bench.flooder")
    parser.add_argument("--records", type=int, default=100_000, help="add_scalar calls a writer")
    parser.add_argument("--stats", type=Path, required=True, help="where to write the counts")
    args = parser.parse_args(argv)
    counts = _Counts(args.stats)

    def stop(signum: int, frame: FrameType | None) -> None:
        counts.write()
        os._exit(0)  # at once: no writer's exit handler waits for a busy site

    signal.signal(signal.SIGTERM, stop)
    counts.write()
    flood(args.records, counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
