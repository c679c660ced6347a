"""Scale-out: relays sharing one Redis tell each other what their jobs need.

Each relay publishes a share (its sites' tasks, its newest jobs, when its sites last
polled, what they reported, their node keys) on the board and takes the other relays'
shares, so a site can poll any relay and an admin can ask any relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ...core.exceptions import GatewayError
from ..board import Board, Share
from .site_tasks import SiteTasks
from .store import DISPATCHED, RUNNING, JobStore, job_info

log = logging.getLogger(__name__)

BOARD_INTERVAL = 1.0
"""Seconds between exchanges of shares with the other relays (scale-out)."""
SHARED_JOBS = 500
"""The newest jobs of this relay that other relays list."""


class BoardExchange:
    """Trades this relay's share for the others' about once a second, into ``sites.others``."""

    def __init__(
        self, board: Board, *, store: JobStore, sites: SiteTasks, changed: asyncio.Event
    ) -> None:
        """``changed``: set when the other relays want other tasks, so waiting polls answer."""
        self._board = board
        self._store = store
        self._sites = sites
        self._changed = changed
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._share_forever(), name="relay-board")

    async def aclose(self) -> None:
        """Stop exchanging and close the board."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._board.aclose()

    def share(self) -> Share:
        """What this relay tells the others now."""
        now = time.time()
        self._sites.forget_stale_reports(now)
        records = self._store.list()
        sites = {site for r in records if r.state in (DISPATCHED, RUNNING) for site in r.sites}
        return Share(
            relay=self._board.relay,
            written=now,
            tasks={site: self._sites.my_tasks(site) for site in sorted(sites)},
            jobs=[job_info(r) for r in records[-SHARED_JOBS:]],
            seen=dict(self._sites.online),
            reports=self._sites.reported,
            node_keys=dict(self._sites.node_keys),
            statuses=dict(self._sites.statuses),
        )

    async def _share_forever(self) -> None:
        """Publish this relay's share and take the others' about once a second."""
        failing = False
        while not self._closing:
            try:
                others = await self._board.exchange(self.share())
            except GatewayError as exc:
                if not failing:
                    log.warning(
                        "relay board unreachable; answering from own jobs",
                        extra={"error": str(exc)},
                    )
                failing = True
            else:
                if failing:
                    log.info("relay board reachable again")
                failing = False
                changed = others.task_ids() != self._sites.others.task_ids()
                self._sites.others = others
                if changed:  # a poll waiting for new tasks answers now
                    self._changed.set()
            await asyncio.sleep(BOARD_INTERVAL)
