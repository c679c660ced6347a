"""Job files, run-config text, transport URLs and identities: errors that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.control.jobs.spec import JobSpec, parse_run_config
from gateway.core.config import TLSConfig
from gateway.core.exceptions import AuthError, ConfigError
from gateway.core.identity import Role, peer_from_pem
from gateway.provisioning.certs import CertificateAuthority, cert_pem
from gateway.transport import parse_url, schemes
from gateway.transport.base import connect
from tests.support.paths import REPO


def test_quickstart_job_file_loads() -> None:
    spec = JobSpec.load(REPO / "jobs" / "quickstart-numpy")
    assert spec.name == "quickstart-numpy"
    assert spec.min_sites == 2


def test_directory_without_pyproject_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no pyproject\.toml"):
        JobSpec.load(tmp_path)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("min_sites: [1", "not valid YAML"),
        ("- a\n- b", "must be a mapping"),
        ("nmae: x", "unknown keys"),
        ("run_config: {a: [1]}", "numbers or strings"),
        ("min_sites: 0", "min_sites must be >= 1"),
        ("mlflow_tracking_uri: 5000", "mlflow_tracking_uri must be a string.*got a number"),
        ("mlflow_tracking_uri: [a]", "mlflow_tracking_uri must be a string.*got a list"),
        ("mlflow_tracking_uri: file:///var/lib", "http:// or https:// URL of an MLflow server"),
        ("mlflow_tracking_uri: sqlite:///x.db", "may not name a file or database"),
        ("mlflow_tracking_uri: http://", "http:// or https:// URL"),
        ("mlflow_tracking_uri: http://h:port", "must be a URL"),
    ],
)
def test_bad_job_files_are_refused(tmp_path: Path, content: str, needle: str) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    (tmp_path / "job.yaml").write_text(content)
    with pytest.raises(ConfigError, match=needle):
        JobSpec.load(tmp_path)


def test_a_job_file_may_name_its_mlflow_server(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    assert JobSpec.load(tmp_path).mlflow_tracking_uri == ""
    (tmp_path / "job.yaml").write_text("mlflow_tracking_uri: https://mlflow.test:5000/base\n")
    assert JobSpec.load(tmp_path).mlflow_tracking_uri == "https://mlflow.test:5000/base"


def test_run_config_text() -> None:
    assert parse_run_config("num-server-rounds=5 lr=0.1 name=abc") == {
        "num-server-rounds": 5,
        "lr": 0.1,
        "name": "abc",
    }
    for bad in ("rounds", "=3", "a=", "a='unterminated"):
        with pytest.raises(ConfigError):
            parse_run_config(bad)


def test_transport_urls() -> None:
    url = parse_url("grpcs://relay.example.org:8443")
    assert (url.scheme, url.host, url.port, url.secure) == (
        "grpcs",
        "relay.example.org",
        8443,
        True,
    )
    assert "grpcs" in schemes()
    with pytest.raises(ConfigError, match="valid schemes: grpcs://"):
        parse_url("ftp://relay:21")
    with pytest.raises(ConfigError, match="needs a host and a port"):
        parse_url("grpcs://relay")
    with pytest.raises(ConfigError, match="nothing more"):
        parse_url("grpcs://relay:1/path")
    with pytest.raises(ConfigError, match="needs TLS"):
        connect("grpcs://relay:1", tls=None)


def test_identity_comes_from_cn_and_ou(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("p")
    cert, _ = ca.issue("site-7", Role.SITE)
    peer = peer_from_pem(cert_pem(cert))
    assert (peer.name, peer.role) == ("site-7", Role.SITE)
    with pytest.raises(AuthError, match="not valid PEM"):
        peer_from_pem(b"garbage")
    # A CA certificate has no role (OU): it identifies no participant.
    with pytest.raises(AuthError, match="organizational unit"):
        peer_from_pem(cert_pem(ca.cert))
    # Parsed peers are cached by certificate bytes; refusals are not cached.
    assert peer_from_pem(cert_pem(cert)) is peer
    with pytest.raises(AuthError, match="organizational unit"):
        peer_from_pem(cert_pem(ca.cert))
    other, _ = ca.issue("site-8", Role.SITE)
    assert peer_from_pem(cert_pem(other)).name == "site-8"


def test_private_keys_are_owner_only(tmp_path: Path) -> None:
    from gateway.provisioning.certs import write_participant

    tls: TLSConfig = write_participant(tmp_path, CertificateAuthority.create("p"), "s", Role.SITE)
    assert tls.key.stat().st_mode & 0o777 == 0o600
