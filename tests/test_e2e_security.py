"""Provisioned kits against a running relay: a job from kits alone, and every refusal.

One federation serves the module, provisioned by ``flgate provision``'s code and
started from its kits alone (``flgate relay start --kit``, ``flgate site start
--kit``, no address given): a relay on grpcs, https and tcps, site-1 (grpcs),
site-2 (https) and three admins (a project admin, members alice and bob). One
Flower job runs, submitted by alice with ``flgate job submit --kit``; every
other test is a refusal, each followed by a check that the relay still serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway.config import TLSConfig
from gateway.control_client import control_call
from gateway.envelope import make_envelope, now_ms
from gateway.exceptions import AuthError, ConnectError
from gateway.identity import AdminRole, Role
from gateway.proto.control_pb2 import (
    ListJobsRequest,
    ListJobsResponse,
    ListSitesRequest,
    ListSitesResponse,
    PollTasksRequest,
    PollTasksResponse,
)
from gateway.proto.envelope_pb2 import DIALECT_HTTP, KIND_ADMIN, KIND_AGENT
from gateway.provisioning.certs import CertificateAuthority, write_participant
from gateway.provisioning.kit import load_kit, write_kit
from gateway.transport import TransportClient, connect

from .conftest import QUICKSTART
from .federation import Federation

pytestmark = pytest.mark.e2e

ADMIN = "admin@example.org"
ALICE = "alice@example.org"
BOB = "bob@example.org"
SCHEMES = ["grpcs", "https", "tcps"]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    fed = Federation.create(
        tmp_path_factory.mktemp("security"),
        ["site-1", "site-2"],
        admins={ADMIN: AdminRole.PROJECT_ADMIN, ALICE: AdminRole.MEMBER, BOB: AdminRole.MEMBER},
        transports=SCHEMES,
        site_transports={"site-2": "https"},
    )
    try:
        fed.start_relay(from_kit=True)
        fed.start_site("site-1", from_kit=True)
        fed.start_site("site-2", from_kit=True)
        asyncio.run(_wait_online(fed, {"site-1", "site-2"}))
        yield fed
    finally:
        fed.close()


def relay_urls(fed: Federation) -> dict[str, str]:
    return load_kit(fed.kit("relay")).relay_urls


async def _online(fed: Federation) -> set[str]:
    admin = fed.admin()
    try:
        return {s.name for s in await admin.list_sites() if s.online}
    finally:
        await admin.aclose()


async def _wait_online(fed: Federation, names: set[str]) -> None:
    for _ in range(120):
        if names <= await _online(fed):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"sites {names} did not come online: {await _online(fed)}")


@asynccontextmanager
async def client(url: str, tls: TLSConfig) -> AsyncIterator[TransportClient]:
    transport = connect(url, tls=tls)
    try:
        yield transport
    finally:
        await transport.aclose()


async def poll(url: str, tls: TLSConfig) -> PollTasksResponse:
    """One site agent's task poll, with ``tls``."""
    async with client(url, tls) as transport:
        request = PollTasksRequest()
        return await control_call(
            transport, KIND_AGENT, "PollTasks", request, PollTasksResponse, timeout=10
        )


async def relay_serves_everyone(fed: Federation) -> None:
    """Every transport still answers a genuine admin and sites are still online."""
    assert fed.relay is not None and fed.relay.poll() is None, "the relay died"
    for url in relay_urls(fed).values():
        async with client(url, fed.admin_tls) as transport:
            sites = await control_call(
                transport, KIND_ADMIN, "ListSites", ListSitesRequest(), ListSitesResponse
            )
        assert {"site-1", "site-2"} <= {s.name for s in sites.sites if s.online}


def flgate(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``flgate ARGV`` with no FLGATE_* settings from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --- the one Flower run ------------------------------------------------------------


JOB: dict[str, str] = {}


def test_job_runs_from_kits_alone_and_members_manage_only_their_own(fed: Federation) -> None:
    done = fed.run_cli(
        "job",
        "submit",
        str(QUICKSTART),
        "--sites",
        "site-1,site-2",
        "--run-config",
        "num-server-rounds=2",
        "--follow",
        kit=ALICE,
        from_kit=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"submitted job (\S+)", done.stdout)
    assert match, done.stdout
    job_id = JOB["id"] = match.group(1)
    assert f"job {job_id} (quickstart-numpy): finished" in done.stdout
    assert f"by {ALICE}" in done.stdout

    # bob (member) reads alice's job, but may neither abort nor download it.
    assert fed.run_cli("job", "status", job_id, kit=BOB, from_kit=True).returncode == 0
    for action, extra in (("abort", []), ("download", ["-o", str(fed.root / "bob-dl")])):
        refused = fed.run_cli("job", action, job_id, *extra, kit=BOB, from_kit=True)
        assert refused.returncode == 4, refused.stderr
        assert f"admin:{BOB} is a member and may {action} only the jobs it submitted" in (
            refused.stderr
        )
        assert f"submitted by {ALICE}" in refused.stderr
    assert not (fed.root / "bob-dl").exists()
    # alice downloads her own job; the project admin may download anyone's.
    for who in (ALICE, ADMIN):
        out = fed.root / f"dl-{who}"
        got = fed.run_cli("job", "download", job_id, "-o", str(out), kit=who, from_kit=True)
        assert got.returncode == 0, got.stderr
        assert (out / job_id).is_dir()


# --- refusals, each followed by a check that the relay still serves ----------------


async def test_certificate_of_another_ca_is_refused(fed: Federation, tmp_path: Path) -> None:
    other = CertificateAuthority.create("another-federation")
    own = fed.site_tls["site-1"]
    intruder = write_participant(tmp_path / "intruder", other, "site-1", Role.SITE)
    # It trusts our CA, so only the relay's own check can refuse it.
    intruder = TLSConfig(ca_cert=own.ca_cert, cert=intruder.cert, key=intruder.key)
    for url in relay_urls(fed).values():
        with pytest.raises((AuthError, ConnectError)):
            await poll(url, intruder)
    # A whole kit of another federation does not even trust our relay.
    foreign_admin = write_participant(tmp_path / "foreign-admin", other, ADMIN, Role.ADMIN)
    done = flgate(
        "job",
        "list",
        "--relay",
        relay_urls(fed)["https"],
        "--ca",
        str(foreign_admin.ca_cert),
        "--cert",
        str(foreign_admin.cert),
        "--key",
        str(foreign_admin.key),
    )
    assert done.returncode == 4
    assert "the certificate of the relay at" in done.stderr
    assert "failed verification" in done.stderr
    await relay_serves_everyone(fed)


async def test_expired_certificate_is_refused(fed: Federation, tmp_path: Path) -> None:
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)
    cert, key = fed.ca.issue("site-1", Role.SITE, validity=dt.timedelta(days=1), not_before=start)
    kit = tmp_path / "expired-kit"
    write_kit(kit, project=fed.workspace.project, ca=fed.ca, cert=cert, key=key)
    # The kit is refused before it dials, saying why...
    done = flgate("site", "start", "--kit", str(kit), timeout=60)
    assert done.returncode == 3
    assert "cert.pem expired on" in done.stderr and "ask the project admin" in done.stderr
    files = ["--ca", str(kit / "rootCA.pem"), "--cert", str(kit / "cert.pem")]
    files += ["--key", str(kit / "key.pem")]
    done = flgate("job", "list", "--relay", relay_urls(fed)["grpcs"], *files)
    assert done.returncode == 3 and "cert.pem expired on" in done.stderr
    # ...and the relay refuses the certificate itself on every transport.
    expired = TLSConfig(ca_cert=kit / "rootCA.pem", cert=kit / "cert.pem", key=kit / "key.pem")
    for url in relay_urls(fed).values():
        with pytest.raises((AuthError, ConnectError)):
            await poll(url, expired)
    await relay_serves_everyone(fed)


async def test_certificate_naming_site_1_cannot_claim_site_2(fed: Federation) -> None:
    for url in relay_urls(fed).values():
        envelope = make_envelope(
            job_id=JOB.get("id", "job"),
            site="site-2",
            method="PullMessages",
            dialect=DIALECT_HTTP,
            headers=[],
            body=b"",
            deadline_unix_ms=now_ms() + 10_000,
        )
        async with client(url, fed.site_tls["site-1"]) as transport:
            reply = await transport.send(envelope, timeout=10)
        assert reply.http_status == 403
        assert "certificate names site 'site-1' but the envelope claims 'site-2'" in reply.detail
    await relay_serves_everyone(fed)


async def test_site_certificate_cannot_run_admin_commands(fed: Federation) -> None:
    for url in relay_urls(fed).values():
        async with client(url, fed.site_tls["site-1"]) as transport:
            with pytest.raises(AuthError, match="it needs a admin certificate"):
                await control_call(
                    transport, KIND_ADMIN, "ListJobs", ListJobsRequest(), ListJobsResponse
                )
        with pytest.raises(AuthError, match="it needs a site certificate"):
            await poll(url, fed.admin_tls)
    site = fed.kit("site-1")
    done = flgate("job", "list", "--kit", str(site))
    assert done.returncode == 3 and "this command needs an admin's kit" in done.stderr
    site_files = ["--ca", str(site / "rootCA.pem"), "--cert", str(site / "cert.pem")]
    done = flgate("job", "list", "--relay", relay_urls(fed)["tcps"], *site_files, "--key",
                  str(site / "key.pem"))  # fmt: skip
    assert done.returncode == 4 and "site:site-1 may not call 'ListJobs'" in done.stderr
    await relay_serves_everyone(fed)


async def test_edited_kit_is_refused(fed: Federation, tmp_path: Path) -> None:
    kit = tmp_path / "edited"
    shutil.copytree(fed.kit("site-1"), kit)
    config = kit / "config.yaml"
    config.write_text(config.read_text().replace("localhost", "relay.attacker.example"))
    for argv in (["site", "start", "--kit", str(kit)], ["kit", "verify", str(kit)]):
        done = flgate(*argv, timeout=60)
        assert done.returncode == 3
        assert "config.yaml was changed after provisioning" in done.stderr
    await relay_serves_everyone(fed)


async def test_garbage_on_every_port_leaves_the_relay_serving(fed: Federation) -> None:
    site = fed.site_tls["site-1"]
    context = ssl.create_default_context(cafile=str(site.ca_cert))
    context.load_cert_chain(str(site.cert), str(site.key))
    junk = [
        b"\x00" * 64,
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello",
        bytes(range(256)),
    ]
    for url in relay_urls(fed).values():
        port = int(url.rpartition(":")[2])
        for data in junk:
            # Before TLS: bytes that are no handshake.
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(data)
                with contextlib.suppress(OSError):
                    raw.recv(1024)
            # After a genuine handshake with a valid certificate: bytes that are no protocol.
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                try:
                    with context.wrap_socket(raw, server_hostname="localhost") as tls:
                        tls.sendall(data * 4)
                        tls.settimeout(2)
                        tls.recv(1024)
                except OSError:  # ssl.SSLError and timeouts included
                    pass  # refused or closed: either is fine, the relay must live on
    await relay_serves_everyone(fed)


async def test_added_site_is_accepted_and_then_revoked_without_a_restart(
    fed: Federation,
) -> None:
    before = {
        p: p.read_bytes()
        for p in fed.workspace.kits.rglob("*")
        if p.is_file() and "workspace" not in p.parts
    }
    done = flgate(
        "provision", "add-site", "site-3", "-w", str(fed.workspace.root), "--transport", "tcps"
    )
    assert done.returncode == 0, done.stderr
    assert "site-3: issued" in done.stdout
    fed.site_tls["site-3"] = load_kit(fed.kit("site-3")).tls
    for kit in fed.workspace.kits.iterdir():
        verified = flgate(
            "kit", "verify", str(kit), "--ca", str(fed.workspace.state / "rootCA.pem")
        )
        assert verified.returncode == 0, verified.stderr
    assert all(path.read_bytes() == data for path, data in before.items())

    fed.start_site("site-3", from_kit=True)  # dials tcps, as its kit says
    await _wait_online(fed, {"site-1", "site-2", "site-3"})

    done = flgate(
        "provision", "revoke", "site-3", "-w", str(fed.workspace.root), "--reason", "key_compromise"
    )
    assert done.returncode == 0, done.stderr
    serial = f"{load_kit(fed.kit('site-3')).certificate.serial_number:x}"
    # The running relay re-reads its kit's crl.pem: refused on every transport.
    for url in relay_urls(fed).values():
        for _ in range(50):
            try:
                await poll(url, fed.site_tls["site-3"])
            except AuthError as exc:
                assert f"the certificate of site:site-3 (serial {serial}) was revoked" in str(exc)
                assert "(key_compromise)" in str(exc)
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"site-3 was not refused on {url}")
    # The site learns it on its next task poll (a long poll of up to 20 s).
    log = fed.root / "site-3.out"
    for _ in range(450):
        if "was revoked" in log.read_text():
            break
        await asyncio.sleep(0.1)
    assert f"(serial {serial}) was revoked" in log.read_text()
    fed.stop(fed.sites.pop("site-3"))
    await relay_serves_everyone(fed)


def test_no_private_key_reaches_a_log(fed: Federation) -> None:
    keys = [p for p in fed.workspace.root.rglob("*.key") if p.is_file()]
    keys += [p for p in fed.workspace.kits.rglob("key.pem")]
    bodies = [line for k in keys for line in k.read_text().splitlines() if "-----" not in line]
    logs = [p for p in fed.root.rglob("*") if p.is_file() and p.suffix in (".out", ".log")]
    assert logs
    for log in logs:
        text = log.read_text(errors="replace")
        assert "PRIVATE KEY" not in text, log
        for line in bodies:
            assert line not in text, f"a private key line is in {log}"
