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
import re
import shutil
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.control.client import control_call
from gateway.core.config import Limits, TLSConfig
from gateway.core.envelope import make_envelope, now_ms
from gateway.core.exceptions import AuthError, ConnectError
from gateway.core.identity import AdminRole, Role
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
from gateway.transport.common import frame_limit
from gateway.transport.framing import HEADER, MAGIC, FrameProtocol, FrameType, PeerError, Side
from gateway.transport.http_transport import PATH
from tests.support.federation import RunningFederation, until_state
from tests.support.federation import run_flgate as flgate
from tests.support.paths import QUICKSTART

pytestmark = pytest.mark.e2e

ADMIN = "admin@example.org"
ALICE = "alice@example.org"
BOB = "bob@example.org"
SCHEMES = ["grpcs", "https", "tcps"]
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFederation]:
    fed = RunningFederation.create(
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


def relay_urls(fed: RunningFederation) -> dict[str, str]:
    return load_kit(fed.kit("relay")).relay_urls


async def _online(fed: RunningFederation) -> set[str]:
    admin = fed.admin()
    try:
        return {s.name for s in await admin.list_sites() if s.online}
    finally:
        await admin.aclose()


async def _wait_online(fed: RunningFederation, names: set[str]) -> None:
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


async def relay_serves_everyone(fed: RunningFederation) -> None:
    """Every transport still answers a genuine admin and sites are still online."""
    assert fed.relay is not None and fed.relay.poll() is None, "the relay died"
    for url in relay_urls(fed).values():
        async with client(url, fed.admin_tls) as transport:
            sites = await control_call(
                transport, KIND_ADMIN, "ListSites", ListSitesRequest(), ListSitesResponse
            )
        assert {"site-1", "site-2"} <= {s.name for s in sites.sites if s.online}


# --- fuzzing every port, before the one Flower run -----------------------------------

FUZZ_EXAMPLES = 40
NOT_PROTOBUF = b"\x07"  # field 0, wire type 7: no protobuf message starts so
_DEFAULT_LIMIT = frame_limit(Limits())
assert _DEFAULT_LIMIT is not None
ENVELOPE_LIMIT: int = _DEFAULT_LIMIT
"""The relay's default frame limit: 64 MiB plus the envelope's overhead (a length just
over 64 MiB is within it, and waits for its body instead of being refused)."""
_HTTP_HEAD = f"POST {PATH} HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/x-protobuf\r\n"


def _tcps_frame(frame_type: int, length: int, payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, frame_type, 1, length) + payload


def _garbage(scheme: str) -> st.SearchStrategy[tuple[str, bytes]]:
    """(kind, bytes) that a peer with a valid certificate might send over TLS."""
    junk = st.binary(min_size=1, max_size=300).map(lambda b: ("junk", b))
    if scheme == "tcps":
        return st.one_of(
            junk,
            st.integers(ENVELOPE_LIMIT + 1, 2**32 - 1).map(
                lambda n: ("oversized", _tcps_frame(FrameType.REQUEST, n, b""))
            ),
            st.binary(min_size=1, max_size=64).map(
                lambda b: (
                    "malformed",
                    _tcps_frame(FrameType.REQUEST, len(b) + 1, NOT_PROTOBUF + b),
                )
            ),
            st.integers(5, 200).map(
                lambda n: ("truncated", _tcps_frame(FrameType.REQUEST, n, b"\x0a" * (n // 2)))
            ),
        )
    if scheme == "https":
        return st.one_of(
            junk,
            st.integers(ENVELOPE_LIMIT + 1, 2**40).map(
                lambda n: ("oversized", f"{_HTTP_HEAD}content-length: {n}\r\n\r\n".encode())
            ),
            st.binary(min_size=1, max_size=64).map(
                lambda b: (
                    "malformed",
                    f"{_HTTP_HEAD}content-length: {len(b) + 1}\r\n\r\n".encode() + NOT_PROTOBUF + b,
                )
            ),
        )
    return st.one_of(  # grpcs: HTTP/2 framing is grpc's own; a preface then junk
        junk, st.binary(max_size=200).map(lambda b: ("malformed", H2_PREFACE + b))
    )


def _exchange(port: int, data: bytes, context: ssl.SSLContext | None) -> bytes:
    """Send ``data`` (over TLS with ``context``); what came back before the relay
    closed or a second passed. A refused handshake counts as closed."""
    received = b""
    with contextlib.ExitStack() as stack:
        conn = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
        try:
            if context is not None:
                conn = stack.enter_context(context.wrap_socket(conn, server_hostname="localhost"))
            conn.sendall(data)
            conn.settimeout(1)
            while chunk := conn.recv(65536):
                received += chunk
        except OSError:  # ssl.SSLError, resets and timeouts included
            pass
    return received


def _check_refusal(scheme: str, kind: str, data: bytes, received: bytes) -> None:
    """Oversized and malformed frames get a clear error; the rest at least no answer."""
    if scheme == "tcps" and kind in ("oversized", "malformed"):
        reader = FrameProtocol(Side.CLIENT, max_payload=None)
        reader.receive_data(received)
        errors = [e for e in reader.events() if isinstance(e, PeerError)]
        assert errors, f"no error frame for {kind} {data[:40]!r}: {received[:80]!r}"
        expected = "exceeds" if kind == "oversized" else "envelope"
        assert expected in errors[0].message.lower(), errors[0]
    elif scheme == "https" and kind in ("oversized", "malformed"):
        status = received.split(b"\r\n", 1)[0]
        assert status.startswith(b"HTTP/1.1 4"), f"{kind}: {received[:200]!r}"
        if kind == "oversized":
            assert b" 413 " in status, status
    else:
        assert b"echo" not in received  # never mistaken for a call


@pytest.fixture(scope="module")
def fuzzed(fed: RunningFederation) -> int:
    """Feed random, malformed, truncated and oversized frames to every port of the
    relay, raw and after a genuine TLS handshake; each must be refused and the
    relay must live on. Returns the number of examples sent."""
    site = fed.site_tls["site-1"]
    context = ssl.create_default_context(cafile=str(site.ca_cert))
    context.load_cert_chain(str(site.cert), str(site.key))
    ports = {scheme: int(url.rpartition(":")[2]) for scheme, url in relay_urls(fed).items()}
    sent = 0

    cases = st.sampled_from(sorted(ports)).flatmap(
        lambda scheme: _garbage(scheme).map(lambda case: (scheme, *case))
    )

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None)
    @given(case=cases, tls=st.booleans())
    @example(case=("tcps", "oversized", _tcps_frame(FrameType.REQUEST, 2**32 - 1, b"")), tls=True)
    @example(case=("tcps", "malformed", _tcps_frame(FrameType.REQUEST, 1, NOT_PROTOBUF)), tls=True)
    @example(case=("tcps", "truncated", _tcps_frame(FrameType.REQUEST, 99, b"x")), tls=True)
    @example(
        case=("https", "oversized", f"{_HTTP_HEAD}content-length: {2**40}\r\n\r\n".encode()),
        tls=True,
    )
    @example(  # one byte over the limit: the counterexample CI found with 64 MiB + 1
        case=(
            "https",
            "oversized",
            f"{_HTTP_HEAD}content-length: {ENVELOPE_LIMIT + 1}\r\n\r\n".encode(),
        ),
        tls=True,
    )
    @example(
        case=(
            "https",
            "malformed",
            f"{_HTTP_HEAD}content-length: 1\r\n\r\n".encode() + NOT_PROTOBUF,
        ),
        tls=True,
    )
    @example(case=("grpcs", "malformed", H2_PREFACE + b"\x00" * 64), tls=True)
    def fuzz(case: tuple[str, str, bytes], tls: bool) -> None:
        nonlocal sent
        scheme, kind, junk = case
        received = _exchange(ports[scheme], junk, context if tls else None)
        if tls:
            _check_refusal(scheme, kind, junk, received)
        assert fed.relay is not None and fed.relay.poll() is None, "the relay died"
        sent += 1

    fuzz()
    return sent


# --- the one Flower run ------------------------------------------------------------


JOB: dict[str, str] = {}


def test_job_runs_from_kits_alone_and_members_manage_only_their_own(
    fed: RunningFederation, fuzzed: int
) -> None:
    """After the fuzz (``fuzzed``), the relay still runs a job to its end."""
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


async def test_certificate_of_another_ca_is_refused(fed: RunningFederation, tmp_path: Path) -> None:
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


async def test_expired_certificate_is_refused(fed: RunningFederation, tmp_path: Path) -> None:
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


async def test_certificate_naming_site_1_cannot_claim_site_2(fed: RunningFederation) -> None:
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


async def test_site_certificate_cannot_run_admin_commands(fed: RunningFederation) -> None:
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


async def test_edited_kit_is_refused(fed: RunningFederation, tmp_path: Path) -> None:
    kit = tmp_path / "edited"
    shutil.copytree(fed.kit("site-1"), kit)
    config = kit / "config.yaml"
    config.write_text(config.read_text().replace("localhost", "relay.attacker.example"))
    for argv in (["site", "start", "--kit", str(kit)], ["kit", "verify", str(kit)]):
        done = flgate(*argv, timeout=60)
        assert done.returncode == 3
        assert "config.yaml was changed after provisioning" in done.stderr
    await relay_serves_everyone(fed)


async def test_garbage_on_every_port_leaves_the_relay_serving(
    fed: RunningFederation, fuzzed: int
) -> None:
    assert fuzzed >= FUZZ_EXAMPLES
    await relay_serves_everyone(fed)


async def test_added_site_is_accepted_and_then_revoked_without_a_restart(
    fed: RunningFederation,
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

    # The new site joins a job: the run starts only once its SuperNode runs too.
    admin = fed.admin()
    try:
        info = await admin.submit(QUICKSTART, sites=["site-1", "site-2", "site-3"], name="site-3")
        running = await until_state(admin, info.job_id, ("running",), timeout=240)
        assert running.state == "running", running
        await admin.abort(info.job_id)
        assert (await until_state(admin, info.job_id, timeout=120)).state == "aborted"
    finally:
        await admin.aclose()

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


def test_no_private_key_reaches_a_log(fed: RunningFederation) -> None:
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
