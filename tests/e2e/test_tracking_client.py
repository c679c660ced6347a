"""Client-side tracking end to end: the ClientApps' SummaryWriter through real sites and
a real relay into the job's series, and what the relay and the sites refuse.

One federation (a relay, site-1 and site-2 running the jobs, site-3 in none) serves
the module. Two jobs of ``jobs/tracking-numpy`` run at once: the first is checked
scalar by scalar (``flgate job metrics``, the downloaded TensorBoard files, the
ClientApps' environment); the second is flooded with 100,000 records by a process
given that job's environment, and site-3 pushes records for it. The same app also runs
directly in plain Flower, where the writer falls back to local TensorBoard files.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
import tarfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.control.client import control_call
from gateway.control.jobs.spec import JobSpec
from gateway.core.exceptions import AuthError
from gateway.flower.process import descendants
from gateway.harness.local_run import run_app
from gateway.proto.control_pb2 import MetricPoint, PushTrackingRequest, PushTrackingResponse
from gateway.proto.envelope_pb2 import KIND_AGENT
from gateway.site.gateway import SiteGateway
from gateway.tracking.records import TrackingLimits
from gateway.tracking.writer import TOKEN_ENV, URL_ENV
from tests.support.federation import RunningFederation, running_federation, until_state, wait_online
from tests.support.flower_envs import flwr142
from tests.support.paths import REPO
from tests.support.tensorboard import as_stored, read_scalars

pytestmark = pytest.mark.e2e

TRACKING = REPO / "jobs" / "tracking-numpy"
SITES = ("site-1", "site-2")
CLIENT_TAGS = ("train_loss", "num_examples", "eval_loss")
ROUNDS = 3
FLOOD = 100_000
LIMITS = TrackingLimits()

FLOOD_SCRIPT = textwrap.dedent(
    """
    import json, time
    from gateway.tracking.writer import SummaryWriter
    started = time.monotonic()
    writer = SummaryWriter()
    for step in range(FLOOD):
        writer.add_scalar("flood", 1.0, step)
    added = time.monotonic() - started
    writer.close()
    print(json.dumps({"added": added, "lost": writer.lost}))
    """
).replace("FLOOD", str(FLOOD))


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFederation]:
    with running_federation(
        tmp_path_factory.mktemp("fed"), [*SITES, "site-3"], flower_bins={}
    ) as fed:
        yield fed


def _series(printed: str) -> dict[str, dict[int, float]]:
    return {
        tag: {int(step): value for step, value in points.items()}
        for tag, points in json.loads(printed)["series"].items()
    }


def _job_supernode(fed: RunningFederation, site: str, job_id: str) -> int | None:
    """The pid of ``site``'s SuperNode of ``job_id`` (it runs in the job's directory)."""
    job_dir = (fed.root / site / "jobs" / job_id).resolve()
    for pid in descendants(fed.sites[site].pid):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
            if any(a.endswith(b"/flower-supernode") for a in argv) and cwd == job_dir:
                return pid
    return None


def _environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().partition("=")[::2] for e in entries if b"=" in e)


def _clientapp_envs(fed: RunningFederation, site: str) -> list[dict[str, str]]:
    """The environments of the ``flwr-clientapp`` processes that ``site`` runs now."""
    found = []
    for pid in descendants(fed.sites[site].pid):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if any(b"flwr-clientapp" in a for a in argv):
                found.append(_environ(pid))
    return found


async def test_client_side_scalars_reach_the_jobs_series_and_floods_and_outsiders_are_refused(
    federation: RunningFederation, tmp_path: Path
) -> None:
    admin = federation.admin()
    outsider = SiteGateway(
        name="site-3", relay_url=federation.relay_url, tls=federation.site_tls["site-3"]
    )
    try:
        await wait_online(admin, 3)
        checked = await admin.submit(
            TRACKING, sites=list(SITES), name="checked", run_config=f"num-server-rounds={ROUNDS}"
        )
        flooded = await admin.submit(
            TRACKING, sites=list(SITES), name="flooded", run_config="num-server-rounds=4"
        )

        # While they run: the ClientApp processes (Flower starts them from the
        # SuperNode) hold the site's tracking URL and a token of their job's own.
        seen: dict[str, dict[str, str]] = {}
        supernode = None
        for _ in range(240):
            for site in SITES:
                for env in _clientapp_envs(federation, site):
                    if URL_ENV in env:
                        seen[site] = env
            if supernode is None:
                supernode = _job_supernode(federation, "site-1", flooded.job_id)
            if len(seen) == len(SITES) and supernode is not None:
                break
            await asyncio.sleep(0.25)
        assert set(seen) == set(SITES), "no flwr-clientapp process held FLGATE_TRACKING_URL"
        for env in seen.values():
            assert env[URL_ENV].startswith("http://127.0.0.1:") and len(env[TOKEN_ENV]) >= 32
        assert supernode is not None
        flood_env = _environ(supernode)
        assert flood_env[URL_ENV].startswith("http://127.0.0.1:")

        # A site that is not part of the job: refused, with the reason.
        with pytest.raises(AuthError, match="site site-3 is not part of job"):
            await control_call(
                outsider.client,
                KIND_AGENT,
                "PushTracking",
                PushTrackingRequest(
                    job_id=flooded.job_id, points=[MetricPoint(tag="x", step=1, value=1.0)]
                ),
                PushTrackingResponse,
            )

        # A flood from a process with the flooded job's environment (as a ClientApp of it).
        started = time.monotonic()
        flood = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            FLOOD_SCRIPT,
            env={**os.environ, URL_ENV: flood_env[URL_ENV], TOKEN_ENV: flood_env[TOKEN_ENV]},
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(flood.communicate(), 120)
        flood_seconds = time.monotonic() - started
        assert flood.returncode == 0
        report = json.loads(out)

        done = await asyncio.gather(
            *(until_state(admin, job.job_id, timeout=240) for job in (checked, flooded))
        )
        for info in done:
            assert info.state == "finished", info

        # Every client-side scalar, once per site and round, as <site>/<tag>.
        printed = await asyncio.to_thread(
            federation.cli, "job", "metrics", checked.job_id, "--json"
        )
        series = _series(printed)
        clients = {tag: by for tag, by in series.items() if tag.startswith(SITES)}
        assert sorted(clients) == sorted(f"{s}/{t}" for s in SITES for t in CLIENT_TAGS)
        for tag, by_round in clients.items():
            assert sorted(by_round) == list(range(1, ROUNDS + 1)), tag
        # They are the clients' own numbers: weighted by their examples, the sites'
        # train losses are the round's aggregate the ServerApp reported.
        for step in range(1, ROUNDS + 1):
            sizes = [clients[f"{s}/num_examples"][step] for s in SITES]
            losses = [clients[f"{s}/train_loss"][step] for s in SITES]
            weighted = sum(n * x for n, x in zip(sizes, losses, strict=True)) / sum(sizes)
            assert weighted == pytest.approx(series["train/train_loss"][step], rel=1e-12)

        # The job's TensorBoard files hold them too (as 32-bit floats).
        archive = await admin.download(checked.job_id)
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            tar.extractall(tmp_path / "downloaded", filter="data")
        scalars = read_scalars(tmp_path / "downloaded" / checked.job_id / "tensorboard")
        assert {t: v for t, v in scalars.items() if t.startswith(SITES)} == as_stored(clients)
        # The ClientApps wrote to the gateway, not to local files.
        assert not list((federation.root / "site-1").rglob("runs/tracking-numpy"))

        # The flood: the site took what the job's rate allowed (a burst, then the rate),
        # the writer's memory was bounded, and the job finished all the same.
        flooded_series = _series(
            await asyncio.to_thread(federation.cli, "job", "metrics", flooded.job_id, "--json")
        )
        kept = len(flooded_series.get("site-1/flood", {}))
        bound = LIMITS.burst + LIMITS.rate * flood_seconds
        assert 0 < kept <= bound, (kept, bound, report)
        assert report["added"] < 30  # add_scalar never waited for the site
    finally:
        await outsider.aclose()
        await admin.aclose()


async def test_the_same_app_runs_directly_in_plain_flower_with_local_tensorboard_files(
    tmp_path: Path,
) -> None:
    outcome = await run_app(
        JobSpec.load(TRACKING),
        mode="direct",
        workdir=tmp_path,
        install=flwr142(),
        run_config={"num-server-rounds": 2},
    )
    assert outcome.status == "finished:completed", outcome.output[-2000:]
    logdirs = sorted(tmp_path.rglob("runs/tracking-numpy/partition-*"))
    assert [d.name for d in logdirs] == ["partition-0", "partition-1"]
    for logdir in logdirs:
        scalars = read_scalars(logdir)
        assert sorted(scalars) == sorted(CLIENT_TAGS)
        assert all(sorted(by) == [1, 2] for by in scalars.values())
