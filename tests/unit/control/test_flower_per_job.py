"""A Flower release per job: the job file names it, relay and sites must have it.

The relay picks the installation when the job is submitted and refuses the job, with
the site and what it has, when a site that reported its releases lacks it; the sites'
tasks carry the release and its Fleet dialect.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.control.jobs.archive import pack_app
from gateway.control.jobs.manager import JobManager
from gateway.control.jobs.spec import JobSpec
from gateway.control.jobs.store import DISPATCHED, FLOWER_KEY
from gateway.core.exceptions import ConfigError
from gateway.core.identity import AdminRole, Peer, Role
from gateway.proto.control_pb2 import PollTasksRequest, SiteStatus, SubmitJobRequest
from gateway.proto.envelope_pb2 import DIALECT_GRPC, DIALECT_HTTP
from tests.support.paths import QUICKSTART
from tests.support.relay import offline_job_manager

ADMIN = Peer("member@example.org", Role.ADMIN, admin_role=AdminRole.MEMBER)
SITES = frozenset({"site-1", "site-2"})
RELEASES = ((1, 42, 0), (1, 39, 0), (1, 39, 2))


def _app(tmp_path: Path, flower: str | None) -> Path:
    app = tmp_path / "app"
    shutil.copytree(QUICKSTART, app)
    line = f'flower: "{flower}"\n' if flower is not None else ""
    (app / "job.yaml").write_text(f"name: quickstart-numpy\nmin_sites: 2\n{line}")
    return app


async def _submit(manager: JobManager, app: Path) -> str:
    request = SubmitJobRequest(app_archive=pack_app(app).archive, sites=sorted(SITES))
    return (await manager.submit(ADMIN, request)).job_id


async def _report(manager: JobManager, site: str, *releases: str) -> None:
    status = SiteStatus(flower_version=releases[0], flower_versions=list(releases))
    await manager.poll(site, PollTasksRequest(wait_ms=0, status=status))


@pytest.mark.parametrize("value", ['"1.39"', '"1.42.0"', '""'])
def test_the_job_file_names_a_release_as_a_quoted_string(tmp_path: Path, value: str) -> None:
    app = _app(tmp_path, None)
    (app / "job.yaml").write_text(f"flower: {value}\n")
    assert JobSpec.load(app).flower == value.strip('"')


@pytest.mark.parametrize(
    ("value", "shown"),
    [("1.40", "the number 1.4 (quote it)"), ('"latest"', "'latest'"), ("[1]", "a list")],
)
def test_a_release_that_is_not_one_is_refused_with_what_to_write(
    tmp_path: Path, value: str, shown: str
) -> None:
    app = _app(tmp_path, None)
    (app / "job.yaml").write_text(f"flower: {value}\n")
    with pytest.raises(ConfigError, match="flower must be a quoted Flower release") as caught:
        JobSpec.load(app)
    assert shown in str(caught.value)


async def test_a_job_runs_with_the_newest_patch_of_the_release_it_names(tmp_path: Path) -> None:
    manager = offline_job_manager(tmp_path, known_sites=SITES, releases=RELEASES)
    try:
        await _report(manager, "site-1", "1.42.0", "1.39.0")
        job_id = await _submit(manager, _app(tmp_path, "1.39"))
        record = manager.store.require(job_id)
        assert record.runtime[FLOWER_KEY] == "1.39.2"
        assert manager.info(job_id).flower == "1.39.2"
        manager.store.update(job_id, state=DISPATCHED)
        (task,) = manager._sites.my_tasks("site-1")
        assert (task.flower_version, task.dialect) == ("1.39.2", DIALECT_GRPC)
    finally:
        await manager.aclose()


async def test_a_job_that_names_no_release_runs_with_the_relays_default(tmp_path: Path) -> None:
    manager = offline_job_manager(tmp_path, known_sites=SITES, releases=RELEASES)
    try:
        job_id = await _submit(manager, _app(tmp_path, None))
        manager.store.update(job_id, state=DISPATCHED)
        (task,) = manager._sites.my_tasks("site-2")
        assert (task.flower_version, task.dialect) == ("1.42.0", DIALECT_HTTP)
    finally:
        await manager.aclose()


async def test_a_release_the_relay_lacks_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    manager = offline_job_manager(tmp_path, known_sites=SITES, releases=RELEASES)
    try:
        with pytest.raises(ConfigError) as caught:
            await _submit(manager, _app(tmp_path, "1.35"))
        assert str(caught.value) == (
            "job quickstart-numpy needs Flower 1.35, but the relay has 1.42.0, 1.39.0, 1.39.2: "
            "start the relay with --flower-bin DIR of a Flower 1.35 environment"
        )
        assert manager.job_list() == []
        assert not any((tmp_path / "relay" / "jobs").glob("*"))
    finally:
        await manager.aclose()


async def test_a_release_a_site_lacks_is_refused_naming_the_site_and_what_it_has(
    tmp_path: Path,
) -> None:
    manager = offline_job_manager(tmp_path, known_sites=SITES, releases=RELEASES)
    try:
        await _report(manager, "site-1", "1.39.0")
        await _report(manager, "site-2", "1.42.0", "1.41.0")
        with pytest.raises(ConfigError) as caught:
            await _submit(manager, _app(tmp_path, "1.39"))
        assert str(caught.value) == (
            "job quickstart-numpy runs with Flower 1.39.2, which site site-2 lacks "
            "(it has 1.42.0, 1.41.0): install Flower 1.39 there (flgate site start "
            "--flower-bin DIR)"
        )
        # With no release named, the default's major.minor is what the sites need.
        with pytest.raises(ConfigError, match=r"site site-1 lacks \(it has 1\.39\.0\)"):
            await _submit(manager, _app(tmp_path / "again", None))
        assert manager.job_list() == []
    finally:
        await manager.aclose()
