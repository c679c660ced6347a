"""Flower node authentication pieces without Flower processes: keys, signatures, TLS upstream.

Flower itself is imported here (never by the gateway) to prove that the keys,
headers and signatures we make are the ones Flower's SuperLink accepts.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import grpc.aio
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gateway.control.jobs.manager import JobManager
from gateway.control.jobs.spec import JobSpec
from gateway.control.jobs.store import DISPATCHED, JobRecord
from gateway.core.config import LoopbackTLS
from gateway.core.envelope import make_envelope, now_ms, upstream_reply
from gateway.core.exceptions import ConfigError, JobError
from gateway.flower.flwr_cli import write_flwr_home
from gateway.flower.node_auth import (
    PUBLIC_KEY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    fingerprint,
    fleet_auth_headers,
    flower_public_key,
    generate_node_key,
    load_private_key,
    load_public_key,
    sign_timestamp,
    verify_timestamp,
    write_loopback_tls,
)
from gateway.proto.control_pb2 import PollTasksRequest
from gateway.proto.envelope_pb2 import (
    DIALECT_GRPC,
    DIALECT_HTTP,
    ORIGIN_GATEWAY,
    ORIGIN_UPSTREAM,
    Dialect,
    Envelope,
    Reply,
)
from gateway.relay.lgc import upstream_for
from gateway.site.gateway import create_lgs
from tests.support.relay import offline_job_manager


@pytest.fixture
def node_key(tmp_path: Path) -> tuple[Path, str]:
    line = generate_node_key(tmp_path / "flower-node.key", tmp_path / "flower-node.pub")
    return tmp_path / "flower-node.key", line


def test_generated_key_pair_round_trips_in_the_formats_flower_reads(
    node_key: tuple[Path, str], tmp_path: Path
) -> None:
    path, line = node_key
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert line.startswith("ecdsa-sha2-nistp384 ")
    assert (tmp_path / "flower-node.pub").read_text() == line + "\n"
    private = load_private_key(path)
    assert isinstance(private.curve, ec.SECP384R1)
    public = load_public_key(line)
    assert public.public_numbers() == private.public_key().public_numbers()
    assert flower_public_key(public).startswith(b"-----BEGIN PUBLIC KEY-----")
    assert fingerprint(public).startswith("SHA256:")
    assert fingerprint(public) == fingerprint(load_public_key(line.encode() + b" a comment\n"))


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_keys_made_by_ssh_keygen_load_and_have_the_same_fingerprint(tmp_path: Path) -> None:
    key = tmp_path / "node"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(key)], check=True
    )
    public = load_private_key(key).public_key()
    line = (tmp_path / "node.pub").read_text()
    assert load_public_key(line).public_numbers() == public.public_numbers()
    shown = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(tmp_path / "node.pub")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert fingerprint(public) in shown


def test_signature_over_the_timestamp_verifies_here_and_in_flower(
    node_key: tuple[Path, str],
) -> None:
    private = load_private_key(node_key[0])
    when = dt.datetime(2026, 11, 21, 9, 30, tzinfo=dt.timezone.utc)
    headers = fleet_auth_headers(private, now=when)
    assert headers[TIMESTAMP_HEADER] == when.isoformat()
    pem = base64.b64decode(headers[PUBLIC_KEY_HEADER], validate=True)
    signature = base64.b64decode(headers[SIGNATURE_HEADER], validate=True)
    public = serialization.load_pem_public_key(pem)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert verify_timestamp(public, headers[TIMESTAMP_HEADER], signature)
    assert not verify_timestamp(public, when.replace(second=1).isoformat(), signature)
    other = ec.generate_private_key(ec.SECP384R1())
    assert not verify_timestamp(other.public_key(), headers[TIMESTAMP_HEADER], signature)
    assert verify_timestamp(public, "t", sign_timestamp(private, "t"))

    asymmetric = pytest.importorskip("flwr.supercore.primitives.asymmetric")
    flower_key = asymmetric.bytes_to_public_key(pem)
    assert asymmetric.verify_signature(flower_key, headers[TIMESTAMP_HEADER].encode(), signature)


def test_unusable_private_keys_are_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the Flower node key"):
        load_private_key(tmp_path / "missing.key")

    path, _ = tmp_path / "open.key", generate_node_key(tmp_path / "open.key")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_private_key(path)

    pkcs8 = tmp_path / "pkcs8.key"
    pkcs8.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(pkcs8, 0o600)
    with pytest.raises(ConfigError, match="not an unencrypted OpenSSH private key"):
        load_private_key(pkcs8)

    edwards = tmp_path / "ed25519.key"
    edwards.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    os.chmod(edwards, 0o600)
    with pytest.raises(ConfigError, match="not an ECDSA key"):
        load_private_key(edwards)

    with pytest.raises(ConfigError, match="not an OpenSSH public key"):
        load_public_key("-----BEGIN PUBLIC KEY-----")


def test_job_file_node_auth_flag(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.flwr.app]\n")
    assert JobSpec.load(tmp_path).node_auth is False
    (tmp_path / "job.yaml").write_text("node_auth: true\n")
    assert JobSpec.load(tmp_path).node_auth is True
    (tmp_path / "job.yaml").write_text("node_auth: 'yes'\n")
    with pytest.raises(ConfigError, match="node_auth must be true or false"):
        JobSpec.load(tmp_path)


def test_flwr_home_trusts_the_superlink_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    home = write_flwr_home(tmp_path / "home", "127.0.0.1:9000", root_certificates=ca)
    text = (home / "config.toml").read_text()
    assert f'root-certificates = "{ca.resolve()}"' in text
    assert "insecure" not in text
    home = write_flwr_home(tmp_path / "plain", "127.0.0.1:9000")
    assert "insecure = true" in (home / "config.toml").read_text()


# --- the LGC speaks TLS to a SuperLink that serves it ---------------------------------


def _envelope(dialect: Dialect, method: str = "PullMessages") -> Envelope:
    return make_envelope(
        job_id="job",
        site="site-1",
        method=method,
        dialect=dialect,
        headers=[("flwr-timestamp", b"2026-11-21T09:30:00+00:00")],
        body=b"\x08\x01",
        deadline_unix_ms=now_ms() + 10_000,
    )


@pytest.fixture
def superlink_tls(tmp_path: Path) -> LoopbackTLS:
    tls = write_loopback_tls(tmp_path / "tls", name="superlink")
    assert tls.key.stat().st_mode & 0o777 == 0o600
    return tls


async def _https_superlink(tls: LoopbackTLS) -> AsyncIterator[int]:
    async def handle(request: web.Request) -> web.Response:
        stamp = request.headers["flwr-timestamp"]
        return web.Response(body=b"tls:" + stamp.encode() + await request.read())

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def test_http_upstream_verifies_the_superlink_certificate(
    superlink_tls: LoopbackTLS, tmp_path: Path
) -> None:
    async for port in _https_superlink(superlink_tls):
        address = f"127.0.0.1:{port}"
        upstream = upstream_for(DIALECT_HTTP, address, ca_file=superlink_tls.ca_cert)
        try:
            reply = await upstream.call(_envelope(DIALECT_HTTP), timeout=10)
        finally:
            await upstream.aclose()
        assert (reply.origin, reply.http_status) == (ORIGIN_UPSTREAM, 200)
        assert reply.body == b"tls:2026-11-21T09:30:00+00:00\x08\x01"

        # A SuperLink whose certificate another CA signed is never talked to.
        other = write_loopback_tls(tmp_path / "other", name="other")
        upstream = upstream_for(DIALECT_HTTP, address, ca_file=other.ca_cert)
        try:
            reply = await upstream.call(_envelope(DIALECT_HTTP), timeout=10)
        finally:
            await upstream.aclose()
        assert (reply.origin, reply.http_status) == (ORIGIN_GATEWAY, 503)
        assert "certificate" in reply.detail.lower()


async def test_grpc_upstream_speaks_tls_with_the_superlink_ca(superlink_tls: LoopbackTLS) -> None:
    async def pull(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        metadata = dict(context.invocation_metadata())
        return b"grpcs:" + str(metadata["flwr-timestamp"]).encode() + request

    handler = grpc.method_handlers_generic_handler(
        "flwr.proto.Fleet", {"PullMessages": grpc.unary_unary_rpc_method_handler(pull)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials(
        [(superlink_tls.key.read_bytes(), superlink_tls.cert.read_bytes())]
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    upstream = upstream_for(DIALECT_GRPC, f"127.0.0.1:{port}", ca_file=superlink_tls.ca_cert)
    try:
        reply = await upstream.call(_envelope(DIALECT_GRPC), timeout=10)
    finally:
        await upstream.aclose()
        await server.stop(None)
    assert (reply.origin, reply.grpc_code) == (ORIGIN_UPSTREAM, 0)
    assert reply.body == b"grpcs:2026-11-21T09:30:00+00:00\x08\x01"


# --- the LGS serves loopback TLS to a SuperNode that signs its calls -------------------


async def _echo(
    method: str, dialect: Dialect, headers: list[tuple[str, bytes]], body: bytes
) -> Reply:
    return upstream_reply("m", http_status=200, grpc_code=0, body=method.encode() + b":" + body)


async def test_http_lgs_serves_tls_that_a_client_trusting_its_ca_accepts(tmp_path: Path) -> None:
    tls = write_loopback_tls(tmp_path / "lgs-tls", name="lgs")
    lgs = create_lgs(DIALECT_HTTP, _echo, tls=tls)
    await lgs.start()
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_cert))
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"https://{lgs.address}/v1/fleet/pull-messages", data=b"x", ssl=context
            ) as response,
        ):
            assert (response.status, await response.read()) == (200, b"PullMessages:x")
        other = ssl.create_default_context(
            cafile=str(write_loopback_tls(tmp_path / "o", name="o").ca_cert)
        )
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with aiohttp.ClientSession() as session:
                await session.post(f"https://{lgs.address}/v1/fleet/pull-messages", ssl=other)
    finally:
        await lgs.aclose()


async def test_grpc_lgs_serves_tls_for_127_0_0_1(tmp_path: Path) -> None:
    tls = write_loopback_tls(tmp_path / "lgs-tls", name="lgs")
    lgs = create_lgs(DIALECT_GRPC, _echo, tls=tls)
    await lgs.start()
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca_cert.read_bytes())
        async with grpc.aio.secure_channel(lgs.address, credentials) as channel:
            pull = channel.unary_unary("/flwr.proto.Fleet/PullMessages")
            assert await pull(b"x", timeout=10) == b"PullMessages:x"
    finally:
        await lgs.aclose()


# --- the relay binds a reported key to the site's identity and checks it ---------------


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[JobManager]:
    manager = offline_job_manager(tmp_path)
    yield manager
    await manager.aclose()


def _job(sites: tuple[str, ...], *, node_auth: bool) -> JobRecord:
    return JobRecord(
        job_id="job-1",
        name="n",
        state=DISPATCHED,
        sites=sites,
        submitted_by="admin",
        runtime={"node_auth": "1" if node_auth else ""},
    )


async def test_poll_records_the_key_under_the_polling_site_and_tasks_carry_node_auth(
    manager: JobManager, tmp_path: Path
) -> None:
    line = generate_node_key(tmp_path / "k")
    manager.store.add(_job(("site-1", "site-2"), node_auth=True))
    response = await manager.poll(
        "site-2", PollTasksRequest(wait_ms=0, flower_node_public_key=line)
    )
    assert [(t.job_id, t.node_auth, t.partition_id) for t in response.desired] == [
        ("job-1", True, 1)
    ]
    await manager.poll("site-1", PollTasksRequest(wait_ms=0))  # no key: nothing recorded
    assert manager._node_keys == {"site-2": line}


async def test_registration_refuses_missing_bad_and_shared_keys(
    manager: JobManager, tmp_path: Path
) -> None:
    record = _job(("site-1", "site-2"), node_auth=True)
    manager._node_keys = {"site-1": generate_node_key(tmp_path / "k1")}
    with pytest.raises(JobError, match=r"site site-2 reported no node key.*--flower-node-key"):
        await manager._register_node_keys(record, tmp_path)
    manager._node_keys["site-2"] = "ssh-ed25519 AAAA"
    with pytest.raises(JobError, match="site site-2 reported an unusable Flower node key"):
        await manager._register_node_keys(record, tmp_path)
    manager._node_keys["site-2"] = manager._node_keys["site-1"]
    with pytest.raises(JobError, match="sites site-1 and site-2 reported the same Flower node key"):
        await manager._register_node_keys(record, tmp_path)
