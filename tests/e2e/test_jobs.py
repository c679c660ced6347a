"""Jobs end to end: a relay and three sites as real processes, driven by an admin client.

One federation serves every test of this module, in order: bad submissions are
refused, a failing app ends as failed while the relay keeps serving, two jobs
run at once over the one relay port with results equal to direct Flower (one with
Flower 1.42 over HTTP, one with Flower 1.39 over gRPC: relay, site-1 and site-2 have
both releases), a job naming a release that site-3 lacks is refused, a site outside
a job is refused, and an aborted job leaves nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.control.jobs.results import summary_from_result
from gateway.control.jobs.store import JobStore
from gateway.core.exceptions import ConfigError, JobError
from gateway.flower.process import descendants, port_open
from gateway.harness.local_run import RunOutcome
from gateway.proto.control_pb2 import JobInfo
from gateway.proto.envelope_pb2 import DIALECT_HTTP
from gateway.site.gateway import SiteGateway
from tests.support.federation import RunningFederation, running_federation, until_state, wait_online
from tests.support.flower_envs import flwr139, flwr142
from tests.support.paths import QUICKSTART
from tests.support.procs import processes_touching, wait_until_gone
from tests.support.tensorboard import as_stored, read_scalars

pytestmark = pytest.mark.e2e

FAILING_SERVER_APP = """
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    raise RuntimeError("boom: the ServerApp failed on purpose")
"""


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFederation]:
    both = [flwr142().bin_dir, flwr139().bin_dir]  # 1.42 is the default
    flower_bins = {"relay": both, "site-1": both, "site-2": both, "site-3": both[:1]}
    with running_federation(
        tmp_path_factory.mktemp("fed"), ["site-1", "site-2", "site-3"], flower_bins=flower_bins
    ) as fed:
        yield fed


def _needing_flower(app_dir: Path, release: str) -> Path:
    """A copy of the quickstart job whose job file asks for Flower ``release``."""
    shutil.copytree(QUICKSTART, app_dir)
    job_file = app_dir / "job.yaml"
    job_file.write_text(job_file.read_text() + f'flower: "{release}"\n')
    return app_dir


def _supernode_programs(fed: RunningFederation, site: str) -> list[str]:
    """The ``flower-supernode`` programs (full paths) that ``site``'s agent runs now."""
    agent = fed.sites[site]
    found = []
    for pid in descendants(agent.pid):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            found += [a.decode() for a in argv if a.endswith(b"/flower-supernode")]
    return sorted(found)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


async def _wait_online(fed: RunningFederation, count: int) -> None:
    admin = fed.admin()
    try:
        await wait_online(admin, count)
    finally:
        await admin.aclose()


async def _until_ended(fed: RunningFederation, job_id: str) -> JobInfo:
    admin = fed.admin()
    try:
        return await until_state(admin, job_id)
    finally:
        await admin.aclose()


async def test_bad_submissions_are_refused_with_what_to_fix(
    federation: RunningFederation, tmp_path: Path
) -> None:
    await _wait_online(federation, 3)
    admin = federation.admin()
    try:
        with pytest.raises(ConfigError, match=r"no pyproject\.toml"):
            await admin.submit(tmp_path)
        with pytest.raises(ConfigError, match=r"unknown site\(s\) site-9"):
            await admin.submit(QUICKSTART, sites=["site-1", "site-9"])
        with pytest.raises(ConfigError, match="not key=value"):
            await admin.submit(QUICKSTART, run_config="num-server-rounds")
        assert await admin.list_jobs() == []
    finally:
        await admin.aclose()


async def test_failing_app_ends_failed_with_its_error_visible(
    federation: RunningFederation, tmp_path: Path
) -> None:
    app = tmp_path / "failing-app"
    shutil.copytree(QUICKSTART, app)
    (app / "quickstart_numpy" / "server_app.py").write_text(FAILING_SERVER_APP)
    admin = federation.admin()
    try:
        info = await admin.submit(app, sites=["site-1", "site-2"], name="failing")
        ended = await _until_ended(federation, info.job_id)
        assert ended.state == "failed"
        assert "finished:failed" in ended.reason
        assert "boom: the ServerApp failed on purpose" in ended.reason
        logs = await admin.logs(info.job_id, source="server")
        assert b"boom: the ServerApp failed on purpose" in logs.data
    finally:
        await admin.aclose()


async def test_two_jobs_run_concurrently_with_results_equal_to_direct_flower(
    federation: RunningFederation, runs: dict[str, RunOutcome], tmp_path: Path
) -> None:
    admin = federation.admin()
    try:
        first = await admin.submit(QUICKSTART, sites=["site-1", "site-2"], name="three-rounds")
        second = await admin.submit(
            _needing_flower(tmp_path / "on-flower-139", "1.39"),
            sites=["site-1", "site-2"],
            name="two-rounds",
            run_config="num-server-rounds=2",
        )
        assert (first.flower, second.flower) == ("1.42.0", "1.39.0")
        # Both are running at the same time, on the same sites and relay port, each
        # with its own Flower release: its SuperLink on the relay, its SuperNodes here.
        for _ in range(120):
            states = {(await admin.get(j.job_id)).state for j in (first, second)}
            if states == {"running"}:
                break
            await asyncio.sleep(0.5)
        assert states == {"running"}, states
        for site in ("site-1", "site-2"):
            programs = _supernode_programs(federation, site)
            assert programs == sorted(
                [
                    str(flwr142().program("flower-supernode")),
                    str(flwr139().program("flower-supernode")),
                ]
            ), programs
        # The series grow while the job runs: round 1's metrics are there before it ends.
        live = None
        for _ in range(240):
            answer = await admin.metrics(first.job_id)
            if answer.job.state != "running":
                break
            if any(p.step == 1 for p in answer.points):
                live = answer
                break
            await asyncio.sleep(0.5)
        assert live is not None, "no point of round 1 arrived while the job ran"
        done = await asyncio.gather(*(_until_ended(federation, j.job_id) for j in (first, second)))
        for info in done:
            assert info.state == "finished", info
        for info, reference in zip(done, ("direct-142", "direct-142-r2"), strict=True):
            result = json.loads(info.result_json)
            assert result == runs[reference].result, f"{info.name} differs from {reference}"
            # `job metrics` has every per-round metric the app reported, and no other.
            printed = await asyncio.to_thread(
                federation.cli, "job", "metrics", info.job_id, "--json"
            )
            series = {
                tag: {int(step): value for step, value in points.items()}
                for tag, points in json.loads(printed)["series"].items()
            }
            assert series == summary_from_result(result).metrics, info.name
        assert json.loads(done[0].result_json)["rounds"] == 3
        assert json.loads(done[1].result_json)["rounds"] == 2

        listed = await asyncio.to_thread(federation.cli, "job", "list", "--json")
        assert {first.job_id, second.job_id} <= {j["job_id"] for j in json.loads(listed)}
        status = await asyncio.to_thread(federation.cli, "job", "status", first.job_id)
        assert f"job {first.job_id} (three-rounds): finished" in status
        assert "round 3/3" in status
        status = await asyncio.to_thread(federation.cli, "job", "status", second.job_id)
        assert "flower:     1.39.0" in status, status
        site_log = await admin.logs(first.job_id, source="site-1")
        assert site_log.data, "site-1's SuperNode log was not shipped to the relay"
        archive = await admin.download(first.job_id)
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            names = tar.getnames()
            summary = json.load(tar.extractfile(f"{first.job_id}/job.json"))  # type: ignore[arg-type]
            tar.extractall(tmp_path / "downloaded", filter="data")
        assert f"{first.job_id}/logs/server.log" in names
        assert summary["state"] == "finished"
        assert summary["result"] == runs["direct-142"].result
        # The job's TensorBoard files, read back with TensorBoard's reader, hold its series
        # (as 32-bit floats, TensorBoard's scalars; the job store keeps the full values).
        scalars = read_scalars(tmp_path / "downloaded" / first.job_id / "tensorboard")
        assert scalars == as_stored(summary_from_result(runs["direct-142"].result or {}).metrics)
    finally:
        await admin.aclose()


async def test_a_job_naming_a_release_a_site_lacks_is_refused_and_nothing_starts(
    federation: RunningFederation, tmp_path: Path
) -> None:
    admin = federation.admin()
    try:
        before = await admin.list_jobs()
        with pytest.raises(ConfigError) as caught:
            await admin.submit(
                _needing_flower(tmp_path / "app", "1.39"), sites=["site-1", "site-3"]
            )
        assert "runs with Flower 1.39.0, which site site-3 lacks (it has 1.42.0)" in str(
            caught.value
        )
        assert await admin.list_jobs() == before
        assert _supernode_programs(federation, "site-1") == []
        sites = json.loads(await asyncio.to_thread(federation.cli, "job", "sites", "--json"))
        offered = {s["name"]: s["status"]["flower_versions"] for s in sites}
        assert offered == {
            "site-1": ["1.42.0", "1.39.0"],
            "site-2": ["1.42.0", "1.39.0"],
            "site-3": ["1.42.0"],
        }
    finally:
        await admin.aclose()


async def test_site_outside_a_job_is_refused_and_aborted_job_leaves_nothing_running(
    federation: RunningFederation,
) -> None:
    admin = federation.admin()
    outsider = SiteGateway(
        name="site-3", relay_url=federation.relay_url, tls=federation.site_tls["site-3"]
    )
    try:
        info = await admin.submit(
            QUICKSTART, sites=["site-1", "site-2"], name="long", run_config="num-server-rounds=200"
        )
        for _ in range(240):
            current = await admin.get(info.job_id)
            if current.round >= 1:
                break
            await asyncio.sleep(0.5)
        assert current.state == "running" and current.round >= 1, current

        # site-3 has a valid certificate but is not part of the job.
        lgs = await outsider.open_job(info.job_id, DIALECT_HTTP)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://{lgs.address}/v1/fleet/pull-messages",
                data=b"",
                headers={"content-type": "application/protobuf"},
            ) as response,
        ):
            assert response.status == 403
            assert "not part of job" in (await response.json())["detail"]

        relay_job_dir = federation.root / "relay" / "jobs" / info.job_id
        store = JobStore(federation.root / "relay" / "jobs.db")
        superlink_address = store.get(info.job_id).runtime["control"]  # type: ignore[union-attr]
        store.close()
        assert await port_open(*_split(superlink_address))
        aborted = await admin.abort(info.job_id)
        assert aborted.state == "aborted"
        assert "aborted by admin@test" in aborted.reason
        with pytest.raises(JobError, match="already ended"):
            await admin.abort(info.job_id)
        # Nothing of the job is left: not its SuperLink, ServerApp, nor any SuperNode.
        for directory in (
            relay_job_dir,
            federation.root / "site-1" / "jobs" / info.job_id,
            federation.root / "site-2" / "jobs" / info.job_id,
        ):
            left = await asyncio.to_thread(
                wait_until_gone, functools.partial(processes_touching, directory), 30
            )
            assert not left, f"still running after abort: {left}"
        assert not await port_open(*_split(superlink_address)), "the SuperLink port is not free"
        # The relay and the sites keep serving: the job list still answers.
        assert (await admin.get(info.job_id)).state == "aborted"
    finally:
        await outsider.aclose()
        await admin.aclose()
