"""Flower's own SuperNode authentication, end to end through the gateway.

A relay and sites run as processes; two sites start with a Flower node key, one
without. A job with ``node_auth: true`` gets a TLS SuperLink with
``--enable-supernode-auth``, the relay registers the keys the sites reported,
and the sites' SuperNodes sign every Fleet call: the run completes only if those
signed headers reach the SuperLink verbatim. While it runs, a SuperNode with a
key nobody registered, and hand-made signed calls, go through a site's LGS and
are refused by the SuperLink itself, with its status passed through unchanged.
Flower signs only over TLS, so the LGS of such a job serves loopback TLS.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml
from flwr.proto.fleet_pb2 import ActivateNodeRequest, RegisterNodeFleetRequest

from gateway.flower.install import FlowerInstall
from gateway.flower.launch import start_supernode
from gateway.flower.node_auth import (
    SIGNATURE_HEADER,
    fleet_auth_headers,
    flower_public_key,
    generate_node_key,
    load_private_key,
)
from gateway.proto.control_pb2 import JobInfo
from tests.support.federation import RunningFederation, until_state, wait_online
from tests.support.paths import QUICKSTART

pytestmark = pytest.mark.e2e

SITES_WITH_KEYS = ["site-1", "site-2"]
SITE_WITHOUT_KEY = "site-3"


def _start_site(fed: RunningFederation, name: str, node_key: Path | None) -> None:
    """``RunningFederation.start_site`` plus ``--flower-node-key``."""
    key = ["--flower-node-key", str(node_key)] if node_key else []
    flower = fed.flower_args(name)
    fed.sites[name] = fed._spawn(
        name,
        [
            "-v",
            "site",
            "start",
            "--relay",
            fed.relay_url,
            "--workspace",
            str(fed.root / name),
            *key,
            *flower,
            *fed._tls_args(fed.site_tls[name]),
        ],
    )


async def _wait_online(fed: RunningFederation, count: int) -> None:
    admin = fed.admin()
    try:
        await wait_online(admin, count)
    finally:
        await admin.aclose()


async def _until(
    fed: RunningFederation, job_id: str, done: tuple[str, ...], timeout: float
) -> JobInfo:
    admin = fed.admin()
    try:
        return await until_state(admin, job_id, done, timeout)
    finally:
        await admin.aclose()


@dataclass(frozen=True)
class Lgs:
    """A site's LGS for the job: over TLS, as Flower requires with node auth."""

    address: str
    ca_cert: Path


async def _fleet_post(
    lgs: Lgs, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, object]]:
    context = ssl.create_default_context(cafile=str(lgs.ca_cert))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"https://{lgs.address}/v1/fleet/{path}",
            data=body,
            headers={"content-type": "application/protobuf", **headers},
            ssl=context,
        ) as response,
    ):
        return response.status, json.loads(await response.read())


async def _refusals_through_the_lgs(lgs: Lgs, tmp_path: Path) -> None:
    """Signed Fleet calls with a key nobody registered: the SuperLink's answers, unchanged."""
    generate_node_key(tmp_path / "stranger.key")
    stranger = load_private_key(tmp_path / "stranger.key")
    pem = flower_public_key(stranger.public_key())

    # Self-registration is off when node auth is on (so the SuperLink runs with it).
    status, error = await _fleet_post(
        lgs,
        "register-node",
        RegisterNodeFleetRequest(public_key=pem).SerializeToString(),
        fleet_auth_headers(stranger),
    )
    assert status == 412, error
    assert "must be registered via the CLI" in str(error), error

    # A valid signature over an unregistered key: activation refused.
    activate = ActivateNodeRequest(public_key=pem, heartbeat_interval=30).SerializeToString()
    status, error = await _fleet_post(lgs, "activate-node", activate, fleet_auth_headers(stranger))
    assert status == 412, error
    assert "Failed to activate SuperNode" in str(error), error

    # A signature that does not match: 401, which only the SuperLink ever answers.
    forged = fleet_auth_headers(stranger)
    forged[SIGNATURE_HEADER] = base64.b64encode(b"\x30\x06\x02\x01\x01\x02\x01\x01").decode()
    status, error = await _fleet_post(lgs, "activate-node", activate, forged)
    assert status == 401, error
    assert "Invalid SuperNode authentication" in str(error), error


async def _stranger_supernode_is_refused(lgs: Lgs, workdir: Path) -> str:
    """A real flower-supernode with an unregistered key, dialing a site's LGS, gives up."""
    generate_node_key(workdir / "intruder.key")
    intruder = start_supernode(
        FlowerInstall.find(),
        lgs.address,
        workdir,
        name="intruder",
        node_config={"partition-id": 0, "num-partitions": 2},
        auth_key=workdir / "intruder.key",
        root_certificates=lgs.ca_cert,
    )
    try:
        for _ in range(120):
            if not intruder.alive():
                break
            await asyncio.sleep(0.5)
        assert not intruder.alive(), "a SuperNode with an unregistered key kept running"
        assert intruder.returncode != 0
        return intruder.log_tail(40)
    finally:
        await asyncio.to_thread(intruder.stop)


async def test_node_auth_job_completes_and_strangers_are_refused(tmp_path: Path) -> None:
    fed = RunningFederation.create(tmp_path / "fed", [*SITES_WITH_KEYS, SITE_WITHOUT_KEY])
    admin = None
    try:
        fed.start_relay()
        for site in SITES_WITH_KEYS:
            key = fed.root / "pki" / site / "flower-node.key"
            generate_node_key(key, key.with_suffix(".pub"))
            _start_site(fed, site, key)
        _start_site(fed, SITE_WITHOUT_KEY, None)
        await _wait_online(fed, 3)

        app = tmp_path / "node-auth-app"
        shutil.copytree(QUICKSTART, app)
        job_file = yaml.safe_load((app / "job.yaml").read_text())
        job_file.update(node_auth=True, run_config={"num-server-rounds": 2})
        (app / "job.yaml").write_text(yaml.safe_dump(job_file))

        admin = fed.admin()
        info = await admin.submit(app, sites=SITES_WITH_KEYS, name="node-auth")
        running = await _until(fed, info.job_id, ("running",), timeout=180)
        assert running.state == "running", running

        site_job = fed.root / "site-1" / "jobs" / info.job_id
        slot = json.loads((site_job / "slot.json").read_text())
        lgs = Lgs(f"127.0.0.1:{slot['lgs_port']}", site_job / "lgs-tls" / "ca.pem")
        await _refusals_through_the_lgs(lgs, tmp_path)
        intruder_log = await _stranger_supernode_is_refused(lgs, tmp_path / "intruder")
        assert "Failed to activate SuperNode" in intruder_log, intruder_log

        ended = await _until(fed, info.job_id, (), timeout=300)
        assert (ended.state, ended.reason) == ("finished", "finished:completed"), ended
        result = json.loads(ended.result_json)
        assert result["rounds"] == 2
        assert len(result["final_params_sha256"]) == 64

        superlink_dir = fed.root / "relay" / "jobs" / info.job_id / "superlink"
        superlink_log = (superlink_dir / "superlink.log").read_text()
        assert "SuperNode authentication is disabled" not in superlink_log
        assert "https://127.0.0.1" in superlink_log  # it served TLS
        assert superlink_log.count("[Fleet.ActivateNode] Activated node_id=") >= 2
        for site in SITES_WITH_KEYS:
            site_log = (await admin.logs(info.job_id, source=site)).data.decode()
            assert "SuperNode ID:" in site_log, site_log[-2000:]

        # A node-auth job with a site that has no key fails, saying what to do.
        failing = await admin.submit(app, sites=["site-1", SITE_WITHOUT_KEY], name="no-key")
        failed = await _until(fed, failing.job_id, (), timeout=120)
        assert failed.state == "failed", failed
        assert f"site {SITE_WITHOUT_KEY} reported no node key" in failed.reason
        assert "--flower-node-key" in failed.reason
    finally:
        if admin is not None:
            await admin.aclose()
        fed.close()
