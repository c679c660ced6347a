"""``project.yml``: the federation an admin provisions, parsed and checked.

Every mistake is reported with where it is (``sites[1].name``) and what would
be valid, before anything is written. See ``provisioning/project.yml`` for a
documented example.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..core.budget_settings import check_budget_values
from ..core.exceptions import ConfigError
from ..core.identity import AdminRole
from ..observability.endpoint import OFF, parse_listen

SCHEMES = ("grpcs", "https", "tcps", "rediss", "redis")
"""Transports a relay can offer: mutual TLS, or Redis with signed entries."""
REDIS_SCHEMES = ("redis", "rediss")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
"""Participant names: a certificate CN and a directory name at once."""
DEFAULT_VALIDITY_DAYS = 365
DEFAULT_CA_VALIDITY_DAYS = 3650


def metrics_listen_value(value: object) -> str:
    """``value`` as a kit carries it: ``HOST:PORT`` or ``off``; ``ConfigError`` otherwise.

    A bare ``off`` in YAML reads as ``false`` (YAML 1.1), so ``False`` means ``off`` too.
    """
    text = OFF if value is False else str(value).strip()
    return OFF if parse_listen(text) is None else text


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class Transport:
    """One way to reach the relay: a scheme, the port, the host sites dial."""

    scheme: str
    port: int
    host: str
    """What sites dial (a relay host name, or the Redis server for redis(s))."""
    listen: str | None = None
    """Where the relay binds, when not ``<listen_host>:<port>``."""

    @property
    def url(self) -> str:
        return f"{self.scheme}://{_url_host(self.host)}:{self.port}"

    def listen_url(self, listen_host: str) -> str:
        if self.listen:
            return self.listen
        if self.scheme in REDIS_SCHEMES:
            return self.url  # a Redis transport meets at the Redis server; the relay dials it
        return f"{self.scheme}://{_url_host(listen_host)}:{self.port}"


@dataclass(frozen=True)
class RelaySpec:
    name: str
    hosts: tuple[str, ...]
    listen_host: str
    transports: tuple[Transport, ...]
    budgets: Mapping[str, float] = field(default_factory=dict)
    """Admission budgets by key of :data:`~gateway.core.budget_settings.BUDGET_SETTINGS`
    (``relay.budgets`` in ``project.yml``); written into the relay's kit."""
    metrics_listen: str | None = None
    """Where the relay serves metrics (``HOST:PORT`` or ``off``; ``relay.metrics_listen``);
    ``None``: the kit names none and ``relay start`` takes its default."""

    def transport(self, scheme: str | None) -> Transport:
        """The transport ``scheme``, or the relay's first (preferred) one."""
        return _transport_by_scheme(self.transports, scheme, "the relay")


def _transport_by_scheme(
    transports: tuple[Transport, ...], scheme: str | None, owner: str
) -> Transport:
    """The transport ``scheme`` of ``transports``, or the first (preferred) one."""
    if scheme is None:
        return transports[0]
    for transport in transports:
        if transport.scheme == scheme:
            return transport
    offered = ", ".join(t.scheme for t in transports)
    raise ConfigError(f"{owner} offers no {scheme} transport (it offers: {offered})")


@dataclass(frozen=True)
class EdgeSpec:
    """An edge relay: sites in a closed network dial it; it dials the central relay.

    Its certificate (OU ``edge``) names ``hosts`` as a server certificate does; the
    process that serves it is ``flgate edge start`` (:mod:`gateway.edge`).
    """

    name: str
    hosts: tuple[str, ...]
    listen_host: str
    transports: tuple[Transport, ...]
    """What the sites behind it dial, scheme -> port (as the relay's transports)."""
    upstream: str | None = None
    """The relay's transport this edge dials; ``None``: the relay's first."""

    def transport(self, scheme: str | None) -> Transport:
        """The transport ``scheme``, or the edge's first (preferred) one."""
        return _transport_by_scheme(self.transports, scheme, f"edge relay {self.name!r}")


@dataclass(frozen=True)
class SiteSpec:
    name: str
    transport: str | None = None
    """The scheme this site dials; ``None``: the first transport of what it dials (the
    relay, or its edge relay)."""
    via: str | None = None
    """The edge relay this site dials instead of the relay; ``None``: the relay."""
    metrics_listen: str | None = None
    """Where this site's agent serves metrics (``HOST:PORT`` or ``off``); ``None``: the
    project's ``sites_metrics_listen``."""


@dataclass(frozen=True)
class AdminSpec:
    name: str
    role: AdminRole


@dataclass(frozen=True)
class Project:
    """A federation: its relay, sites and admins, and how long certificates last."""

    name: str
    relay: RelaySpec
    sites: tuple[SiteSpec, ...] = ()
    admins: tuple[AdminSpec, ...] = ()
    validity_days: int = DEFAULT_VALIDITY_DAYS
    ca_validity_days: int = DEFAULT_CA_VALIDITY_DAYS
    sites_metrics_listen: str | None = None
    """The metrics address of every site that names none (``HOST:PORT`` or ``off``);
    ``None``: such kits name none and ``site start`` takes its default."""
    edges: tuple[EdgeSpec, ...] = ()
    """Edge relays, each carrying the sites whose ``via`` names it."""

    @classmethod
    def load(cls, path: Path) -> Project:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the project file {path}: {exc}") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        return cls.parse(data, source=str(path))

    @classmethod
    def parse(cls, data: object, *, source: str = "project.yml") -> Project:
        """The project described by ``data`` (parsed YAML); ``ConfigError`` says what is wrong."""
        return _Parser(source).project(data)

    def site_metrics_listen(self, own: str | None) -> str | None:
        """What a site's kit carries: the site's ``own`` address, else the project's default."""
        return own or self.sites_metrics_listen

    def participants(self) -> list[str]:
        return [
            self.relay.name,
            *(s.name for s in self.sites),
            *(a.name for a in self.admins),
            *(e.name for e in self.edges),
        ]

    def edge(self, name: str) -> EdgeSpec:
        """The edge relay ``name``; ``ConfigError`` lists the known ones."""
        for edge in self.edges:
            if edge.name == name:
                return edge
        known = ", ".join(e.name for e in self.edges)
        raise ConfigError(
            f"project {self.name!r} has no edge relay {name!r} "
            + (f"(its edge relays: {known})" if known else "(it has none: add one under edges:)")
        )

    def sites_behind(self, edge: str) -> tuple[str, ...]:
        """The sites that dial the edge relay ``edge``, in the project's order."""
        return tuple(s.name for s in self.sites if s.via == edge)

    def site_transport(self, site: SiteSpec) -> Transport:
        """What ``site`` dials: its transport of its edge relay, or of the relay."""
        if site.via is not None:
            return self.edge(site.via).transport(site.transport)
        return self.relay.transport(site.transport)

    def with_site(self, site: SiteSpec) -> Project:
        self._check_new(site.name)
        self.site_transport(site)
        return replace(self, sites=(*self.sites, site))

    def with_edge(self, edge: EdgeSpec) -> Project:
        self._check_new(edge.name)
        self.relay.transport(edge.upstream)
        return replace(self, edges=(*self.edges, edge))

    def with_admin(self, admin: AdminSpec) -> Project:
        self._check_new(admin.name)
        return replace(self, admins=(*self.admins, admin))

    def _check_new(self, name: str) -> None:
        _check_name(name, "name")
        if name in self.participants():
            raise ConfigError(f"{name!r} is already a participant of project {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        """The project as ``project.yml`` data (what :meth:`parse` reads back)."""
        transports = _transports_dict(self.relay.transports, self.relay.hosts[0])
        relay = self.relay
        return {
            "name": self.name,
            "validity_days": self.validity_days,
            "ca_validity_days": self.ca_validity_days,
            "relay": {
                "name": relay.name,
                "hosts": list(relay.hosts),
                "listen_host": relay.listen_host,
                "transports": transports,
                **({"budgets": dict(relay.budgets)} if relay.budgets else {}),
                **({"metrics_listen": relay.metrics_listen} if relay.metrics_listen else {}),
            },
            **(
                {"sites_metrics_listen": self.sites_metrics_listen}
                if self.sites_metrics_listen
                else {}
            ),
            "sites": [
                {
                    "name": s.name,
                    **({"via": s.via} if s.via else {}),
                    **({"transport": s.transport} if s.transport else {}),
                    **({"metrics_listen": s.metrics_listen} if s.metrics_listen else {}),
                }
                for s in self.sites
            ],
            "admins": [{"name": a.name, "role": a.role.value} for a in self.admins],
            **(
                {
                    "edges": [
                        {
                            "name": e.name,
                            "hosts": list(e.hosts),
                            "listen_host": e.listen_host,
                            "transports": _transports_dict(e.transports, e.hosts[0]),
                            **({"upstream": e.upstream} if e.upstream else {}),
                        }
                        for e in self.edges
                    ]
                }
                if self.edges
                else {}
            ),
        }


def _transports_dict(transports: tuple[Transport, ...], first_host: str) -> dict[str, Any]:
    """``transports`` as ``project.yml`` writes them: a port, or ``{port, host, listen}``."""
    result: dict[str, Any] = {}
    for t in transports:
        entry: dict[str, Any] = {"port": t.port}
        if t.host != first_host:
            entry["host"] = t.host
        if t.listen:
            entry["listen"] = t.listen
        result[t.scheme] = entry if len(entry) > 1 else t.port
    return result


def _check_name(value: object, where: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ConfigError(
            f"{where}: {value!r} is not a valid name (1-64 characters: letters, digits, "
            "'.', '_', '@', '-'; starting with a letter or digit)"
        )
    return value


class _Parser:
    """Reads project data, naming the exact place of the first mistake."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {message}")

    def mapping(
        self, value: object, where: str, *, required: Sequence[str], optional: Sequence[str]
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(where, f"must be a mapping, not {type(value).__name__}")
        unknown = sorted(str(k) for k in value if k not in (*required, *optional))
        if unknown:
            allowed = ", ".join((*required, *optional))
            raise self.error(where, f"unknown key(s) {', '.join(unknown)} (allowed: {allowed})")
        missing = [k for k in required if k not in value]
        if missing:
            raise self.error(where, f"missing {', '.join(missing)}")
        return value

    def name(self, value: object, where: str) -> str:
        try:
            return _check_name(value, where)
        except ConfigError as exc:
            raise ConfigError(f"{self.source}: {exc}") from None

    def string(self, value: object, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(where, "must be a non-empty string")
        return value.strip()

    def integer(self, value: object, where: str, *, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(where, f"must be a whole number from {low} to {high}, not {value!r}")
        return value

    def metrics_listen(self, value: object, where: str) -> str | None:
        if value is None:
            return None
        try:
            return metrics_listen_value(value)
        except ConfigError as exc:
            raise self.error(where, str(exc)) from None

    def items(self, value: object, where: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(where, f"must be a list, not {type(value).__name__}")
        return value

    def project(self, data: object) -> Project:
        top = self.mapping(
            data,
            "top level",
            required=("name", "relay"),
            optional=(
                "validity_days",
                "ca_validity_days",
                "sites_metrics_listen",
                "sites",
                "admins",
                "edges",
            ),
        )
        name = self.name(top["name"], "name")
        validity = self.integer(
            top.get("validity_days", DEFAULT_VALIDITY_DAYS), "validity_days", low=1, high=36500
        )
        ca_validity = self.integer(
            top.get("ca_validity_days", DEFAULT_CA_VALIDITY_DAYS),
            "ca_validity_days",
            low=1,
            high=36500,
        )
        if ca_validity < validity:
            raise self.error(
                "ca_validity_days",
                f"{ca_validity} is shorter than validity_days ({validity}): "
                "no certificate may outlive the root CA",
            )
        relay = self.relay(top["relay"])
        sites_metrics_listen = self.metrics_listen(
            top.get("sites_metrics_listen"), "sites_metrics_listen"
        )
        edges = tuple(
            self.edge(item, f"edges[{i}]", relay)
            for i, item in enumerate(self.items(top.get("edges"), "edges"))
        )
        sites = tuple(
            self.site(item, f"sites[{i}]", relay, edges)
            for i, item in enumerate(self.items(top.get("sites"), "sites"))
        )
        admins = tuple(
            self.admin(item, f"admins[{i}]")
            for i, item in enumerate(self.items(top.get("admins"), "admins"))
        )
        seen: dict[str, str] = {relay.name: "relay.name"}
        for where, participant in [
            *((f"sites[{i}].name", s.name) for i, s in enumerate(sites)),
            *((f"admins[{i}].name", a.name) for i, a in enumerate(admins)),
            *((f"edges[{i}].name", e.name) for i, e in enumerate(edges)),
        ]:
            if participant in seen:
                raise self.error(
                    where,
                    f"{participant!r} is already used by {seen[participant]}; names are unique",
                )
            seen[participant] = where
        return Project(
            name=name,
            relay=relay,
            sites=sites,
            admins=admins,
            validity_days=validity,
            ca_validity_days=ca_validity,
            sites_metrics_listen=sites_metrics_listen,
            edges=edges,
        )

    def hosts(self, value: object, where: str) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        hosts = tuple(
            self.string(h, f"{where}[{i}]") for i, h in enumerate(self.items(value, where))
        )
        if not hosts:
            raise self.error(where, "name at least one host that sites dial")
        return hosts

    def transports(self, value: object, where: str, default_host: str) -> tuple[Transport, ...]:
        if not isinstance(value, dict) or not value:
            raise self.error(
                where,
                f"must map a scheme ({', '.join(SCHEMES)}) to a port, e.g. {{grpcs: 8443}}",
            )
        return tuple(
            self.transport(scheme, spec, default_host, where) for scheme, spec in value.items()
        )

    def relay(self, value: object) -> RelaySpec:
        relay = self.mapping(
            value,
            "relay",
            required=("hosts", "transports"),
            optional=("name", "listen_host", "budgets", "metrics_listen"),
        )
        name = self.name(relay.get("name", "relay"), "relay.name")
        hosts = self.hosts(relay["hosts"], "relay.hosts")
        listen_host = self.string(relay.get("listen_host", "0.0.0.0"), "relay.listen_host")
        transports = self.transports(relay["transports"], "relay.transports", hosts[0])
        raw_budgets = relay.get("budgets") or {}
        if not isinstance(raw_budgets, dict):
            raise self.error("relay.budgets", "must map a budget to a number, e.g. {calls: 4096}")
        budgets = check_budget_values(raw_budgets, f"{self.source}: relay.budgets")
        return RelaySpec(
            name=name,
            hosts=hosts,
            listen_host=listen_host,
            transports=transports,
            budgets=budgets,
            metrics_listen=self.metrics_listen(relay.get("metrics_listen"), "relay.metrics_listen"),
        )

    def transport(self, scheme: object, spec: object, default_host: str, section: str) -> Transport:
        where = f"{section}.{scheme}"
        if scheme not in SCHEMES:
            raise self.error(
                where,
                f"unknown transport {scheme!r} (choose from {', '.join(SCHEMES)}; plain grpc, "
                "http and tcp are not offered: without a client certificate a peer has no "
                "identity)",
            )
        if isinstance(spec, dict):
            entry = self.mapping(spec, where, required=("port",), optional=("host", "listen"))
            port = self.integer(entry["port"], f"{where}.port", low=1, high=65535)
            host = self.string(entry.get("host", default_host), f"{where}.host")
            listen = entry.get("listen")
            if listen is not None:
                listen = self.string(listen, f"{where}.listen")
                if not listen.startswith(f"{scheme}://"):
                    raise self.error(
                        f"{where}.listen", f"must be a {scheme}:// URL, not {listen!r}"
                    )
            return Transport(scheme=str(scheme), port=port, host=host, listen=listen)
        port = self.integer(spec, where, low=1, high=65535)
        return Transport(scheme=str(scheme), port=port, host=default_host)

    def edge(self, value: object, where: str, relay: RelaySpec) -> EdgeSpec:
        edge = self.mapping(
            value,
            where,
            required=("name", "hosts", "transports"),
            optional=("listen_host", "upstream"),
        )
        name = self.name(edge["name"], f"{where}.name")
        hosts = self.hosts(edge["hosts"], f"{where}.hosts")
        listen_host = self.string(edge.get("listen_host", "0.0.0.0"), f"{where}.listen_host")
        raw = edge["transports"]
        if not raw:
            raise self.error(
                f"{where}.transports",
                "an edge relay needs at least one transport for its sites to dial, "
                "e.g. {grpcs: 9443}",
            )
        transports = self.transports(raw, f"{where}.transports", hosts[0])
        upstream = edge.get("upstream")
        if upstream is not None:
            try:
                relay.transport(str(upstream))
            except ConfigError as exc:
                raise self.error(f"{where}.upstream", str(exc)) from None
        return EdgeSpec(
            name=name,
            hosts=hosts,
            listen_host=listen_host,
            transports=transports,
            upstream=None if upstream is None else str(upstream),
        )

    def site(
        self, value: object, where: str, relay: RelaySpec, edges: tuple[EdgeSpec, ...]
    ) -> SiteSpec:
        if isinstance(value, str):
            value = {"name": value}
        site = self.mapping(
            value, where, required=("name",), optional=("via", "transport", "metrics_listen")
        )
        name = self.name(site["name"], f"{where}.name")
        via = site.get("via")
        dialed: RelaySpec | EdgeSpec = relay
        if via is not None:
            found = next((e for e in edges if e.name == via), None)
            if found is None:
                known = ", ".join(e.name for e in edges)
                raise self.error(
                    f"{where}.via",
                    f"no edge relay {via!r} "
                    + (f"(edges: {known})" if known else "(the project has no edges: section)"),
                )
            dialed = found
        scheme = site.get("transport")
        if scheme is not None:
            try:
                dialed.transport(str(scheme))
            except ConfigError as exc:
                raise self.error(f"{where}.transport", str(exc)) from None
        return SiteSpec(
            name=name,
            transport=None if scheme is None else str(scheme),
            via=None if via is None else str(via),
            metrics_listen=self.metrics_listen(
                site.get("metrics_listen"), f"{where}.metrics_listen"
            ),
        )

    def admin(self, value: object, where: str) -> AdminSpec:
        admin = self.mapping(value, where, required=("name", "role"), optional=())
        name = self.name(admin["name"], f"{where}.name")
        try:
            role = AdminRole(admin["role"])
        except ValueError:
            raise self.error(
                f"{where}.role",
                f"unknown role {admin['role']!r} (choose from "
                f"{', '.join(r.value for r in AdminRole)})",
            ) from None
        return AdminSpec(name=name, role=role)
