"""Provisioning without a relay: project files, kits, manifests, CRLs, roles.

Everything here is real cryptography on files in a temporary directory; the
end-to-end checks against a running relay are in ``test_e2e_security.py``.
"""

from __future__ import annotations

import datetime as dt
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.cli import main
from gateway.core.envelope import make_envelope, now_ms
from gateway.core.exceptions import AuthError, ConfigError
from gateway.core.identity import AdminRole, Peer, Role, peer_from_certificate
from gateway.core.signing import CertificateChecker
from gateway.proto.envelope_pb2 import DIALECT_HTTP, KIND_AGENT, Envelope
from gateway.provisioning import manifest
from gateway.provisioning.certs import CertificateAuthority, cert_pem, key_pem
from gateway.provisioning.kit import KitError, load_kit, write_kit
from gateway.provisioning.project import Project
from gateway.provisioning.revocation import (
    Revocation,
    RevocationList,
    build_crl,
    crl_pem,
    parse_crl,
)
from gateway.provisioning.workspace import ProvisioningWorkspace, provision_local
from gateway.relay.dispatcher import Dispatcher
from tests.support.files import hashes
from tests.support.paths import REPO

EXAMPLE = REPO / "provisioning" / "project.yml"


def project_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "unit",
        "relay": {
            "hosts": ["localhost", "127.0.0.1"],
            "listen_host": "127.0.0.1",
            "transports": {"grpcs": 18443, "https": 18444, "tcps": 18445},
        },
        "sites": [{"name": "site-1"}, {"name": "site-2", "transport": "https"}],
        "admins": [
            {"name": "admin@example.org", "role": "project_admin"},
            {"name": "alice@example.org", "role": "member"},
        ],
    }
    data.update(changes)
    return data


@pytest.fixture
def workspace(tmp_path: Path) -> ProvisioningWorkspace:
    project = Project.parse(project_data())
    ws, created = ProvisioningWorkspace.create_or_open(tmp_path / "ws", project)
    assert created
    ws.provision(project)
    return ws


# --- project.yml ---------------------------------------------------------------


def test_the_documented_example_parses() -> None:
    project = Project.load(EXAMPLE)
    assert project.relay.transport(None).url == "grpcs://relay.example.org:8443"
    assert [s.name for s in project.sites] == ["hospital-a", "hospital-b"]
    assert project.relay.transport("https").listen_url("0.0.0.0") == "https://0.0.0.0:8444"
    assert {a.name: a.role for a in project.admins}["scientist@example.org"] is AdminRole.MEMBER
    assert Project.parse(project.to_dict()) == project


def _relay_with(**changes: Any) -> dict[str, Any]:
    relay = dict(project_data()["relay"])
    relay.update(changes)
    return relay


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nmae": "x"}, r"top level: unknown key\(s\) nmae"),
        ({"relay": None}, r"relay: must be a mapping"),
        ({"name": "bad name!"}, r"name: 'bad name!' is not a valid name"),
        (
            {"sites": [{"name": "site-1"}, {"name": "site-1"}]},
            r"sites\[1\]\.name: 'site-1' is already used by sites\[0\]\.name",
        ),
        (
            {"admins": [{"name": "relay", "role": "member"}]},
            r"admins\[0\]\.name: 'relay' is already used by relay\.name",
        ),
        (
            {"admins": [{"name": "a@x", "role": "owner"}]},
            r"admins\[0\]\.role: unknown role 'owner' \(choose from project_admin, member\)",
        ),
        ({"admins": [{"name": "a@x"}]}, r"admins\[0\]: missing role"),
        (
            {"sites": [{"name": "s", "transport": "rediss"}]},
            r"sites\[0\]\.transport: the relay offers no rediss transport "
            r"\(it offers: grpcs, https, tcps\)",
        ),
        (
            {"relay": _relay_with(transports={"grpc": 8443})},
            r"relay\.transports\.grpc: unknown transport 'grpc'",
        ),
        (
            {"relay": _relay_with(transports={"grpcs": 70000})},
            r"relay\.transports\.grpcs: must be a whole number from 1 to 65535, not 70000",
        ),
        ({"relay": _relay_with(transports={})}, r"relay\.transports: must map a scheme"),
        ({"relay": _relay_with(hosts=[])}, r"relay\.hosts: name at least one host"),
        (
            {"validity_days": 400, "ca_validity_days": 300},
            r"ca_validity_days: 300 is shorter than validity_days \(400\)",
        ),
        ({"validity_days": "a year"}, r"validity_days: must be a whole number"),
        (
            {"relay": _relay_with(metrics_listen="9464")},
            r"relay\.metrics_listen: metrics listen address '9464' is not HOST:PORT "
            r"\(e\.g\. 127\.0\.0\.1:9464\) or 'off'",
        ),
        (
            {"sites_metrics_listen": True},
            r"sites_metrics_listen: metrics listen address 'True' is not HOST:PORT",
        ),
        (
            {"sites": ["site-1", {"name": "site-2", "metrics_listen": "localhost:http"}]},
            r"sites\[1\]\.metrics_listen: metrics listen address 'localhost:http' is not "
            r"HOST:PORT \(e\.g\. 127\.0\.0\.1:9464\) or 'off'",
        ),
    ],
)
def test_project_mistakes_are_reported_with_their_place(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Project.parse(project_data(**data), source="p.yml")


def test_project_file_that_is_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "p.yml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        Project.load(path)


def test_redis_transports_meet_at_the_redis_server() -> None:
    relay = _relay_with(transports={"grpcs": 8443, "rediss": {"host": "redis.x", "port": 6380}})
    project = Project.parse(project_data(relay=relay, sites=[{"name": "s", "transport": "rediss"}]))
    rediss = project.relay.transport("rediss")
    assert rediss.url == rediss.listen_url("0.0.0.0") == "rediss://redis.x:6380"


def metrics_project_data() -> dict[str, Any]:
    return project_data(
        relay=_relay_with(metrics_listen="0.0.0.0:9464"),
        sites_metrics_listen=False,  # what YAML makes of a bare `off`
        sites=["site-1", {"name": "site-2", "metrics_listen": " [::1]:9500 "}],
    )


def test_metrics_addresses_parse_and_survive_the_provisioned_copy() -> None:
    project = Project.parse(metrics_project_data())
    assert project.relay.metrics_listen == "0.0.0.0:9464"
    assert project.sites_metrics_listen == "off"
    assert [s.metrics_listen for s in project.sites] == [None, "[::1]:9500"]
    assert [project.site_metrics_listen(s.metrics_listen) for s in project.sites] == [
        "off",
        "[::1]:9500",
    ]
    assert Project.parse(yaml.safe_load(yaml.safe_dump(project.to_dict()))) == project


def test_a_project_without_metrics_addresses_names_none() -> None:
    project = Project.parse(project_data(sites_metrics_listen=None))
    assert project.relay.metrics_listen is None
    assert project.sites_metrics_listen is None
    assert all(s.metrics_listen is None for s in project.sites)
    data = project.to_dict()
    assert "sites_metrics_listen" not in data and "metrics_listen" not in data["relay"]


# --- manifest ------------------------------------------------------------------


def test_manifest_round_trip_and_every_kind_of_tampering(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("m")
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "a.txt").write_text("alpha")
    (kit / "b.txt").write_text("beta")
    signed = manifest.build(kit, ["a.txt", "b.txt"], project="m", participant="p", role="site")
    manifest.write(kit, signed, ca.key)
    assert manifest.verify(kit, ca.cert) == signed

    (kit / "b.txt").write_text("BETA")
    with pytest.raises(manifest.ManifestError, match=r"b\.txt was changed after provisioning"):
        manifest.verify(kit, ca.cert)
    (kit / "b.txt").write_text("beta")

    original = (kit / manifest.MANIFEST).read_bytes()
    (kit / manifest.MANIFEST).write_bytes(original.replace(b'"site"', b'"admin"'))
    with pytest.raises(manifest.ManifestError, match=r"does not match manifest\.json"):
        manifest.verify(kit, ca.cert)
    (kit / manifest.MANIFEST).write_bytes(original)

    other = CertificateAuthority.create("other")
    with pytest.raises(manifest.ManifestError, match="comes from another federation"):
        manifest.verify(kit, other.cert)

    (kit / "a.txt").unlink()
    with pytest.raises(manifest.ManifestError, match=r"a\.txt is missing"):
        manifest.verify(kit, ca.cert)

    (kit / manifest.SIGNATURE).unlink()
    with pytest.raises(manifest.ManifestError, match=r"manifest\.sig is missing"):
        manifest.verify(kit, ca.cert)


# --- revocation ----------------------------------------------------------------


def test_crl_round_trip_and_a_foreign_crl() -> None:
    ca = CertificateAuthority.create("r")
    when = dt.datetime(2030, 1, 2, 3, 4, tzinfo=dt.timezone.utc)
    revoked = [Revocation(0x1234, when, "key_compromise"), Revocation(0x99, when)]
    parsed = parse_crl(crl_pem(build_crl(ca, revoked)), ca.cert)
    assert parsed == {r.serial: r for r in revoked}
    assert "(serial 1234) was revoked on 2030-01-02 03:04 UTC (key_compromise)" in (
        parsed[0x1234].describe()
    )
    other = CertificateAuthority.create("other")
    with pytest.raises(ConfigError, match="not signed by this federation's root CA"):
        parse_crl(crl_pem(build_crl(other, revoked)), ca.cert)
    with pytest.raises(ConfigError, match="not a PEM certificate revocation list"):
        parse_crl(b"garbage", ca.cert)


def test_revocation_list_follows_the_file_and_keeps_the_last_good_one(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("r")
    path = tmp_path / "crl.pem"
    path.write_bytes(crl_pem(build_crl(ca, [])))
    crl = RevocationList(path, ca.cert, check_interval=0)
    site = Peer("site-1", Role.SITE, serial=0xABC)
    assert crl.refusal(site) is None

    now = dt.datetime.now(dt.timezone.utc)
    path.write_bytes(crl_pem(build_crl(ca, [Revocation(0xABC, now, "superseded")])))
    reason = crl.refusal(site)
    assert reason is not None
    assert "the certificate of site:site-1 (serial abc) was revoked" in reason
    assert "(superseded)" in reason

    # A damaged or foreign file does not un-revoke anyone.
    path.write_bytes(b"-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n")
    assert crl.refusal(site) is not None
    other = CertificateAuthority.create("other")
    path.write_bytes(crl_pem(build_crl(other, [])))
    assert crl.refusal(site) is not None
    path.unlink()
    assert crl.refusal(site) is not None

    with pytest.raises(ConfigError, match="cannot read the revocation list"):
        RevocationList(tmp_path / "none.pem", ca.cert)


async def test_dispatcher_refuses_a_revoked_peer_before_anything_else(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("r")
    path = tmp_path / "crl.pem"
    now = dt.datetime.now(dt.timezone.utc)
    path.write_bytes(crl_pem(build_crl(ca, [Revocation(7, now)])))
    dispatcher = Dispatcher()
    dispatcher.revoked = RevocationList(path, ca.cert).refusal
    envelope = make_envelope(
        job_id="job",
        site="site-1",
        method="PullMessages",
        dialect=DIALECT_HTTP,
        headers=[],
        body=b"",
        deadline_unix_ms=now_ms() + 10_000,
    )
    reply = await dispatcher.handle(Peer("site-1", Role.SITE, serial=7), envelope)
    assert reply.http_status == 403
    assert "was revoked" in reply.detail
    control = Envelope(kind=KIND_AGENT, message_id="m", method="PollTasks")
    reply = await dispatcher.handle(Peer("site-1", Role.SITE, serial=7), control)
    assert (reply.http_status, "was revoked" in reply.detail) == (403, True)
    # Another certificate of the same name is not revoked (no job manager here: 404).
    reply = await dispatcher.handle(Peer("site-1", Role.SITE, serial=8), control)
    assert reply.http_status == 404


def test_redis_certificate_checker_refuses_revoked_and_expired_certificates(
    tmp_path: Path,
) -> None:
    ca = CertificateAuthority.create("r")
    cert, _ = ca.issue("site-1", Role.SITE)
    now = dt.datetime.now(dt.timezone.utc)
    path = tmp_path / "crl.pem"
    path.write_bytes(crl_pem(build_crl(ca, [])))
    crl = RevocationList(path, ca.cert, check_interval=0)
    checker = CertificateChecker(cert_pem(ca.cert), revoked=crl.refusal)
    peer, _ = checker.check(cert_pem(cert), now=now.timestamp())
    assert peer.serial == cert.serial_number
    path.write_bytes(crl_pem(build_crl(ca, [Revocation(cert.serial_number, now)])))
    with pytest.raises(AuthError, match="was revoked"):
        checker.check(cert_pem(cert), now=now.timestamp())  # even when cached
    later = (now + dt.timedelta(days=400)).timestamp()
    with pytest.raises(AuthError, match=r"expired on \d{4}-\d\d-\d\d"):
        checker.check(cert_pem(cert), now=later)


# --- roles ---------------------------------------------------------------------


def test_admin_role_travels_in_the_certificate() -> None:
    ca = CertificateAuthority.create("roles")
    member_cert, _ = ca.issue("alice", Role.ADMIN, admin_role=AdminRole.MEMBER)
    member = peer_from_certificate(member_cert)
    assert (member.admin_role, member.serial) == (AdminRole.MEMBER, member_cert.serial_number)
    default = peer_from_certificate(ca.issue("root", Role.ADMIN)[0])
    assert default.admin_role is AdminRole.PROJECT_ADMIN
    assert peer_from_certificate(ca.issue("s", Role.SITE)[0]).admin_role is None
    with pytest.raises(ValueError, match="admin role is for admin certificates"):
        ca.issue("s", Role.SITE, admin_role=AdminRole.MEMBER)


def test_admin_certificate_without_a_role_is_a_member_and_a_bad_role_is_refused() -> None:
    ca = CertificateAuthority.create("roles")
    key = ec.generate_private_key(ec.SECP256R1())

    def admin_cert(*extra: x509.NameAttribute[str]) -> x509.Certificate:
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "old"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admin"),
                *extra,
            ]
        )
        now = dt.datetime.now(dt.timezone.utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(ca.key, hashes.SHA256())
        )

    from cryptography.x509.oid import NameOID

    assert peer_from_certificate(admin_cert()).admin_role is AdminRole.MEMBER
    with pytest.raises(AuthError, match="unknown admin role 'root'"):
        peer_from_certificate(admin_cert(x509.NameAttribute(NameOID.TITLE, "root")))


def test_members_manage_only_their_own_jobs() -> None:
    alice = Peer("alice", Role.ADMIN, admin_role=AdminRole.MEMBER)
    boss = Peer("boss", Role.ADMIN, admin_role=AdminRole.PROJECT_ADMIN)
    site = Peer("alice", Role.SITE)
    assert alice.may_manage("alice")
    assert not alice.may_manage("bob")
    assert boss.may_manage("bob")
    assert not site.may_manage("alice")
    assert Peer("alice", Role.ADMIN, serial=1) == Peer("alice", Role.ADMIN, serial=2)


# --- workspace and kits ----------------------------------------------------------


def test_kits_hold_what_each_participant_needs(workspace: ProvisioningWorkspace) -> None:
    kits = workspace.kits
    assert sorted(p.name for p in kits.iterdir()) == [
        "admin@example.org",
        "alice@example.org",
        "relay",
        "site-1",
        "site-2",
    ]
    relay = load_kit(kits / "relay", role=Role.RELAY)
    assert relay.listen_urls == (
        "grpcs://127.0.0.1:18443",
        "https://127.0.0.1:18444",
        "tcps://127.0.0.1:18445",
    )
    assert relay.crl == kits / "relay" / "crl.pem"
    san = relay.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost"]

    site = load_kit(kits / "site-2", role=Role.SITE)
    assert site.relay_url == "https://localhost:18444"
    assert site.relay_urls["grpcs"] == "grpcs://localhost:18443"
    assert load_kit(kits / "site-1").relay_url == "grpcs://localhost:18443"
    assert site.flower_node_key is not None and site.flower_node_public_key is not None
    node_key = serialization.load_ssh_private_key(site.flower_node_key.read_bytes(), None)
    assert isinstance(node_key, ec.EllipticCurvePrivateKey)
    assert isinstance(node_key.curve, ec.SECP384R1)
    public = serialization.load_ssh_public_key(site.flower_node_public_key.read_bytes())
    assert public == node_key.public_key()
    config = yaml.safe_load((kits / "site-2" / "config.yaml").read_text())
    assert config["flower_node_key"] == "flower-node.key"
    assert config["flower_node_public_key"] == "flower-node.pub"

    member = load_kit(kits / "alice@example.org", role=Role.ADMIN)
    assert member.admin_role is AdminRole.MEMBER
    for kit in kits.iterdir():
        start = kit / "start.sh"
        assert start.stat().st_mode & stat.S_IXUSR
        assert '--kit "$KIT"' in start.read_text()


def test_private_keys_are_0600_and_the_ca_key_is_in_no_kit(
    workspace: ProvisioningWorkspace,
) -> None:
    ca_key = workspace.state / "rootCA.key"
    assert stat.S_IMODE(ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(workspace.state.stat().st_mode) == 0o700
    secret = workspace.ca.key.private_numbers().private_value
    needles = [
        ca_key.read_bytes(),
        key_pem(workspace.ca.key),
        workspace.ca.key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        secret.to_bytes(32, "big"),
        b"%x" % secret,
    ]
    files = [p for p in workspace.kits.rglob("*") if p.is_file()]
    assert len(files) > 30
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"the CA key is in {path}"
        if path.name in ("key.pem", "flower-node.key"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_provisioning_again_keeps_the_ca_and_every_kit(
    workspace: ProvisioningWorkspace, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    before = hashes(workspace.root)
    project_file = tmp_path / "project.yml"
    project_file.write_text(yaml.safe_dump(project_data()))
    assert main(["provision", str(project_file), "-o", str(workspace.root)]) == 0
    out = capsys.readouterr().out
    assert "reusing the root CA" in out
    assert "site-1: kept - kit exists" in out
    after = hashes(workspace.root)
    kit_files = {k: v for k, v in before.items() if k.startswith("kits/")}
    assert {k: after[k] for k in kit_files} == kit_files
    assert after["state/rootCA.key"] == before["state/rootCA.key"]

    # A new site in the project file gets a kit; nothing else changes.
    data = project_data()
    data["sites"].append({"name": "site-3", "transport": "tcps"})
    data["admins"][1]["role"] = "project_admin"
    project_file.write_text(yaml.safe_dump(data))
    assert main(["provision", str(project_file), "-o", str(workspace.root)]) == 0
    out = capsys.readouterr().out
    assert "site-3: issued" in out
    assert "alice@example.org: kept" in out and "member -> admin project_admin" in out
    assert load_kit(workspace.kits / "site-3").relay_url == "tcps://localhost:18445"
    assert {k: hashes(workspace.root)[k] for k in kit_files} == kit_files


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "another"}, "was provisioned for project 'unit', not 'another'"),
        (
            {"relay": _relay_with(hosts=["relay.example.org"])},
            "relay section of the project file differs",
        ),
    ],
)
def test_provisioning_a_different_federation_into_a_workspace_is_refused(
    workspace: ProvisioningWorkspace, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ProvisioningWorkspace.create_or_open(workspace.root, Project.parse(project_data(**change)))


def test_an_unrelated_directory_is_not_made_a_workspace(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a provisioning workspace"):
        ProvisioningWorkspace.create_or_open(tmp_path, Project.parse(project_data()))
    with pytest.raises(ConfigError, match="is not a provisioning workspace"):
        ProvisioningWorkspace.open(tmp_path)


def test_add_site_and_admin_issue_from_the_same_ca_and_old_kits_stay_valid(
    workspace: ProvisioningWorkspace, capsys: pytest.CaptureFixture[str]
) -> None:
    before = hashes(workspace.kits)
    ws = str(workspace.root)
    assert main(["provision", "add-site", "site-3", "-w", ws, "--transport", "tcps"]) == 0
    assert main(["provision", "add-admin", "bob@example.org", "--role", "member", "-w", ws]) == 0
    out = capsys.readouterr().out
    assert "site-3: issued" in out and "bob@example.org: issued" in out
    assert {k: v for k, v in hashes(workspace.kits).items() if k in before} == before
    ca = workspace.ca.cert
    for kit in workspace.kits.iterdir():
        assert load_kit(kit, ca=ca).ca_certificate == ca
    assert load_kit(workspace.kits / "bob@example.org").admin_role is AdminRole.MEMBER
    reopened = ProvisioningWorkspace.open(workspace.root)
    assert [s.name for s in reopened.project.sites] == ["site-1", "site-2", "site-3"]

    assert main(["provision", "add-site", "site-3", "-w", ws]) == 3
    assert "site-3 already has a kit" in capsys.readouterr().err
    assert main(["provision", "add-site", "site-4", "-w", ws, "--transport", "rediss"]) == 3
    assert "offers no rediss transport" in capsys.readouterr().err


def test_revoke_writes_a_signed_crl_and_allows_a_new_kit(
    workspace: ProvisioningWorkspace, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = str(workspace.root)
    relay_kit = workspace.kits / "relay"
    old_serial = load_kit(workspace.kits / "site-2").certificate.serial_number
    assert main(["provision", "revoke", "site-2", "-w", ws, "--reason", "key_compromise"]) == 0
    assert "site-2: revoked" in capsys.readouterr().out
    for crl_file in (workspace.state / "crl.pem", relay_kit / "crl.pem"):
        revoked = parse_crl(crl_file.read_bytes(), workspace.ca.cert)
        assert revoked[old_serial].reason == "key_compromise"
    # The CRL is outside the manifest: the relay kit still verifies.
    assert load_kit(relay_kit).crl == relay_kit / "crl.pem"
    crl = str(workspace.state / "crl.pem")
    assert main(["kit", "verify", str(workspace.kits / "site-2"), "--crl", crl]) == 3
    assert "was revoked on" in capsys.readouterr().err
    assert main(["kit", "verify", str(workspace.kits / "site-1"), "--crl", crl]) == 0

    assert main(["provision", "revoke", "site-2", "-w", ws]) == 3
    assert "has no active certificate" in capsys.readouterr().err
    assert main(["provision", "revoke", "relay", "-w", ws]) == 3
    assert "cannot be revoked" in capsys.readouterr().err

    assert main(["provision", "add-site", "site-2", "-w", ws, "--transport", "https"]) == 0
    renewed = load_kit(workspace.kits / "site-2")
    assert renewed.certificate.serial_number != old_serial
    assert main(["kit", "verify", str(workspace.kits / "site-2"), "--crl", crl]) == 0
    assert main(["provision", "list", "-w", ws]) == 0
    listing = capsys.readouterr().out
    assert "revoked" in listing and f"{old_serial:x}" in listing


def test_provisioning_again_after_a_kit_was_deleted_says_to_revoke(
    workspace: ProvisioningWorkspace,
) -> None:
    shutil.rmtree(workspace.kits / "site-1")
    with pytest.raises(ConfigError, match="revoke the old one first"):
        workspace.provision(Project.parse(project_data()))


@pytest.fixture
def metrics_workspace(tmp_path: Path) -> ProvisioningWorkspace:
    project = Project.parse(metrics_project_data())
    ws, _ = ProvisioningWorkspace.create_or_open(tmp_path / "metrics-ws", project)
    ws.provision(project)
    return ws


def test_kits_carry_the_metrics_addresses_of_the_project_file(
    metrics_workspace: ProvisioningWorkspace,
) -> None:
    kits = metrics_workspace.kits
    assert load_kit(kits / "relay", role=Role.RELAY).metrics_listen == "0.0.0.0:9464"
    assert load_kit(kits / "site-1", role=Role.SITE).metrics_listen == "off"
    assert load_kit(kits / "site-2", role=Role.SITE).metrics_listen == "[::1]:9500"
    assert load_kit(kits / "admin@example.org").metrics_listen is None
    config = yaml.safe_load((kits / "site-1" / "config.yaml").read_text())
    assert config["metrics_listen"] == "off"
    assert "metrics_listen" not in yaml.safe_load(
        (kits / "admin@example.org" / "config.yaml").read_text()
    )


def test_kits_of_a_project_without_metrics_addresses_name_none(
    workspace: ProvisioningWorkspace,
) -> None:
    for kit in workspace.kits.iterdir():
        assert load_kit(kit).metrics_listen is None
        assert "metrics_listen" not in yaml.safe_load((kit / "config.yaml").read_text())


def test_a_kit_with_a_bad_metrics_address_is_refused_naming_config_yaml(
    workspace: ProvisioningWorkspace, tmp_path: Path
) -> None:
    cert, key = workspace.ca.issue("site-9", Role.SITE, validity=dt.timedelta(days=1))
    kit = tmp_path / "bad-metrics"
    write_kit(
        kit,
        project=workspace.project,
        ca=workspace.ca,
        cert=cert,
        key=key,
        metrics_listen="everywhere",
    )
    with pytest.raises(
        KitError,
        match=r"config\.yaml: metrics_listen: metrics listen address 'everywhere' is not "
        r"HOST:PORT",
    ):
        load_kit(kit)


def test_add_site_carries_its_metrics_address_or_the_projects_default(
    metrics_workspace: ProvisioningWorkspace, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = str(metrics_workspace.root)
    argv = ["provision", "add-site", "site-3", "-w", ws, "--metrics-listen", "127.0.0.1:9600"]
    assert main(argv) == 0
    assert main(["provision", "add-site", "site-4", "-w", ws]) == 0
    capsys.readouterr()
    kits = metrics_workspace.kits
    assert load_kit(kits / "site-3").metrics_listen == "127.0.0.1:9600"
    assert load_kit(kits / "site-4").metrics_listen == "off"
    reopened = ProvisioningWorkspace.open(metrics_workspace.root)
    assert {s.name: s.metrics_listen for s in reopened.project.sites} == {
        "site-1": None,
        "site-2": "[::1]:9500",
        "site-3": "127.0.0.1:9600",
        "site-4": None,
    }
    assert reopened.project.sites_metrics_listen == "off"

    assert main(["provision", "add-site", "site-5", "-w", ws, "--metrics-listen", "9600"]) == 3
    assert "metrics listen address '9600' is not HOST:PORT" in capsys.readouterr().err
    assert not (kits / "site-5").exists()


def test_provisioning_again_reports_a_kept_site_whose_metrics_address_changed(
    metrics_workspace: ProvisioningWorkspace,
) -> None:
    data = metrics_project_data()
    data["sites"][1]["metrics_listen"] = "127.0.0.1:9501"
    outcomes = {o.name: o for o in metrics_workspace.provision(Project.parse(data))}
    assert outcomes["site-1"].detail.endswith(")")  # unchanged: no note
    assert outcomes["site-2"].action == "kept"
    assert (
        "its entry changed (site metrics_listen [::1]:9500 -> site metrics_listen "
        "127.0.0.1:9501) but the kit was kept" in outcomes["site-2"].detail
    )
    assert load_kit(metrics_workspace.kits / "site-2").metrics_listen == "[::1]:9500"


# --- kit verification ------------------------------------------------------------


def _copy(kit: Path, tmp_path: Path) -> Path:
    target = tmp_path / f"copy-{len(list(tmp_path.glob('copy-*')))}-{kit.name}"
    shutil.copytree(kit, target)
    return target


def test_kit_verify_says_ok_or_the_precise_problem(
    workspace: ProvisioningWorkspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = workspace.kits / "site-1"
    assert main(["kit", "verify", str(site)]) == 0
    assert capsys.readouterr().out.startswith("OK: kit of site-1 (site) in project unit")

    def refused(kit: Path, *extra: str) -> str:
        assert main(["kit", "verify", str(kit), *extra]) == 3
        err = capsys.readouterr().err
        assert err.startswith(f"FAILED: kit {kit} refused: ")
        return err

    edited = _copy(site, tmp_path)
    text = (edited / "config.yaml").read_text()
    (edited / "config.yaml").write_text(text.replace("localhost:18443", "evil.example:443"))
    assert "config.yaml was changed after provisioning" in refused(edited)

    loose = _copy(site, tmp_path)
    (loose / "key.pem").chmod(0o644)
    assert "key.pem is readable by other users (mode 0644)" in refused(loose)

    other_project = Project.parse(project_data(name="other"))
    other, _ = ProvisioningWorkspace.create_or_open(tmp_path / "other", other_project)
    other.provision(other_project)
    foreign = other.kits / "site-1"
    assert main(["kit", "verify", str(foreign)]) == 0  # consistent in itself...
    capsys.readouterr()
    pinned = refused(foreign, "--ca", str(workspace.state / "rootCA.pem"))
    assert "the kit belongs to another federation" in pinned  # ...but not ours

    swapped = _copy(site, tmp_path)
    shutil.copy(foreign / "cert.pem", swapped / "cert.pem")
    assert "cert.pem was changed after provisioning" in refused(swapped)

    resigned = _copy(site, tmp_path)
    shutil.copy(foreign / "rootCA.pem", resigned / "rootCA.pem")
    assert "comes from another federation" in refused(resigned)


def _expired_kit(workspace: ProvisioningWorkspace, tmp_path: Path) -> Path:
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)
    cert, key = workspace.ca.issue(
        "site-9", Role.SITE, validity=dt.timedelta(days=1), not_before=start
    )
    kit = tmp_path / "expired"
    write_kit(kit, project=workspace.project, ca=workspace.ca, cert=cert, key=key)
    return kit


def test_expired_or_wrong_kind_of_kit_is_refused(
    workspace: ProvisioningWorkspace, tmp_path: Path
) -> None:
    expired = _expired_kit(workspace, tmp_path)
    with pytest.raises(KitError, match=r"cert\.pem expired on .* ask the project admin"):
        load_kit(expired)
    with pytest.raises(KitError, match="this command needs an admin's kit"):
        load_kit(workspace.kits / "site-1", role=Role.ADMIN)
    with pytest.raises(KitError, match="no such directory"):
        load_kit(tmp_path / "nothing")
    now = dt.datetime.now(dt.timezone.utc)
    with pytest.raises(KitError, match=r"root CA .* expired on"):
        load_kit(workspace.kits / "site-1", now=now + dt.timedelta(days=4000))


def test_commands_refuse_a_bad_kit_before_dialing(
    workspace: ProvisioningWorkspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expired = _expired_kit(workspace, tmp_path)
    assert main(["site", "start", "--kit", str(expired)]) == 3
    assert "expired on" in capsys.readouterr().err
    assert main(["job", "list", "--kit", str(workspace.kits / "site-1")]) == 3
    assert "this command needs an admin's kit" in capsys.readouterr().err
    assert main(["relay", "start", "--kit", str(workspace.kits / "admin@example.org")]) == 3
    assert "this command needs the relay's kit" in capsys.readouterr().err
    site = workspace.kits / "site-1"
    argv = ["job", "list", "--kit", str(site), "--cert", str(site / "cert.pem")]
    assert main(argv) == 3
    assert "--kit names the TLS files already; drop --cert" in capsys.readouterr().err
    expired_files = ["--ca", str(expired / "rootCA.pem"), "--cert", str(expired / "cert.pem")]
    argv = ["job", "list", "--relay", "grpcs://localhost:1", *expired_files]
    assert main([*argv, "--key", str(expired / "key.pem")]) == 3
    assert "cert.pem expired on" in capsys.readouterr().err


def test_provision_output_never_shows_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["provision", str(EXAMPLE), "-o", str(tmp_path / "ws")]) == 0
    captured = capsys.readouterr()
    assert "PRIVATE KEY" not in captured.out + captured.err
    assert "hospital-b: issued" in captured.out


def test_local_throw_away_federation_is_provisioned_again_from_scratch(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    first = provision_local(root, "local-my app/1", ["site-1", "site-2"], transport="tcps")
    assert first.project.name == "local-my-app-1"
    assert load_kit(first.kit("site-2")).relay_url == "tcps://localhost:8443"
    second = provision_local(root, "local-again", ["site-1"])  # e.g. a second demo run
    assert second.ca.cert != first.ca.cert
    assert sorted(p.name for p in second.kits.iterdir()) == ["relay", "site-1"]
    assert load_kit(second.kit("site-1"), ca=second.ca.cert).name == "site-1"
