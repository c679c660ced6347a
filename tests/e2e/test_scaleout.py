"""Scale-out: two relay processes share one Redis; sites reach every job through it.

Each relay owns the jobs submitted to it (here over its own https port, so the
owner is known), runs their SuperLinks and alone reads their request streams;
the sites dial only Redis and never learn which relay runs which job.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.control.admin import AdminClient
from gateway.core.identity import Role
from gateway.harness.local_run import RunOutcome
from gateway.harness.redis_server import RedisServer
from gateway.provisioning.certs import write_participant
from gateway.transport import parse_url
from gateway.transport.redis.connection import redis_connection
from tests.support.federation import RunningFederation, until_state, wait_online
from tests.support.paths import QUICKSTART
from tests.support.redis import start_redis

pytestmark = pytest.mark.e2e

SITES = ["site-1", "site-2"]


class TwoRelays:
    """A federation whose sites dial one Redis, served by relays ``a`` and ``b``."""

    def __init__(self, root: Path) -> None:
        self.fed = RunningFederation.create(root, SITES)
        self.redis: RedisServer | None = None
        self.relays: dict[str, subprocess.Popen[bytes]] = {}
        self.https: dict[str, str] = {}

    def start(self) -> None:
        fed = self.fed
        redis_tls = write_participant(
            fed.root / "pki" / "redis", fed.ca, "redis", Role.RELAY, hosts=("localhost",)
        )
        self.redis = start_redis(fed.root / "redis", tls=redis_tls)
        shared = f"rediss://localhost:{self.redis.port}"
        for name in ("a", "b"):
            tls = write_participant(
                fed.root / "pki" / f"relay-{name}",
                fed.ca,
                f"relay-{name}",
                Role.RELAY,
                hosts=("localhost", "127.0.0.1"),
            )
            self.relays[name] = fed._spawn(
                f"relay-{name}",
                [
                    "-v", "relay", "start",
                    "--listen", shared,
                    "--listen", "https://127.0.0.1:0",
                    "--workspace", str(fed.root / f"relay-{name}"),
                    "--sites", ",".join(SITES),
                    *fed._tls_args(tls),
                ],
            )  # fmt: skip
        for name in self.relays:
            self.https[name] = self._https_url(name)
        fed.relay_url = shared
        for site in SITES:
            fed.start_site(site)

    def _https_url(self, name: str) -> str:
        out = self.fed.root / f"relay-{name}.out"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = out.read_text() if out.exists() else ""
            match = re.search(r"relay listening on https://[^:]+:(\d+)", text)
            if match:
                return f"https://localhost:{match.group(1)}"
            if self.relays[name].poll() is not None:
                raise RuntimeError(f"relay-{name} exited: {text}")
            time.sleep(0.1)
        raise RuntimeError(f"relay-{name} did not start")

    def admin(self, via: str) -> AdminClient:
        """An admin client of relay ``via`` ('a', 'b'), or of any relay through Redis."""
        url = self.fed.relay_url if via == "redis" else self.https[via]
        return AdminClient(relay_url=url, tls=self.fed.admin_tls)

    def close(self) -> None:
        # Sites first, while the relays still answer their SuperNodes' last calls.
        for process in [*self.fed.sites.values(), *self.relays.values()]:
            self.fed.stop(process)
        try:
            self.fed.close()
        finally:
            if self.redis is not None:
                self.redis.stop()


@pytest.fixture
def two_relays(tmp_path: Path) -> Iterator[TwoRelays]:
    federation = TwoRelays(tmp_path)
    try:
        federation.start()
        yield federation
    finally:
        federation.close()


async def _junk_into_redis(relays: TwoRelays) -> None:
    """Entries no genuine site writes, on the streams both relays read; the relays
    must drop or refuse them and go on to run the jobs below."""
    assert relays.redis is not None
    site = relays.fed.site_tls["site-1"]
    raw = redis_connection(parse_url(f"rediss://localhost:{relays.redis.port}"), site)
    junk: list[dict[bytes, bytes]] = [
        {b"garbage": b"1"},
        {b"v": b"1", b"env": b"", b"reply": b"\xff"},
        {b"v": b"1", b"env": b"\x07" * 1024, b"cert": b"not a certificate", b"sig": b""},
        {b"v": b"9", b"env": b"x" * (2 * 1024 * 1024)},
    ]
    try:
        for stream in ("flgate:req:ctl", "flgate:req:no-such-job"):
            for fields in junk:
                await raw.xadd(stream, fields)  # type: ignore[arg-type]
        await raw.zadd("flgate:keys", {"no-such-job": int(time.time() * 1000)})
        await raw.set("flgate:share:forged", b'{"payload": "e30=", "cert": "x", "signature": ""}')
        await raw.zadd("flgate:relays", {"forged": int(time.time() * 1000)})
    finally:
        await raw.aclose()
    await asyncio.sleep(3)  # a discovery round and a board exchange or two
    for name, process in relays.relays.items():
        assert process.poll() is None, f"relay-{name} died of junk in Redis"


async def test_two_relays_on_one_redis_each_run_a_job_to_the_direct_result(
    two_relays: TwoRelays, runs: dict[str, RunOutcome]
) -> None:
    a, b, shared = (two_relays.admin(v) for v in ("a", "b", "redis"))
    try:
        # Each relay learns through the board that the sites polled some relay.
        await asyncio.gather(wait_online(a, len(SITES)), wait_online(b, len(SITES)))
        await _junk_into_redis(two_relays)
        first = await a.submit(QUICKSTART, sites=SITES, name="on-relay-a")
        second = await b.submit(
            QUICKSTART, sites=SITES, name="on-relay-b", run_config="num-server-rounds=2"
        )
        done = await asyncio.gather(until_state(a, first.job_id), until_state(b, second.job_id))
        for info in done:
            assert info.state == "finished", info
        assert json.loads(done[0].result_json) == runs["direct-142"].result
        assert json.loads(done[1].result_json) == runs["direct-142-r2"].result

        # Each job ran on the relay it was submitted to, and on that one alone.
        root = two_relays.fed.root
        assert (root / "relay-a" / "jobs" / first.job_id / "superlink").is_dir()
        assert not (root / "relay-b" / "jobs" / first.job_id).exists()
        assert (root / "relay-b" / "jobs" / second.job_id / "superlink").is_dir()
        assert not (root / "relay-a" / "jobs" / second.job_id).exists()

        # Any relay lists both jobs (the other relay's within a board exchange or
        # two); through Redis, calls about a job reach the relay that owns it.
        expected = {first.job_id: "finished", second.job_id: "finished"}
        for admin in (a, b, shared):
            for _ in range(20):
                listed = {j.job_id: j.state for j in await admin.list_jobs()}
                if listed == expected:
                    break
                await asyncio.sleep(0.5)
            assert listed == expected
        assert (await b.get(first.job_id)).result_json == done[0].result_json
        for job in (first, second):
            site_log = await shared.logs(job.job_id, source="site-2")
            assert site_log.data, f"site-2's log of {job.name} did not reach its relay"
            assert await shared.download(job.job_id)
    finally:
        for admin in (a, b, shared):
            await admin.aclose()
