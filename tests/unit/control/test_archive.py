"""Submitted apps are hostile input: archives, pyproject.toml and job files checked at submission.

The archives are real .tar.gz bytes built here. Long runs of zeros are built from
one compressed 1 MiB block repeated (:class:`ZeroRunGzip`), so a bomb that unpacks
to hundreds of MiB costs the test kilobytes and milliseconds; small limits keep the
refusals fast. Whether decompression stopped early is read from how much of the
archive the unpacker consumed (:class:`CountingReader`), not from the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
import tarfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.control.admin import AdminClient
from gateway.control.jobs.archive import (
    MAX_DEPTH,
    ArchiveLimits,
    LeftOut,
    pack_app,
    unpack_app,
)
from gateway.control.jobs.manager import JobManager
from gateway.control.jobs.spec import JobSpec, check_flower_app
from gateway.control.relay_app import RelayApp
from gateway.core.config import MiB
from gateway.core.exceptions import ConfigError
from gateway.core.identity import AdminRole, Peer, Role
from gateway.flower.install import FlowerInstalls
from gateway.proto.control_pb2 import SubmitJobRequest
from tests.support.archives import (
    PYPROJECT,
    CountingReader,
    ZeroRunGzip,
    app_members,
    file_info,
    left_on_disk,
    legal_app_with_data,
    tar_gz,
)
from tests.support.paths import REPO
from tests.support.pki import FederationKits
from tests.support.relay import flower_not_installed, offline_job_manager

QUICKSTART = REPO / "jobs" / "quickstart-numpy"
SITES = frozenset({"site-1", "site-2"})
ADMIN = Peer("member@example.org", Role.ADMIN, admin_role=AdminRole.MEMBER)


def refused(archive: bytes | CountingReader, destination: Path, **limits: int) -> str:
    """Unpack, expecting a refusal; return its message after checking nothing is left."""
    with pytest.raises(ConfigError) as caught:
        unpack_app(archive, destination, limits=ArchiveLimits(**limits))
    assert not destination.exists()
    message = str(caught.value)
    assert str(destination) not in message  # never the relay's own paths
    return message


# --- unpacking ---------------------------------------------------------------------


def test_a_packed_app_unpacks_to_the_same_files(tmp_path: Path) -> None:
    packed = pack_app(QUICKSTART)
    unpacked = unpack_app(packed.archive, tmp_path / "app")
    names = sorted(str(p.relative_to(tmp_path / "app")) for p in (tmp_path / "app").rglob("*"))
    assert "pyproject.toml" in names and "quickstart_numpy/server_app.py" in names
    assert unpacked.members == packed.files
    original = (QUICKSTART / "quickstart_numpy" / "server_app.py").read_bytes()
    assert (tmp_path / "app" / "quickstart_numpy" / "server_app.py").read_bytes() == original
    assert unpacked.bytes == sum(
        (QUICKSTART / n).stat().st_size for n in names if (QUICKSTART / n).is_file()
    )


def test_a_gzip_bomb_is_refused_before_it_is_decompressed(tmp_path: Path) -> None:
    gz = ZeroRunGzip()
    gz.member(file_info("bomb.bin", 256 * MiB))
    bomb = CountingReader(gz.finish())
    assert len(bomb.getvalue()) < MiB  # a small archive that unpacks 256 times bigger

    message = refused(bomb, tmp_path / "app", unpacked_bytes=MiB)
    assert "'bomb.bin'" in message and "limit of 1 MiB" in message
    # Only the start of the archive was read: its header said enough.
    assert bomb.taken < len(bomb.getvalue()) // 8


def test_a_bomb_of_small_members_stops_at_the_first_member_over_the_limit(
    tmp_path: Path,
) -> None:
    gz = ZeroRunGzip()
    for index in range(256):
        gz.member(file_info(f"part-{index:03}.bin", MiB))
    bomb = CountingReader(gz.finish())

    message = refused(bomb, tmp_path / "app", unpacked_bytes=4 * MiB)
    assert "'part-004.bin'" in message and "limit of 4 MiB" in message
    # Decompression stopped after about 5 of the 256 MiB: a fraction of the archive was read.
    assert bomb.taken < len(bomb.getvalue()) // 4


def test_a_header_that_claims_gigabytes_of_name_is_not_read_into_memory(tmp_path: Path) -> None:
    # A GNU long-name header is no file: the old check, summing the files' sizes, never
    # counted it, and tarfile would have read all 128 MiB of "name" into memory.
    gz = ZeroRunGzip()
    gz.member(file_info("pyproject.toml", 3), b"x=1")
    long_name = file_info("././@LongLink", 128 * MiB, tarfile.GNUTYPE_LONGNAME)
    gz.write(long_name.tobuf(tarfile.GNU_FORMAT))
    gz.zeros(long_name.size)
    gz.write(file_info("x", 0).tobuf(tarfile.GNU_FORMAT))
    bomb = CountingReader(gz.finish())

    message = refused(bomb, tmp_path / "app")
    assert "after member 'pyproject.toml'" in message and "64 KiB" in message
    assert bomb.taken < len(bomb.getvalue()) // 8


def test_a_pax_size_that_contradicts_the_ustar_header_is_the_one_counted(tmp_path: Path) -> None:
    info = file_info("small.txt", 10)
    info.pax_headers = {"size": str(10 * 1024 * MiB)}  # the pax record is what tarfile reads
    gz = ZeroRunGzip()
    gz.write(info.tobuf(tarfile.PAX_FORMAT))
    gz.zeros(MiB)
    message = refused(gz.finish(), tmp_path / "app")
    assert "'small.txt' declares 10737418240 bytes" in message and "256 MiB" in message


def test_a_file_cut_short_of_its_declared_size_is_refused_and_removed(tmp_path: Path) -> None:
    gz = ZeroRunGzip()
    gz.member(*app_members()[0])
    gz.write(file_info("cut.bin", MiB).tobuf(tarfile.PAX_FORMAT))
    gz.zeros(1000)
    message = refused(gz.finish(end_of_archive=False), tmp_path / "app")
    assert "not a valid .tar.gz" in message and "'cut.bin'" in message


def test_a_truncated_gzip_stream_is_refused(tmp_path: Path) -> None:
    archive = legal_app_with_data(4 * MiB)
    message = refused(archive[: len(archive) // 2], tmp_path / "app")
    assert "not a valid .tar.gz" in message


def test_bytes_that_are_no_archive_are_refused(tmp_path: Path) -> None:
    assert "not a valid .tar.gz" in refused(b"PK\x03\x04 a zip file", tmp_path / "app")


def test_too_many_members_are_refused_at_the_first_one_over(tmp_path: Path) -> None:
    archive = tar_gz(*[(file_info(f"f-{i:03}"), b"") for i in range(11)])
    message = refused(archive, tmp_path / "app", members=10)
    assert "'f-010'" in message and "limit of 10 members" in message


def test_a_member_nested_too_deep_is_refused(tmp_path: Path) -> None:
    deep = "/".join(["d"] * MAX_DEPTH + ["x.py"])
    message = refused(tar_gz((file_info(deep, 1), b"x")), tmp_path / "app")
    assert f"{MAX_DEPTH + 1} levels deep, over the limit of {MAX_DEPTH}" in message
    # At the limit it unpacks.
    ok = "/".join(["d"] * (MAX_DEPTH - 1) + ["x.py"])
    assert unpack_app(tar_gz((file_info(ok, 1), b"x")), tmp_path / "ok").members == 1


def test_a_member_with_too_long_a_path_is_refused(tmp_path: Path) -> None:
    long_path = "/".join(["p" * 220] * 5)  # 1104 bytes, each part within NAME_MAX
    message = refused(tar_gz((file_info(long_path, 1), b"x")), tmp_path / "app")
    assert "path of 1104 bytes, over the limit of 1024" in message
    assert len(message) < 400  # the name is cut short in the message


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = file_info(name, 0, kind)
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("member", "needle"),
    [
        (_special("data", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link (to '/etc/passwd')"),
        (_special("hard", tarfile.LNKTYPE, "pyproject.toml"), "hard link"),
        (_special("tty", tarfile.CHRTYPE), "device or named pipe"),
        (_special("disk", tarfile.BLKTYPE), "device or named pipe"),
        (_special("pipe", tarfile.FIFOTYPE), "device or named pipe"),
        (file_info("/etc/cron.d/x", 1), "unsafe path"),
        (file_info("../outside", 1), "unsafe path"),
        (file_info("app/../../outside", 1), "unsafe path"),
    ],
)
def test_links_devices_and_escaping_paths_are_refused(
    tmp_path: Path, member: tarfile.TarInfo, needle: str
) -> None:
    archive = tar_gz(*app_members(), (member, b"x" * member.size))
    message = refused(archive, tmp_path / "app")
    assert needle in message and repr(member.name) in message
    assert left_on_disk(tmp_path) == []


def test_a_member_that_comes_twice_is_refused(tmp_path: Path) -> None:
    archive = tar_gz((file_info("a.py", 1), b"1"), (file_info("a.py", 1), b"2"))
    assert "'a.py' is in the archive twice" in refused(archive, tmp_path / "app")


def test_an_unpack_given_up_stops_and_leaves_nothing(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(ConfigError, match="given up"):
        unpack_app(legal_app_with_data(MiB), tmp_path / "app", stop=stop)
    assert left_on_disk(tmp_path) == []


# --- the relay's submit path -------------------------------------------------------


async def _submit(manager: JobManager, archive: bytes, **fields: Any) -> None:
    await manager.submit(ADMIN, SubmitJobRequest(app_archive=archive, **fields))


def _bomb(size: int = 300 * MiB) -> bytes:
    gz = ZeroRunGzip()
    for info, data in app_members():
        gz.member(info, data)
    gz.member(file_info("tiny_app/weights.bin", size))
    return gz.finish()


@pytest.mark.parametrize(
    ("archive", "fields", "needle"),
    [
        (_bomb(), {"sites": ["site-1"]}, "limit of 256 MiB"),
        (
            tar_gz(*app_members(pyproject="[project]\nname = 'x'\nversion = '1'\n")),
            {"sites": ["site-1"]},
            r"needs a \[tool.flwr.app\] table for `flwr run`; \[tool\] is missing",
        ),
        (
            tar_gz(*app_members(job_file="name: {a: 1}\n")),
            {"sites": ["site-1"]},
            "name must be 1 to 64 letters",
        ),
        (tar_gz(*app_members(job_file="min_sites: 3\n")), {"sites": ["site-1"]}, "at least 3"),
        (tar_gz(*app_members()), {"min_sites": 2}, "needs 2 sites but 0 are online"),
        (tar_gz(*app_members()), {"sites": ["site-9"]}, r"unknown site\(s\) site-9"),
        (tar_gz(*app_members()), {"sites": ["site-1"], "run_config": "rounds"}, "key=value"),
        (tar_gz(*app_members()), {"sites": ["site-1"], "time_limit": 1e308}, "at most 604800"),
        (tar_gz(*app_members()), {"sites": ["site-1"], "name": "a\x1b[2J"}, "the job's name"),
    ],
)
async def test_a_refused_submission_leaves_nothing_on_the_relay(
    tmp_path: Path, archive: bytes, fields: dict[str, Any], needle: str
) -> None:
    manager = offline_job_manager(tmp_path, known_sites=SITES)
    try:
        with pytest.raises(ConfigError, match=needle) as caught:
            await _submit(manager, archive, **fields)
        assert str(tmp_path) not in str(caught.value)
        assert left_on_disk(manager.workspace / "jobs") == []
        assert manager.job_list() == []
    finally:
        manager.store.close()


async def test_an_accepted_submission_keeps_its_app_and_record(tmp_path: Path) -> None:
    manager = offline_job_manager(tmp_path, known_sites=SITES)
    try:
        await _submit(manager, tar_gz(*app_members(job_file="name: tiny\n")), sites=["site-1"])
        (job,) = manager.job_list()
        assert (job.name, list(job.sites)) == ("tiny", ["site-1"])
        assert (manager.job_dir(job.job_id) / "app" / "pyproject.toml").read_text() == PYPROJECT
    finally:
        manager.store.close()


@contextlib.asynccontextmanager
async def ticking(every: float, gaps: list[float]) -> AsyncIterator[None]:
    """A task that wakes every ``every`` seconds and records how long each wait really took."""

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_event_loop_keeps_running_while_an_archive_unpacks(tmp_path: Path) -> None:
    archive = legal_app_with_data(192 * MiB)  # within the limit; a second or so to unpack
    manager = offline_job_manager(tmp_path, known_sites=SITES)
    gaps: list[float] = []
    try:
        async with ticking(0.01, gaps):
            await _submit(manager, archive, sites=["site-1"])
        (job,) = manager.job_list()
        data = manager.job_dir(job.job_id) / "app" / "tiny_app" / "data.bin"
        assert data.stat().st_size == 192 * MiB
        assert gaps and max(gaps) < 0.25, f"the event loop stalled {max(gaps):.3f} s"
    finally:
        manager.store.close()


async def test_a_submission_given_up_mid_unpack_leaves_nothing(tmp_path: Path) -> None:
    manager = offline_job_manager(tmp_path, known_sites=SITES)
    jobs = manager.workspace / "jobs"
    try:
        submit = asyncio.create_task(
            _submit(manager, legal_app_with_data(192 * MiB), sites=["site-1"])
        )
        while not any(jobs.glob("*/app/tiny_app")):
            await asyncio.sleep(0.005)
        submit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await submit
        deadline = time.monotonic() + 30
        while left_on_disk(jobs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert left_on_disk(jobs) == []
        assert manager.job_list() == []
    finally:
        manager.store.close()


# --- pyproject.toml and the job file ---------------------------------------------


@pytest.mark.parametrize(
    ("pyproject", "needle"),
    [
        ("[project\nname = 'x'", "not valid TOML"),
        ("x = " + "9" * 5000, "not valid TOML"),
        ("x = " + "[" * 3000 + "]" * 3000, "nests its values too deeply"),
        (PYPROJECT.replace('version = "1.0.0"\n', ""), r"\[project\] needs version"),
        (
            PYPROJECT.replace('publisher = "flgate"', "publisher = 1"),
            "needs publisher.*got a number",
        ),
        (PYPROJECT.replace('publisher = "flgate"', ""), r"\[tool.flwr.app\] needs publisher"),
        (
            PYPROJECT.replace('clientapp = "tiny_app.client_app:app"', ""),
            r"\[tool.flwr.app.components\] needs clientapp, .*'module:attribute'",
        ),
        (
            PYPROJECT.replace("tiny_app.server_app:app", "tiny_app/server_app.py"),
            r"serverapp in \[tool.flwr.app.components\] must be 'module:attribute'",
        ),
        (
            "[project]\nname='x'\nversion='1'\n[tool]\nflwr = 3\n",
            r"needs a \[tool.flwr.app\] table.*; \[tool.flwr\] is a number",
        ),
        ("[tool.flwr.app]\npublisher='x'\n", r"needs a \[project\] table.*is missing"),
    ],
)
def test_a_pyproject_that_flwr_run_would_refuse_is_refused_naming_the_field(
    tmp_path: Path, pyproject: str, needle: str
) -> None:
    (tmp_path / "pyproject.toml").write_text(pyproject)
    with pytest.raises(ConfigError, match=needle) as caught:
        check_flower_app(tmp_path)
    assert str(tmp_path) not in str(caught.value)


def test_the_bundled_jobs_pass_the_pyproject_check() -> None:
    for job in sorted((REPO / "jobs").iterdir()):
        check_flower_app(job)


def _alias_bomb(key: str) -> str:
    """A value of 2**30 elements in a few hundred bytes: YAML aliases share, a repr copies."""
    anchors = ["&a0 [x, x]"] + [f"&a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, 30)]
    return f"{key}: [{', '.join(anchors)}]"


@pytest.mark.parametrize(
    ("job_file", "needle"),
    [
        ("name: {a: 1}", "name must be 1 to 64 letters.*got a mapping"),
        ("name: 'two words'", "name must be 1 to 64 letters.*'two words'"),
        ("name: ''", "name must be"),
        ("time_limit: 1e308", "time_limit must be a number.*got the string '1e308'"),
        ("time_limit: 1.0e+308", "time_limit must be a number of seconds above 0 and at most"),
        ("time_limit: 604801", "at most 604800 \\(7 days\\).*got 604801"),
        ("time_limit: .nan", "time_limit must be"),
        ("time_limit: -1", "time_limit must be"),
        ("time_limit: true", "time_limit must be.*got a boolean"),
        ("time_limit: '900'", "time_limit must be.*got the string '900'"),
        ("min_sites: 2.5", "min_sites must be >= 1, an integer"),
        ("min_sites: " + "9" * 5000, "not valid YAML: Exceeds the limit"),
        ("min_sites: '2'", "min_sites must be >= 1, an integer.*got a string"),
        ("run_config: {lr: .inf}", "numbers or strings; lr is inf"),
        ("run_config: {'two words': 1}", "a name is letters"),
        ("run_config: {a: {b: 1}}", "numbers or strings; a is a mapping"),
        ("node_auth: [1]", "node_auth must be true or false, not a list"),
        (_alias_bomb("name"), "name must be.*got a list"),
        (_alias_bomb("node_auth"), "node_auth must be true or false, not a list"),
        ("name: " + "[" * 2000 + "]" * 2000, "more than 256 '\\[' and '{'"),
        ("name: " + "[" * 200 + "]" * 200, "name must be.*got a list"),
    ],
)
def test_wrong_types_in_the_job_file_are_refused_naming_the_field(
    tmp_path: Path, job_file: str, needle: str
) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "job.yaml").write_text(job_file)
    with pytest.raises(ConfigError, match=needle) as caught:
        JobSpec.load(tmp_path, shown_as="the submitted app")
    assert str(tmp_path) not in str(caught.value)
    assert "job.yaml" in str(caught.value)


def test_a_job_name_defaults_to_a_safe_form_of_the_directory_name(tmp_path: Path) -> None:
    app = tmp_path / "my app (copy)"
    app.mkdir()
    (app / "pyproject.toml").write_text(PYPROJECT)
    assert JobSpec.load(app).name == "my-app-copy"


# --- packing in the CLI ----------------------------------------------------------


def test_packing_leaves_out_links_special_files_and_caches_and_says_so(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "tiny_app" / "__pycache__").mkdir(parents=True)
    (app / "pyproject.toml").write_text(PYPROJECT)
    (app / "tiny_app" / "server_app.py").write_text("app = None\n")
    (app / "tiny_app" / "__pycache__" / "server_app.cpython-311.pyc").write_bytes(b"\0")
    (app / "tiny_app" / "stale.pyc").write_bytes(b"\0")
    (app / ".venv" / "lib").mkdir(parents=True)
    (app / ".git").mkdir()
    (app / "data").symlink_to("/x")
    os.mkfifo(app / "pipe")

    packed = pack_app(app)
    assert [str(item) for item in packed.left_out] == [
        ".git (version-control directory)",
        ".venv (virtual environment)",
        "data -> /x (symbolic link)",
        "pipe (named pipe)",
        "tiny_app/__pycache__ (cache directory)",
        "tiny_app/stale.pyc (compiled Python)",
    ]
    with tarfile.open(fileobj=io.BytesIO(packed.archive), mode="r:gz") as tar:
        assert tar.getnames() == ["pyproject.toml", "tiny_app/server_app.py"]
    assert packed.files == 2


def test_packing_a_directory_nested_a_thousand_levels_is_a_clear_error(tmp_path: Path) -> None:
    levels = [tmp_path / "app"]
    levels[0].mkdir()
    (levels[0] / "pyproject.toml").write_text(PYPROJECT)
    for _ in range(1000):  # os.makedirs would recurse a thousand times too
        levels.append(levels[-1] / "d")
        levels[-1].mkdir()
    (levels[-1] / "bottom.py").write_text("")
    try:
        with pytest.raises(ConfigError, match=f"nests deeper than {MAX_DEPTH} levels at 'd/d/d"):
            pack_app(tmp_path / "app")
    finally:
        # Removed here, bottom up: pytest's own clean-up (shutil.rmtree) recurses once
        # per level, fails with a RecursionError and leaves the tree behind.
        (levels[-1] / "bottom.py").unlink()
        (levels[0] / "pyproject.toml").unlink()
        for level in reversed(levels):
            level.rmdir()


def test_packing_refuses_what_the_relay_would_refuse(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    for index in range(4):
        (app / f"f{index}").write_bytes(b"x")
    with pytest.raises(ConfigError, match="more than 3 files"):
        pack_app(app, limits=ArchiveLimits(members=3))
    with pytest.raises(ConfigError, match=r"holds 0\.0 MiB of files, over the relay.s limit"):
        pack_app(app, limits=ArchiveLimits(unpacked_bytes=3))


async def test_job_submit_prints_what_it_left_out(
    tmp_path: Path, federation: FederationKits
) -> None:
    app = tmp_path / "tiny"
    (app / "tiny_app").mkdir(parents=True)
    (app / "pyproject.toml").write_text(PYPROJECT)
    (app / "tiny_app" / "__init__.py").write_text("")
    (app / "data").symlink_to("/x")
    relay = RelayApp(
        listen_urls=["tcps://127.0.0.1:0"],
        tls=federation.relay,
        workspace=tmp_path / "relay",
        installs=FlowerInstalls((flower_not_installed(tmp_path / "no-flower-here"),)),
        known_sites=SITES,
    )
    await relay.start()
    try:
        admin = federation.admin
        cli = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "job",
            "submit",
            str(app),
            "--sites",
            "site-1",
            "--relay",
            f"tcps://127.0.0.1:{relay.ports[0]}",
            "--ca",
            str(admin.ca_cert),
            "--cert",
            str(admin.cert),
            "--key",
            str(admin.key),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=REPO,
        )
        output, _ = await asyncio.wait_for(cli.communicate(), 60)
        text = output.decode()
        assert cli.returncode == 0, text
        assert "left out 1 file: data -> /x (symbolic link)" in text
        (job,) = relay.manager.job_list()
        assert f"submitted job {job.job_id} (tiny)" in text
        assert not (relay.manager.job_dir(job.job_id) / "app" / "data").exists()
    finally:
        await relay.aclose()


async def test_the_admin_client_refuses_a_broken_app_before_uploading(
    tmp_path: Path, federation: FederationKits
) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\nversion = '1'\n")
    # Nothing listens there: the refusal comes before any connection is tried.
    client = AdminClient(relay_url="tcps://127.0.0.1:9", tls=federation.admin)
    left_out: list[LeftOut] = []
    try:
        with pytest.raises(ConfigError, match=r"\[tool.flwr.app\] table"):
            await client.submit(tmp_path, on_left_out=left_out.extend)
    finally:
        await client.aclose()
    assert left_out == []
