"""Startup kits: what one participant needs to join the federation, in one directory.

A kit holds ``rootCA.pem``, the participant's ``cert.pem`` and ``key.pem``
(0600), ``config.yaml`` (its name and role, the relay's addresses), ``start.sh``
and ``manifest.json`` + ``manifest.sig`` (see :mod:`.manifest`). A site's kit
also holds a Flower node key pair (``flower-node.key``, OpenSSH format, as
``flower-supernode --auth-supernode-private-key`` reads it, and
``flower-node.pub``); the relay's holds ``crl.pem``, the revocation list.

An edge relay's kit (role ``edge``) is a relay's in small: its certificate names
its hosts, ``config.yaml`` its listen addresses, the central relay's address it
dials and the sites behind it. The central relay's ``config.yaml`` maps each edge
relay to its sites; a site behind an edge dials the edge (``relay.via``). Adding a
site behind an edge rewrites those two ``config.yaml`` files and re-signs their
manifests (:func:`refresh_config`); certificates and keys stay as they are.

:func:`load_kit` is the one gate every command passes before using a kit: it
refuses a kit that was edited, that comes from another federation, whose
certificate expired, or whose key is readable by others, saying which.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..core.budget_settings import check_budget_values
from ..core.config import TLSConfig
from ..core.exceptions import AuthError, ConfigError
from ..core.identity import AdminRole, Role, peer_from_certificate
from ..observability.endpoint import parse_listen
from . import manifest
from .certs import CertificateAuthority, cert_pem, key_pem, write_private
from .project import Project
from .revocation import parse_crl

CA_FILE = "rootCA.pem"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
CONFIG_FILE = "config.yaml"
START_FILE = "start.sh"
CRL_FILE = "crl.pem"
NODE_KEY_FILE = "flower-node.key"
NODE_PUBLIC_KEY_FILE = "flower-node.pub"

_START = {
    Role.RELAY: 'exec ${FLGATE:-flgate} relay start --kit "$KIT" "$@"\n',
    Role.SITE: 'exec ${FLGATE:-flgate} site start --kit "$KIT" "$@"\n',
    Role.EDGE: 'exec ${FLGATE:-flgate} edge start --kit "$KIT" "$@"\n',
    Role.ADMIN: (
        "if [ $# -eq 0 ]; then exec ${FLGATE:-flgate} job --help; fi\n"
        'action="$1"; shift\n'
        'exec ${FLGATE:-flgate} job "$action" --kit "$KIT" "$@"\n'
    ),
}
_USAGE = {
    Role.RELAY: "./start.sh [--workspace DIR] [--listen URL ...]",
    Role.SITE: "./start.sh [--workspace DIR]",
    Role.EDGE: "./start.sh [--workspace DIR]",
    Role.ADMIN: "./start.sh submit APP_DIR --sites A,B --follow | list | status ID | abort ID",
}


_A_KIT = {
    Role.RELAY: "the relay's kit",
    Role.SITE: "a site's kit",
    Role.ADMIN: "an admin's kit",
    Role.EDGE: "an edge relay's kit",
}
_EDGE_NOTE = (
    "# An edge relay's kit: sites behind it dial its listen addresses, it dials the\n"
    "# relay's url and carries their signed envelopes (`flgate edge start --kit DIR`).\n"
)


class KitError(ConfigError):
    """A kit that must not be used; the message names the kit and the problem."""


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of a certificate's DER, as colon-separated hex (what operators compare)."""
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, 16, 2)).upper() + ":..."


# --- writing -----------------------------------------------------------------


def _flower_node_keys() -> tuple[bytes, bytes]:
    """A Flower SuperNode auth key pair (SECP384R1), OpenSSH private and public."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + b"\n"


def _config(
    project: Project,
    name: str,
    role: Role,
    *,
    admin_role: AdminRole | None,
    transport: str | None,
    metrics_listen: str | None,
    via: str | None,
) -> dict[str, Any]:
    relay = project.relay
    config: dict[str, Any] = {
        "project": project.name,
        "name": name,
        "role": role.value,
    }
    if admin_role is not None:
        config["admin_role"] = admin_role.value
    if via is not None:  # a site behind an edge relay dials the edge
        edge = project.edge(via)
        config["relay"] = {
            "name": relay.name,
            "via": edge.name,
            "url": edge.transport(transport).url,
            "urls": {t.scheme: t.url for t in edge.transports},
        }
    else:
        if role is Role.EDGE:
            transport = project.edge(name).upstream
        config["relay"] = {
            "name": relay.name,
            "url": relay.transport(transport).url,
            "urls": {t.scheme: t.url for t in relay.transports},
        }
    if role is Role.RELAY:
        config["listen"] = [t.listen_url(relay.listen_host) for t in relay.transports]
        config["crl"] = CRL_FILE
        if relay.budgets:
            config["budgets"] = dict(relay.budgets)
        if project.edges:
            config["edges"] = {
                e.name: {"sites": list(project.sites_behind(e.name))} for e in project.edges
            }
    if role is Role.EDGE:
        edge = project.edge(name)
        config["listen"] = [t.listen_url(edge.listen_host) for t in edge.transports]
        config["sites"] = list(project.sites_behind(name))
    config["tls"] = {"ca": CA_FILE, "cert": CERT_FILE, "key": KEY_FILE}
    if role is Role.SITE:
        config["flower_node_key"] = NODE_KEY_FILE
        config["flower_node_public_key"] = NODE_PUBLIC_KEY_FILE
    served = {
        Role.RELAY: relay.metrics_listen,
        Role.SITE: project.site_metrics_listen(metrics_listen),
        Role.ADMIN: None,
        Role.EDGE: None,
    }[role]
    if served is not None:
        config["metrics_listen"] = served
    return config


def write_kit(
    directory: Path,
    *,
    project: Project,
    ca: CertificateAuthority,
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    transport: str | None = None,
    metrics_listen: str | None = None,
    crl: bytes | None = None,
    via: str | None = None,
) -> None:
    """Write the kit of the participant that ``cert`` names into ``directory`` (new).

    ``transport``, ``metrics_listen``, ``via``: a site's own entry (``None``: the first
    transport of the relay, or of the edge relay ``via``; the project's
    ``sites_metrics_listen``; the relay itself); the relay's and an edge's come from
    their specs.
    """
    peer = peer_from_certificate(cert)
    directory.mkdir(parents=True, mode=0o700)
    (directory / CA_FILE).write_bytes(cert_pem(ca.cert))
    (directory / CERT_FILE).write_bytes(cert_pem(cert))
    write_private(directory / KEY_FILE, key_pem(key))
    files = [CA_FILE, CERT_FILE, KEY_FILE, CONFIG_FILE, START_FILE]
    if peer.role is Role.SITE:
        private, public = _flower_node_keys()
        write_private(directory / NODE_KEY_FILE, private)
        (directory / NODE_PUBLIC_KEY_FILE).write_bytes(public)
        files += [NODE_KEY_FILE, NODE_PUBLIC_KEY_FILE]
    config = _config(
        project,
        peer.name,
        peer.role,
        admin_role=peer.admin_role,
        transport=transport,
        metrics_listen=metrics_listen,
        via=via,
    )
    (directory / CONFIG_FILE).write_text(_config_text(project, peer.role, str(peer), config))
    start = directory / START_FILE
    start.write_text(
        "#!/bin/sh\n"
        f"# Usage: {_USAGE[peer.role]}\n"
        "# FLGATE: the flgate command if it is not on PATH (e.g. 'python -m gateway.cli').\n"
        'KIT="$(cd "$(dirname "$0")" && pwd)"\n' + _START[peer.role]
    )
    start.chmod(0o755)
    if peer.role is Role.RELAY and crl is not None:
        write_crl(directory / CRL_FILE, crl)
    signed = manifest.build(
        directory, files, project=project.name, participant=peer.name, role=peer.role.value
    )
    manifest.write(directory, signed, ca.key)


def _config_text(project: Project, role: Role, who: str, config: dict[str, Any]) -> str:
    header = (
        f"# flgate kit of {who} in project {project.name}, written by `flgate provision`.\n"
        "# Signed with the rest of the kit (manifest.sig): an edited kit is refused.\n"
    )
    if role is Role.EDGE:
        header += _EDGE_NOTE
    return header + yaml.safe_dump(config, sort_keys=False)


def refresh_config(directory: Path, *, project: Project, ca: CertificateAuthority) -> bool:
    """Rewrite the relay's or an edge relay's ``config.yaml`` from ``project``, if it changed.

    What changes is which sites sit behind which edge relay (``add-site --via``). The
    kit is verified first, so a kit edited since is never re-signed; its certificate
    and key are kept, its manifest is signed again. Returns whether anything changed.
    """
    signed = manifest.verify(directory, ca.cert)
    peer = peer_from_certificate(_load_cert(directory / CERT_FILE, "the participant's"))
    if peer.role not in (Role.RELAY, Role.EDGE):
        raise ValueError(f"only the relay's and edge relays' kits are refreshed, not {peer}")
    config = _config(
        project,
        peer.name,
        peer.role,
        admin_role=None,
        transport=None,
        metrics_listen=None,
        via=None,
    )
    text = _config_text(project, peer.role, str(peer), config)
    path = directory / CONFIG_FILE
    if path.read_text() == text:
        return False
    partial = path.with_name(f".{CONFIG_FILE}.partial")
    partial.write_text(text)
    partial.replace(path)
    rebuilt = manifest.build(
        directory,
        signed.files,
        project=signed.project,
        participant=signed.participant,
        role=signed.role,
    )
    manifest.write(directory, rebuilt, ca.key)
    return True


def write_crl(path: Path, crl: bytes) -> None:
    """Replace ``path`` atomically, so a relay reading it never sees half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(crl)
    partial.replace(path)


# --- reading -----------------------------------------------------------------


@dataclass(frozen=True)
class Kit:
    """A verified kit: who it is for, where the relay is, its TLS files."""

    path: Path
    project: str
    name: str
    role: Role
    admin_role: AdminRole | None
    relay_url: str
    """The address this participant dials (its own transport)."""
    relay_urls: dict[str, str]
    """Every transport the relay offers, by scheme."""
    listen_urls: tuple[str, ...]
    """Where the relay binds (relay kits only)."""
    budgets: Mapping[str, float]
    """The relay's admission budgets from ``project.yml`` (relay kits only; see
    :mod:`gateway.core.budget_settings`); options and FLGATE_* variables override them."""
    tls: TLSConfig
    crl: Path | None
    flower_node_key: Path | None
    flower_node_public_key: Path | None
    certificate: x509.Certificate
    ca_certificate: x509.Certificate
    metrics_listen: str | None = None
    """Where the relay or site serves metrics (``HOST:PORT`` or ``off``, as
    :func:`~gateway.observability.endpoint.parse_listen` reads it), from ``project.yml``;
    ``None``: the kit names none. ``--metrics-listen`` and FLGATE_METRICS_LISTEN override it."""
    via: str | None = None
    """The edge relay a site dials (``relay_url`` is the edge's address); ``None``: the relay."""
    sites: tuple[str, ...] = ()
    """The sites behind this edge relay (edge kits only)."""
    edges: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Each edge relay and the sites behind it (relay kits only): an edge may carry
    the envelopes of its own sites and nothing else."""

    def describe(self) -> str:
        role = f"{self.role.value}" + (f", {self.admin_role.value}" if self.admin_role else "")
        expires = self.certificate.not_valid_after_utc
        return (
            f"kit of {self.name} ({role}) in project {self.project}; certificate serial "
            f"{self.certificate.serial_number:x}, valid until {expires:%Y-%m-%d %H:%M} UTC; "
            f"root CA {fingerprint(self.ca_certificate)}"
        )


def _when(moment: dt.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def _load_cert(path: Path, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise KitError(f"{path.name} ({what}) is missing") from None
    except ValueError as exc:
        raise KitError(f"{path.name} ({what}) is not a PEM certificate: {exc}") from None


def _check_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KitError(
            f"{path.name} is readable by other users (mode {mode:04o}); "
            f"run `chmod 600 {path}` (private keys must be 0600)"
        )


def _check_validity(cert: x509.Certificate, what: str, now: dt.datetime) -> None:
    if now > cert.not_valid_after_utc:
        raise KitError(
            f"{what} expired on {_when(cert.not_valid_after_utc)}; ask the project admin "
            "for a new kit"
        )
    if now < cert.not_valid_before_utc:
        raise KitError(
            f"{what} is not valid before {_when(cert.not_valid_before_utc)}; "
            "check this machine's clock"
        )


def _relative(kit: Path, value: object, key: str) -> Path:
    if not isinstance(value, str) or not value or Path(value).is_absolute() or ".." in value:
        raise KitError(f"{CONFIG_FILE}: {key} must name a file inside the kit, not {value!r}")
    return kit / value


def _metrics_listen(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise KitError(f"{CONFIG_FILE}: metrics_listen must be HOST:PORT or 'off', not {value!r}")
    try:
        parse_listen(value)
    except ConfigError as exc:
        raise KitError(f"{CONFIG_FILE}: metrics_listen: {exc}") from None
    return value


def load_kit(
    path: Path,
    *,
    role: Role | None = None,
    ca: x509.Certificate | None = None,
    now: dt.datetime | None = None,
) -> Kit:
    """The kit in ``path``, verified; :class:`KitError` names the first problem.

    ``role``: the role the caller needs (a site kit for ``site start``, ...);
    ``ca``: the root CA the kit must belong to, when the caller knows it.
    """
    try:
        return _load(path, role=role, ca=ca, now=now or dt.datetime.now(dt.timezone.utc))
    except ConfigError as exc:  # KitError, or ManifestError from the manifest check
        raise KitError(f"kit {path} refused: {exc}") from None


def _load(path: Path, *, role: Role | None, ca: x509.Certificate | None, now: dt.datetime) -> Kit:
    if not path.is_dir():
        raise KitError("no such directory")
    ca_cert = _load_cert(path / CA_FILE, "the federation's root CA")
    if ca is not None and ca_cert != ca:
        raise KitError(
            f"its root CA ({fingerprint(ca_cert)}) is not this federation's "
            f"({fingerprint(ca)}): the kit belongs to another federation"
        )
    signed = manifest.verify(path, ca_cert)
    try:
        config = yaml.safe_load((path / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise KitError(f"cannot read {CONFIG_FILE}: {exc}") from None
    if not isinstance(config, dict):
        raise KitError(f"{CONFIG_FILE} is not a mapping")
    try:
        kit_role = Role(config.get("role"))
        name = str(config["name"])
        relay = config["relay"]
        tls_files = config["tls"]
        relay_urls = {str(k): str(v) for k, v in relay["urls"].items()}
        relay_url = str(relay["url"])
        via = None if relay.get("via") is None else str(relay["via"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise KitError(f"{CONFIG_FILE} is incomplete or malformed ({exc!r})") from None
    metrics_listen = _metrics_listen(config.get("metrics_listen"))
    if (name, kit_role.value) != (signed.participant, signed.role):
        raise KitError(f"{CONFIG_FILE} and {manifest.MANIFEST} name different participants")
    tls = TLSConfig(
        ca_cert=_relative(path, tls_files.get("ca"), "tls.ca"),
        cert=_relative(path, tls_files.get("cert"), "tls.cert"),
        key=_relative(path, tls_files.get("key"), "tls.key"),
    )
    referenced = [tls.ca_cert, tls.cert, tls.key]
    node_key = node_public = None
    if kit_role is Role.SITE:
        node_key = _relative(path, config.get("flower_node_key"), "flower_node_key")
        node_public = _relative(
            path, config.get("flower_node_public_key"), "flower_node_public_key"
        )
        referenced += [node_key, node_public]
    for file in referenced:
        if file.name not in signed.files:
            raise KitError(f"{file.name} is not covered by {manifest.MANIFEST}")

    _check_validity(ca_cert, f"the root CA ({CA_FILE})", now)
    cert = _load_cert(tls.cert, "this participant's certificate")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise KitError(
            f"{tls.cert.name} is not signed by the kit's root CA ({CA_FILE}): "
            "a certificate from another federation"
        ) from None
    _check_validity(cert, f"the certificate {tls.cert.name}", now)
    try:
        peer = peer_from_certificate(cert)
    except AuthError as exc:
        raise KitError(f"{tls.cert.name}: {exc}") from None
    if (peer.name, peer.role) != (name, kit_role):
        raise KitError(
            f"{tls.cert.name} is for {peer} but {CONFIG_FILE} says {kit_role.value}:{name}"
        )
    try:
        key = serialization.load_pem_private_key(tls.key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KitError(f"cannot load the private key {tls.key.name}: {exc}") from None
    if key.public_key() != cert.public_key():
        raise KitError(f"{tls.key.name} is not the key of {tls.cert.name}")
    _check_private(tls.key)
    if node_key is not None:
        try:
            serialization.load_ssh_private_key(node_key.read_bytes(), password=None)
        except (OSError, ValueError, UnsupportedAlgorithm) as exc:
            raise KitError(f"cannot load the Flower node key {node_key.name}: {exc}") from None
        _check_private(node_key)
    if role is not None and kit_role is not role:
        raise KitError(
            f"it is the kit of {kit_role.value} {name!r}; this command needs {_A_KIT[role]}"
        )

    crl: Path | None = None
    listen: tuple[str, ...] = ()
    budgets: dict[str, float] = {}
    edges: dict[str, tuple[str, ...]] = {}
    sites: tuple[str, ...] = ()
    if kit_role in (Role.RELAY, Role.EDGE):
        listen = _listen(config.get("listen"))
    if kit_role is Role.EDGE:
        sites = _names(config.get("sites"), "sites")
    if kit_role is Role.RELAY:
        # The CRL is signed by the CA itself, so it lives outside the manifest and
        # can be replaced by a newer one; a relay kit without one would forget
        # every revocation, so it is required.
        crl = _relative(path, config.get("crl", CRL_FILE), "crl")
        try:
            parse_crl(crl.read_bytes(), ca_cert)
        except FileNotFoundError:
            raise KitError(
                f"{crl.name} (the revocation list) is missing; copy state/crl.pem from the "
                "provisioning workspace"
            ) from None
        except (OSError, ConfigError) as exc:
            raise KitError(f"{crl.name}: {exc}") from None
        edges = _edges(config.get("edges"))
        budgets_value = config.get("budgets") or {}
        if not isinstance(budgets_value, dict):
            raise KitError(f"{CONFIG_FILE}: budgets must map a budget to a number")
        budgets = check_budget_values(budgets_value, f"{CONFIG_FILE}: budgets")
    return Kit(
        path=path,
        project=signed.project,
        name=name,
        role=kit_role,
        admin_role=peer.admin_role,
        relay_url=relay_url,
        relay_urls=relay_urls,
        listen_urls=listen,
        budgets=budgets,
        tls=tls,
        crl=crl,
        flower_node_key=node_key,
        flower_node_public_key=node_public,
        certificate=cert,
        ca_certificate=ca_cert,
        metrics_listen=metrics_listen,
        via=via,
        sites=sites,
        edges=edges,
    )


def _listen(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise KitError(f"{CONFIG_FILE}: listen must be a list of URLs")
    return tuple(str(u) for u in value)


def _names(value: object, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise KitError(f"{CONFIG_FILE}: {key} must be a list of site names, not {value!r}")
    return tuple(str(n) for n in value)


def _edges(value: object) -> dict[str, tuple[str, ...]]:
    """The relay kit's ``edges``: edge relay name -> ``{sites: [names]}``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise KitError(f"{CONFIG_FILE}: edges must map an edge relay to {{sites: [...]}}")
    edges: dict[str, tuple[str, ...]] = {}
    for name, entry in value.items():
        if not isinstance(entry, dict):
            raise KitError(f"{CONFIG_FILE}: edges.{name} must be a mapping with sites")
        edges[str(name)] = _names(entry.get("sites"), f"edges.{name}.sites")
    return edges
