"""The provisioning workspace: the CA and the record of what it issued, and the kits.

::

    WORKSPACE/
      state/                 0700; never handed out
        rootCA.pem           the federation's root CA certificate
        rootCA.key           its private key (0600): signs certificates, manifests, CRLs
        project.yml          the project as provisioned so far (add-site/add-admin extend it)
        issued.json          every certificate issued: name, role, serial, validity, revocation
        crl.pem              the revocation list (also copied to kits/<relay>/crl.pem)
      kits/<name>/           one startup kit per participant (see :mod:`.kit`)

The CA is created once. Running ``provision`` again reuses it and only adds
kits for participants that have none, so kits already handed out stay valid; a
participant is issued a new kit only after its old certificate was revoked.
A new site behind an edge relay is the one change that touches kits already
issued: the relay's and that edge's ``config.yaml`` list it, so they are
rewritten and signed again (same certificates and keys; see :func:`.kit.refresh_config`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import yaml

from ..core.exceptions import ConfigError
from ..core.identity import AdminRole, Role
from . import manifest
from .certs import CertificateAuthority, cert_pem, key_pem, write_private
from .kit import CRL_FILE, refresh_config, write_crl, write_kit
from .project import SCHEMES, AdminSpec, Project, SiteSpec, metrics_listen_value
from .revocation import REASONS, Revocation, build_crl, crl_pem

STATE = "state"
KITS = "kits"
UPDATED_HINT = (
    "its config.yaml lists the sites behind each edge relay again and its manifest is "
    "signed again; certificate and key unchanged: copy config.yaml, manifest.json and "
    "manifest.sig to where it runs"
)


@dataclass
class Issued:
    """One certificate the CA issued (a line of ``issued.json``)."""

    name: str
    role: str
    serial: str
    """Hex, as ``openssl x509 -serial`` shows it."""
    not_before: str
    not_after: str
    admin_role: str | None = None
    transport: str | None = None
    metrics_listen: str | None = None
    """The metrics address written into the kit (``None``: it names none)."""
    revoked_at: str | None = None
    reason: str | None = None
    via: str | None = None
    """The edge relay a site's kit dials (``None``: the relay)."""

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class Outcome:
    """What provisioning did for one participant, for the operator to read."""

    name: str
    action: str  # "issued", "kept", "revoked", "updated"
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {self.action} - {self.detail}"


class ProvisioningWorkspace:
    """The CA, the record of issued certificates and the kits of one federation."""

    def __init__(self, root: Path, ca: CertificateAuthority, project: Project) -> None:
        self.root = root
        self.ca = ca
        self.project = project

    @property
    def state(self) -> Path:
        return self.root / STATE

    @property
    def kits(self) -> Path:
        return self.root / KITS

    def kit(self, name: str) -> Path:
        return self.kits / name

    # --- opening ---------------------------------------------------------------

    @classmethod
    def open(cls, root: Path) -> ProvisioningWorkspace:
        """An existing workspace; ``ConfigError`` if ``root`` holds none."""
        state = root / STATE
        if not (state / "rootCA.key").is_file():
            raise ConfigError(
                f"{root} is not a provisioning workspace (no {STATE}/rootCA.key); "
                "create one with `flgate provision PROJECT_YML -o WORKSPACE`"
            )
        ca = CertificateAuthority.load(
            (state / "rootCA.pem").read_bytes(), (state / "rootCA.key").read_bytes()
        )
        project = Project.load(state / "project.yml")
        return cls(root, ca, project)

    @classmethod
    def create_or_open(cls, root: Path, project: Project) -> tuple[ProvisioningWorkspace, bool]:
        """The workspace for ``project`` at ``root``, created (with a new CA) if new.

        An existing workspace is reused only for the same project and relay:
        kits already handed out dial that relay and trust that CA.
        """
        if (root / STATE / "rootCA.key").is_file():
            workspace = cls.open(root)
            workspace._check_compatible(project)
            return workspace, False
        if root.exists() and any(root.iterdir()):
            raise ConfigError(
                f"{root} exists and is not a provisioning workspace; name a new directory"
            )
        state = root / STATE
        state.mkdir(parents=True, mode=0o700)
        ca = CertificateAuthority.create(
            project.name, validity=dt.timedelta(days=project.ca_validity_days)
        )
        (state / "rootCA.pem").write_bytes(cert_pem(ca.cert))
        write_private(state / "rootCA.key", key_pem(ca.key))
        (root / KITS).mkdir(mode=0o755)
        workspace = cls(root, ca, replace(project, sites=(), admins=(), edges=()))
        workspace._save_project()
        workspace._save_issued([])
        workspace._publish_crl([])
        return workspace, True

    def _check_compatible(self, project: Project) -> None:
        if project.name != self.project.name:
            raise ConfigError(
                f"{self.root} was provisioned for project {self.project.name!r}, not "
                f"{project.name!r}; provision a new project into a new directory"
            )
        if project.relay != self.project.relay:
            raise ConfigError(
                f"the relay section of the project file differs from the one provisioned in "
                f"{self.state / 'project.yml'}: kits already handed out dial the old "
                "addresses. Restore it, or provision a new federation into a new directory"
            )
        provisioned = {e.name: e for e in self.project.edges}
        for edge in project.edges:
            if edge.name in provisioned and edge != provisioned[edge.name]:
                raise ConfigError(
                    f"edge relay {edge.name!r} in the project file differs from the one "
                    f"provisioned in {self.state / 'project.yml'}: its kit and the kits of "
                    "the sites behind it have the old addresses. Restore it, or revoke the "
                    "edge relay and give the new one another name"
                )

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the workspace for one command, so two commands never interleave."""
        with (self.state / ".lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- records ---------------------------------------------------------------

    def issued(self) -> list[Issued]:
        data = json.loads((self.state / "issued.json").read_text())
        return [Issued(**item) for item in data]

    def _save_issued(self, issued: list[Issued]) -> None:
        partial = self.state / ".issued.json.partial"
        partial.write_text(json.dumps([asdict(i) for i in issued], indent=2) + "\n")
        partial.replace(self.state / "issued.json")

    def _save_project(self) -> None:
        text = (
            "# The project as provisioned so far, kept by flgate (add-site and add-admin\n"
            "# extend it). Edit the project file you provision from, not this copy.\n"
        ) + yaml.safe_dump(self.project.to_dict(), sort_keys=False)
        (self.state / "project.yml").write_text(text)

    def active(self, name: str) -> Issued | None:
        return next((i for i in self.issued() if i.name == name and i.active), None)

    # --- issuing ---------------------------------------------------------------

    def provision(self, project: Project) -> list[Outcome]:
        """Kits for every participant of ``project`` that has none yet."""
        self._check_compatible(project)
        for name in project.participants():  # refuse before issuing anything
            current = self.active(name)
            if current is not None and not self.kit(name).is_dir():
                raise ConfigError(
                    f"{name} was issued certificate {current.serial} but {self.kit(name)} is "
                    "gone; to issue a new kit, revoke the old one first: "
                    f"flgate provision revoke {name} -w {self.root}"
                )
        # New kits follow the project file's validity and site default.
        merged = replace(
            self.project,
            validity_days=project.validity_days,
            sites_metrics_listen=project.sites_metrics_listen,
        )
        # Every new participant is known before any kit is written: the relay's kit
        # and an edge's list the sites behind each edge.
        known = set(merged.participants())
        for edge in project.edges:
            if edge.name not in known:
                merged = merged.with_edge(edge)
        for site in project.sites:
            if site.name not in known:
                merged = merged.with_site(site)
        for admin in project.admins:
            if admin.name not in known:
                merged = merged.with_admin(admin)
        self._check_route_kits(merged)
        self.project = merged
        relay = project.relay
        outcomes = [self._ensure(relay.name, Role.RELAY, None, None, relay.metrics_listen)]
        outcomes += [self._ensure(e.name, Role.EDGE, None, None, None) for e in project.edges]
        outcomes += [
            self._ensure(s.name, Role.SITE, None, s.transport, s.metrics_listen, s.via)
            for s in project.sites
        ]
        outcomes += [self._ensure(a.name, Role.ADMIN, a.role, None, None) for a in project.admins]
        outcomes += self._refresh_routes()
        self._save_project()
        return outcomes

    def add_site(
        self,
        name: str,
        *,
        transport: str | None = None,
        metrics_listen: str | None = None,
        via: str | None = None,
    ) -> Outcome:
        """A kit for a new site (or a revoked one), from the same CA.

        ``metrics_listen``: where its agent serves metrics (``HOST:PORT`` or ``off``);
        ``None``: the project's ``sites_metrics_listen``, if any. ``via``: the edge relay
        it dials; then the relay's and that edge's ``config.yaml`` are rewritten to list
        it (the outcome says so). Otherwise no other kit changes.
        """
        if metrics_listen is not None:
            metrics_listen = metrics_listen_value(metrics_listen)
        site = SiteSpec(name=name, transport=transport, metrics_listen=metrics_listen, via=via)
        known = next((s for s in self.project.sites if s.name == name), None)
        if known is None:
            changed = self.project.with_site(site)
        else:
            self._reissuable(name)
            self.project.site_transport(site)
            changed = replace(
                self.project, sites=tuple(site if s is known else s for s in self.project.sites)
            )
        self._check_route_kits(changed)
        self.project = changed
        outcome = self._issue(name, Role.SITE, None, transport, metrics_listen, via)
        updated = self._refresh_routes()
        self._save_project()
        if updated:
            outcome = replace(
                outcome,
                detail=f"{outcome.detail}; also updated the kits of "
                f"{', '.join(u.name for u in updated)} ({UPDATED_HINT})",
            )
        return outcome

    def _route_kits(self, project: Project) -> list[str]:
        """The issued kits that list sites behind edge relays: the relay's and the edges'."""
        if not project.edges:
            return []
        names = [project.relay.name, *(e.name for e in project.edges)]
        return [n for n in names if self.active(n) is not None and self.kit(n).is_dir()]

    def _check_route_kits(self, project: Project) -> None:
        """Refuse before issuing anything if a kit to be re-signed was edited since."""
        for name in self._route_kits(project):
            try:
                manifest.verify(self.kit(name), self.ca.cert)
            except ConfigError as exc:
                raise ConfigError(
                    f"the kit {self.kit(name)} lists the sites behind the edge relays and "
                    f"would be signed again, but it was changed since it was provisioned: "
                    f"{exc}. Restore it (or revoke {name} and provision it again) first"
                ) from None

    def _refresh_routes(self) -> list[Outcome]:
        """Rewrite the relay's and edge relays' kits whose list of edge sites changed."""
        outcomes = []
        for name in self._route_kits(self.project):
            if refresh_config(self.kit(name), project=self.project, ca=self.ca):
                outcomes.append(Outcome(name, "updated", f"kit {self.kit(name)}: {UPDATED_HINT}"))
        return outcomes

    def add_admin(self, name: str, *, role: AdminRole) -> Outcome:
        """A kit for a new admin (or a revoked one), from the same CA; no other kit changes."""
        admin = AdminSpec(name=name, role=role)
        known = next((a for a in self.project.admins if a.name == name), None)
        if known is None:
            self.project = self.project.with_admin(admin)
        else:
            self._reissuable(name)
            self.project = replace(
                self.project,
                admins=tuple(admin if a is known else a for a in self.project.admins),
            )
        outcome = self._issue(name, Role.ADMIN, role, None, None)
        self._save_project()
        return outcome

    def _reissuable(self, name: str) -> None:
        """A known participant gets a new kit only once its certificate is revoked."""
        current = self.active(name)
        if current is not None:
            raise ConfigError(
                f"{name} already has a kit (certificate {current.serial}); revoke it first "
                f"(flgate provision revoke {name} -w {self.root}) to issue a new one"
            )

    def _ensure(
        self,
        name: str,
        role: Role,
        admin_role: AdminRole | None,
        transport: str | None,
        metrics_listen: str | None,
        via: str | None = None,
    ) -> Outcome:
        """``metrics_listen``: the participant's own entry (a site's, or the relay's)."""
        current = self.active(name)
        if current is None:
            return self._issue(name, role, admin_role, transport, metrics_listen, via)
        wanted = (
            role.value,
            admin_role.value if admin_role else None,
            transport,
            self._served(role, metrics_listen),
            via,
        )
        had = (
            current.role,
            current.admin_role,
            current.transport,
            current.metrics_listen,
            current.via,
        )
        detail = f"kit exists (certificate {current.serial}, issued {current.not_before[:10]})"
        if wanted != had:
            detail += (
                f"; its entry changed ({_describe(had)} -> {_describe(wanted)}) but the kit "
                f"was kept: revoke it (flgate provision revoke {name} -w {self.root}) and "
                "provision again to apply the change"
            )
        return Outcome(name, "kept", detail)

    def _served(self, role: Role, metrics_listen: str | None) -> str | None:
        """The metrics address a kit carries, given the participant's own entry."""
        if role is Role.SITE:
            return self.project.site_metrics_listen(metrics_listen)
        return metrics_listen if role is Role.RELAY else None

    def _issue(
        self,
        name: str,
        role: Role,
        admin_role: AdminRole | None,
        transport: str | None,
        metrics_listen: str | None,
        via: str | None = None,
    ) -> Outcome:
        current = self.active(name)
        if current is not None:
            raise ConfigError(
                f"{name} already has a kit (certificate {current.serial}); revoke it first "
                f"(flgate provision revoke {name} -w {self.root}) to issue a new one"
            )
        hosts: tuple[str, ...] = ()
        if role is Role.RELAY:
            hosts = self.project.relay.hosts
        elif role is Role.EDGE:
            hosts = self.project.edge(name).hosts
        now = dt.datetime.now(dt.timezone.utc)
        # No certificate outlives the CA that vouches for it.
        validity = min(
            dt.timedelta(days=self.project.validity_days), self.ca.cert.not_valid_after_utc - now
        )
        cert, key = self.ca.issue(
            name,
            role,
            hosts=hosts,
            validity=validity,
            admin_role=admin_role,
        )
        directory = self.kit(name)
        if directory.exists():  # the kit of a revoked certificate
            shutil.rmtree(directory)
        crl = (self.state / "crl.pem").read_bytes() if role is Role.RELAY else None
        write_kit(
            directory,
            project=self.project,
            ca=self.ca,
            cert=cert,
            key=key,
            transport=transport,
            metrics_listen=metrics_listen if role is Role.SITE else None,
            crl=crl,
            via=via,
        )
        record = Issued(
            name=name,
            role=role.value,
            serial=f"{cert.serial_number:x}",
            not_before=cert.not_valid_before_utc.isoformat(),
            not_after=cert.not_valid_after_utc.isoformat(),
            admin_role=admin_role.value if admin_role else None,
            transport=transport,
            metrics_listen=self._served(role, metrics_listen),
            via=via,
        )
        self._save_issued([*self.issued(), record])
        return Outcome(
            name,
            "issued",
            f"kit {directory} (certificate {record.serial}, valid until {record.not_after[:10]})",
        )

    # --- revoking --------------------------------------------------------------

    def revoke(self, name: str, *, reason: str = "unspecified") -> Outcome:
        """Revoke every active certificate of ``name`` and publish the new CRL."""
        if reason not in REASONS:
            raise ConfigError(f"unknown reason {reason!r} (choose from {', '.join(REASONS)})")
        if name == self.project.relay.name:
            raise ConfigError(
                "the relay's certificate cannot be revoked: sites do not consult the "
                "revocation list; provision a new federation to replace the relay's key"
            )
        issued = self.issued()
        now = dt.datetime.now(dt.timezone.utc)
        serials = []
        for record in issued:
            if record.name == name and record.active:
                record.revoked_at = now.isoformat()
                record.reason = reason
                serials.append(record.serial)
        if not serials:
            known = sorted({i.name for i in issued if i.active})
            raise ConfigError(
                f"{name!r} has no active certificate to revoke "
                f"(participants with one: {', '.join(known) or 'none'})"
            )
        self._save_issued(issued)
        self._publish_crl(issued)
        return Outcome(
            name,
            "revoked",
            f"certificate {', '.join(serials)} ({reason}); the revocation list is in "
            f"{self.state / 'crl.pem'} and {self.kit(self.project.relay.name) / CRL_FILE}: "
            "a relay started from that kit refuses it within a second, others need the file",
        )

    def _publish_crl(self, issued: list[Issued]) -> None:
        revoked = [
            Revocation(
                serial=int(i.serial, 16),
                revoked_at=dt.datetime.fromisoformat(i.revoked_at),
                reason=i.reason or "unspecified",
            )
            for i in issued
            if i.revoked_at is not None
        ]
        data = crl_pem(build_crl(self.ca, revoked))
        write_crl(self.state / "crl.pem", data)
        relay_kit = self.kit(self.project.relay.name)
        if relay_kit.is_dir():
            write_crl(relay_kit / CRL_FILE, data)


def _describe(entry: tuple[str, str | None, str | None, str | None, str | None]) -> str:
    role, admin_role, transport, metrics_listen, via = entry
    parts = [role]
    if via:
        parts.append(f"via {via}")
    if admin_role:
        parts.append(admin_role)
    if transport:
        parts.append(f"transport {transport}")
    if metrics_listen:
        parts.append(f"metrics_listen {metrics_listen}")
    return " ".join(parts)


def provision_local(
    root: Path, label: str, sites: Sequence[str], *, transport: str = "grpcs", port: int = 8443
) -> ProvisioningWorkspace:
    """A throw-away federation on localhost (the demo, local runs): a relay and ``sites``.

    ``label`` names the project (anything; made a valid name); ``transport`` and
    ``port`` only fill the kits' addresses, which local runs override. Whatever
    ``root`` held before (an earlier throw-away federation) is replaced.
    """
    if root.exists():
        shutil.rmtree(root)
    name = re.sub(r"[^A-Za-z0-9._@-]", "-", label).strip("-._@")[:64] or "local"
    project = Project.parse(
        {
            "name": name,
            "relay": {
                "hosts": ["localhost", "127.0.0.1"],
                "listen_host": "127.0.0.1",
                "transports": {transport if transport in SCHEMES else "grpcs": port},
            },
            "sites": list(sites),
        },
        source=f"local project {name}",
    )
    workspace, _ = ProvisioningWorkspace.create_or_open(root, project)
    with workspace.locked():
        workspace.provision(project)
    return workspace
