"""Edge relays in provisioning: the project file, the edge's kit, the kits of the sites
behind it, the relay's map of edges, ``add-site --via``; and a new workspace in an
existing empty directory.

Real certificates from the project's own CA, real kits on disk; the edge relay process
itself is exercised in tests/unit/edge/ and tests/e2e/test_edges.py.
"""

from __future__ import annotations

import ipaddress
import re
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from gateway.cli import main
from gateway.core.exceptions import ConfigError
from gateway.core.identity import Role, peer_from_certificate
from gateway.provisioning import manifest
from gateway.provisioning.kit import KitError, load_kit
from gateway.provisioning.project import EdgeSpec, Project
from gateway.provisioning.workspace import ProvisioningWorkspace
from tests.support.files import hashes
from tests.support.paths import REPO

EXAMPLE = REPO / "provisioning" / "project.yml"


def edge_project(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "unit",
        "relay": {
            "hosts": ["localhost", "127.0.0.1"],
            "listen_host": "127.0.0.1",
            "transports": {"grpcs": 18443, "https": 18444},
        },
        "edges": [
            {
                "name": "edge-1",
                "hosts": ["edge-1.plant.local", "10.0.0.5"],
                "listen_host": "10.0.0.5",
                "transports": {"tcps": 9443, "grpcs": 9444},
                "upstream": "https",
            },
            {"name": "edge-2", "hosts": "edge-2.lab.local", "transports": {"https": 9500}},
        ],
        "sites": [
            "site-1",
            {"name": "site-2", "via": "edge-1"},
            {"name": "site-3", "via": "edge-1", "transport": "grpcs"},
            {"name": "site-4", "via": "edge-2"},
        ],
        "admins": [{"name": "admin@example.org", "role": "project_admin"}],
    }
    data.update(changes)
    return data


def _edge(**changes: Any) -> dict[str, Any]:
    edge: dict[str, Any] = dict(edge_project()["edges"][0])
    edge.update(changes)
    return edge


@pytest.fixture
def workspace(tmp_path: Path) -> ProvisioningWorkspace:
    project = Project.parse(edge_project())
    ws, created = ProvisioningWorkspace.create_or_open(tmp_path / "ws", project)
    assert created
    ws.provision(project)
    return ws


def config_of(kit: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((kit / "config.yaml").read_text())
    return data


# --- the project file ------------------------------------------------------------------


def test_edges_and_the_sites_behind_them_parse_and_survive_the_provisioned_copy() -> None:
    project = Project.parse(edge_project())
    edge = project.edge("edge-1")
    assert edge.hosts == ("edge-1.plant.local", "10.0.0.5")
    assert [t.url for t in edge.transports] == [
        "tcps://edge-1.plant.local:9443",
        "grpcs://edge-1.plant.local:9444",
    ]
    assert edge.upstream == "https"
    second = project.edge("edge-2")
    assert (second.hosts, second.listen_host, second.upstream) == (
        ("edge-2.lab.local",),
        "0.0.0.0",
        None,
    )
    assert project.sites_behind("edge-1") == ("site-2", "site-3")
    assert project.sites_behind("edge-2") == ("site-4",)
    assert [s.via for s in project.sites] == [None, "edge-1", "edge-1", "edge-2"]
    sites = {s.name: s for s in project.sites}
    assert project.site_transport(sites["site-2"]).url == "tcps://edge-1.plant.local:9443"
    assert project.site_transport(sites["site-3"]).url == "grpcs://edge-1.plant.local:9444"
    assert project.site_transport(sites["site-1"]).url == "grpcs://localhost:18443"
    assert project.participants()[-2:] == ["edge-1", "edge-2"]
    assert Project.parse(project.to_dict()) == project


def test_a_project_without_edges_writes_no_edges_key() -> None:
    data = edge_project()
    del data["edges"]
    data["sites"] = ["site-1"]
    project = Project.parse(data)
    assert project.edges == ()
    assert "edges" not in project.to_dict()
    assert "via" not in project.to_dict()["sites"][0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"sites": [{"name": "site-9", "via": "edge-9"}]},
            r"p\.yml: sites\[0\]\.via: no edge relay 'edge-9' \(edges: edge-1, edge-2\)",
        ),
        (
            {"edges": None, "sites": [{"name": "site-9", "via": "edge-1"}]},
            r"sites\[0\]\.via: no edge relay 'edge-1' \(the project has no edges: section\)",
        ),
        (
            {"sites": [{"name": "site-9", "via": "edge-2", "transport": "tcps"}]},
            r"sites\[0\]\.transport: edge relay 'edge-2' offers no tcps transport "
            r"\(it offers: https\)",
        ),
        (
            {"sites": [{"name": "edge-1"}]},
            r"edges\[0\]\.name: 'edge-1' is already used by sites\[0\]\.name; names are unique",
        ),
        (
            {"edges": [_edge(name="relay")], "sites": []},
            r"edges\[0\]\.name: 'relay' is already used by relay\.name",
        ),
        (
            {"edges": [_edge(), _edge()], "sites": []},
            r"edges\[1\]\.name: 'edge-1' is already used by edges\[0\]\.name",
        ),
        (
            {"admins": [{"name": "edge-2", "role": "member"}]},
            r"edges\[1\]\.name: 'edge-2' is already used by admins\[0\]\.name",
        ),
        (
            {"edges": [_edge(transports={})], "sites": []},
            r"edges\[0\]\.transports: an edge relay needs at least one transport",
        ),
        (
            {"edges": [{"name": "edge-1", "hosts": ["e"]}], "sites": []},
            r"edges\[0\]: missing transports",
        ),
        (
            {"edges": [_edge(name="edge 1!")], "sites": []},
            r"edges\[0\]\.name: 'edge 1!' is not a valid name",
        ),
        (
            {"edges": [_edge(hosts=[])], "sites": []},
            r"edges\[0\]\.hosts: name at least one host that sites dial",
        ),
        (
            {"edges": [_edge(upstream="tcps")], "sites": []},
            r"edges\[0\]\.upstream: the relay offers no tcps transport "
            r"\(it offers: grpcs, https\)",
        ),
        (
            {"edges": [_edge(transports={"grpc": 9443})], "sites": []},
            r"edges\[0\]\.transports\.grpc: unknown transport 'grpc'",
        ),
        (
            {"edges": [_edge(via="x")], "sites": []},
            r"edges\[0\]: unknown key\(s\) via \(allowed: name, hosts, transports, "
            r"listen_host, upstream\)",
        ),
    ],
)
def test_edge_mistakes_are_reported_with_their_place(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Project.parse(edge_project(**data), source="p.yml")


# --- the kits --------------------------------------------------------------------------


def test_the_edge_kit_holds_what_an_edge_relay_needs(workspace: ProvisioningWorkspace) -> None:
    path = workspace.kits / "edge-1"
    kit = load_kit(path, role=Role.EDGE, ca=workspace.ca.cert)
    peer = peer_from_certificate(kit.certificate)
    assert (peer.name, peer.role, kit.role) == ("edge-1", Role.EDGE, Role.EDGE)
    san = kit.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["edge-1.plant.local"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    usage = kit.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in usage
    assert stat.S_IMODE((path / "key.pem").stat().st_mode) == 0o600
    assert kit.listen_urls == ("tcps://10.0.0.5:9443", "grpcs://10.0.0.5:9444")
    assert kit.relay_url == "https://localhost:18444"  # its upstream, not the relay's first
    assert kit.sites == ("site-2", "site-3")
    assert (kit.crl, kit.flower_node_key, kit.via) == (None, None, None)
    assert load_kit(workspace.kits / "edge-2").relay_url == "grpcs://localhost:18443"
    assert sorted(p.name for p in path.iterdir()) == [
        "cert.pem",
        "config.yaml",
        "key.pem",
        "manifest.json",
        "manifest.sig",
        "rootCA.pem",
        "start.sh",
    ]
    signed = manifest.verify(path, workspace.ca.cert)
    assert (signed.participant, signed.role) == ("edge-1", "edge")
    assert set(signed.files) == {"rootCA.pem", "cert.pem", "key.pem", "config.yaml", "start.sh"}
    start = (path / "start.sh").read_text()
    assert start.endswith('exec ${FLGATE:-flgate} edge start --kit "$KIT" "$@"\n')
    assert (path / "start.sh").stat().st_mode & stat.S_IXUSR
    config = (path / "config.yaml").read_text()
    assert "carries their signed envelopes (`flgate edge start --kit DIR`)" in config


def test_a_tampered_edge_kit_is_refused_like_any_other(workspace: ProvisioningWorkspace) -> None:
    path = workspace.kits / "edge-1"
    config = path / "config.yaml"
    config.write_text(config.read_text().replace("- site-3\n", "- site-3\n- site-1\n"))
    with pytest.raises(KitError, match=r"config\.yaml was changed after provisioning"):
        load_kit(path)
    assert main(["kit", "verify", str(path)]) == 3


def test_an_edge_kit_is_no_relay_or_site_kit(workspace: ProvisioningWorkspace) -> None:
    edge = workspace.kits / "edge-1"
    with pytest.raises(KitError, match="kit of edge 'edge-1'; this command needs the relay's"):
        load_kit(edge, role=Role.RELAY)
    with pytest.raises(KitError, match="kit of edge 'edge-1'; this command needs a site's kit"):
        load_kit(edge, role=Role.SITE)
    with pytest.raises(KitError, match="kit of site 'site-2'; this command needs an edge"):
        load_kit(workspace.kits / "site-2", role=Role.EDGE)


def test_a_site_behind_an_edge_dials_the_edge(workspace: ProvisioningWorkspace) -> None:
    site = load_kit(workspace.kits / "site-2", role=Role.SITE)
    assert site.relay_url == "tcps://edge-1.plant.local:9443"
    assert site.relay_urls == {
        "tcps": "tcps://edge-1.plant.local:9443",
        "grpcs": "grpcs://edge-1.plant.local:9444",
    }
    assert site.via == "edge-1"
    assert load_kit(workspace.kits / "site-3").relay_url == "grpcs://edge-1.plant.local:9444"
    assert load_kit(workspace.kits / "site-4").relay_url == "https://edge-2.lab.local:9500"
    direct = load_kit(workspace.kits / "site-1")
    assert (direct.relay_url, direct.via) == ("grpcs://localhost:18443", None)
    assert "via" not in config_of(workspace.kits / "site-1")["relay"]


def test_the_relay_kit_maps_each_edge_to_its_sites(workspace: ProvisioningWorkspace) -> None:
    relay = load_kit(workspace.kits / "relay", role=Role.RELAY)
    assert relay.edges == {"edge-1": ("site-2", "site-3"), "edge-2": ("site-4",)}
    assert config_of(workspace.kits / "relay")["edges"] == {
        "edge-1": {"sites": ["site-2", "site-3"]},
        "edge-2": {"sites": ["site-4"]},
    }
    assert relay.listen_urls == ("grpcs://127.0.0.1:18443", "https://127.0.0.1:18444")


# --- later changes ---------------------------------------------------------------------


def test_add_site_via_an_edge_updates_the_relay_and_that_edge_only(
    workspace: ProvisioningWorkspace, capsys: pytest.CaptureFixture[str]
) -> None:
    before = hashes(workspace.kits)
    ws = str(workspace.root)
    assert main(["provision", "add-site", "site-5", "--via", "edge-2", "-w", ws]) == 0
    out = capsys.readouterr().out
    assert "site-5: issued" in out and "also updated the kits of relay, edge-2" in out
    after = hashes(workspace.kits)
    changed = sorted(k for k in before if before[k] != after[k])
    assert changed == [
        "edge-2/config.yaml",
        "edge-2/manifest.json",
        "edge-2/manifest.sig",
        "relay/config.yaml",
        "relay/manifest.json",
        "relay/manifest.sig",
    ]
    ca = workspace.ca.cert
    for kit in workspace.kits.iterdir():
        load_kit(kit, ca=ca)
    assert load_kit(workspace.kits / "relay").edges["edge-2"] == ("site-4", "site-5")
    assert load_kit(workspace.kits / "edge-2").sites == ("site-4", "site-5")
    assert load_kit(workspace.kits / "site-5").relay_url == "https://edge-2.lab.local:9500"
    reopened = ProvisioningWorkspace.open(workspace.root)
    assert reopened.project.sites_behind("edge-2") == ("site-4", "site-5")
    assert [i.via for i in reopened.issued() if i.name == "site-5"] == ["edge-2"]

    # A site that dials the relay directly changes no other kit, as before.
    before = hashes(workspace.kits)
    assert main(["provision", "add-site", "site-6", "-w", ws]) == 0
    assert "also updated" not in capsys.readouterr().out
    assert {k: v for k, v in hashes(workspace.kits).items() if k in before} == before


def test_add_site_via_an_unknown_edge_is_refused_naming_the_known_ones(
    workspace: ProvisioningWorkspace, capsys: pytest.CaptureFixture[str]
) -> None:
    before = hashes(workspace.root)
    ws = str(workspace.root)
    assert main(["provision", "add-site", "site-5", "--via", "edge-9", "-w", ws]) == 3
    before["state/.lock"] = hashes(workspace.root)["state/.lock"]  # the command's lock file
    err = capsys.readouterr().err
    assert "has no edge relay 'edge-9' (its edge relays: edge-1, edge-2)" in err
    command = ["provision", "add-site", "site-5", "--via", "edge-2", "--transport", "tcps"]
    assert main([*command, "-w", ws]) == 3
    assert "edge relay 'edge-2' offers no tcps transport (it offers: https)" in (
        capsys.readouterr().err
    )
    assert hashes(workspace.root) == before
    assert not (workspace.kits / "site-5").exists()


def test_a_relay_kit_edited_since_is_not_signed_again(
    workspace: ProvisioningWorkspace, capsys: pytest.CaptureFixture[str]
) -> None:
    config = workspace.kits / "relay" / "config.yaml"
    config.write_text(config.read_text() + "# edited\n")
    ws = str(workspace.root)
    assert main(["provision", "add-site", "site-5", "--via", "edge-1", "-w", ws]) == 3
    err = capsys.readouterr().err
    assert f"the kit {workspace.kits / 'relay'} lists the sites behind the edge relays" in err
    assert "config.yaml was changed after provisioning" in err
    with pytest.raises(KitError):
        load_kit(workspace.kits / "relay")
    # Refused before anything was issued: no kit, no record, the project unchanged.
    assert not (workspace.kits / "site-5").exists()
    reopened = ProvisioningWorkspace.open(workspace.root)
    assert "site-5" not in reopened.project.participants()
    assert "site-5" not in [i.name for i in reopened.issued()]


def test_provisioning_again_adds_edges_and_sites_and_keeps_the_rest(
    workspace: ProvisioningWorkspace, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    before = hashes(workspace.kits)
    project_file = tmp_path / "project.yml"
    project_file.write_text(yaml.safe_dump(edge_project(), sort_keys=False))
    assert main(["provision", str(project_file), "-o", str(workspace.root)]) == 0
    assert "edge-1: kept" in capsys.readouterr().out
    assert hashes(workspace.kits) == before

    data = edge_project()
    data["edges"].append({"name": "edge-3", "hosts": ["edge-3"], "transports": {"tcps": 9600}})
    data["sites"].append({"name": "site-7", "via": "edge-3"})
    data["sites"][0] = {"name": "site-1", "via": "edge-1"}  # moved: kept, and said so
    project_file.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["provision", str(project_file), "-o", str(workspace.root)]) == 0
    out = capsys.readouterr().out
    assert "edge-3: issued" in out and "site-7: issued" in out
    assert "relay: updated" in out
    assert "site-1: kept" in out and "(site -> site via edge-1)" in out
    assert load_kit(workspace.kits / "relay").edges["edge-3"] == ("site-7",)
    assert load_kit(workspace.kits / "edge-3").sites == ("site-7",)
    assert load_kit(workspace.kits / "site-1").via is None
    changed = sorted({k.split("/")[0] for k in before if before[k] != hashes(workspace.kits)[k]})
    assert changed == ["relay"]


def test_a_changed_edge_section_is_refused(workspace: ProvisioningWorkspace) -> None:
    data = edge_project()
    data["edges"][1]["transports"] = {"https": 9501}
    with pytest.raises(ConfigError, match="edge relay 'edge-2' in the project file differs"):
        workspace.provision(Project.parse(data))


def test_an_edge_is_added_to_a_project_that_had_none(tmp_path: Path) -> None:
    data = edge_project()
    edges, sites = data.pop("edges"), data["sites"]
    data["sites"] = ["site-1"]
    first = Project.parse(data)
    ws, _ = ProvisioningWorkspace.create_or_open(tmp_path / "ws", first)
    ws.provision(first)
    assert "edges" not in config_of(ws.kits / "relay")
    outcomes = ws.provision(Project.parse({**data, "edges": edges, "sites": sites}))
    assert [(o.name, o.action) for o in outcomes if o.action != "kept"] == [
        ("edge-1", "issued"),
        ("edge-2", "issued"),
        ("site-2", "issued"),
        ("site-3", "issued"),
        ("site-4", "issued"),
        ("relay", "updated"),
    ]
    assert load_kit(ws.kits / "relay").edges == {
        "edge-1": ("site-2", "site-3"),
        "edge-2": ("site-4",),
    }
    assert isinstance(ws.project.edge("edge-1"), EdgeSpec)


# --- the workspace directory -----------------------------------------------------------


def test_an_existing_empty_directory_becomes_a_new_workspace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "made-by-mktemp"
    empty.mkdir(mode=0o700)
    project_file = tmp_path / "project.yml"
    project_file.write_text(yaml.safe_dump(edge_project(), sort_keys=False))
    assert main(["provision", str(project_file), "-o", str(empty)]) == 0
    assert "created root CA for project unit" in capsys.readouterr().out
    assert (empty / "state" / "rootCA.key").is_file()
    assert sorted(p.name for p in (empty / "kits").iterdir()) == [
        "admin@example.org",
        "edge-1",
        "edge-2",
        "relay",
        "site-1",
        "site-2",
        "site-3",
        "site-4",
    ]

    other = tmp_path / "not-empty"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    assert main(["provision", str(project_file), "-o", str(other)]) == 3
    assert "exists and is not a provisioning workspace; name a new directory" in (
        capsys.readouterr().err
    )
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_the_documented_edge_example_parses() -> None:
    """provisioning/project.yml shows an edge and two sites behind it, commented out."""
    lines = []
    in_edges = False
    for line in EXAMPLE.read_text().splitlines():
        in_edges = (in_edges or line.startswith("# edges:")) and bool(line.strip())
        if in_edges:
            line = line[2:]
        elif re.match(r"  # - name: plant-|  #   (via|transport):", line):
            line = line.replace("# ", "", 1)
        lines.append(line)
    project = Project.parse(yaml.safe_load("\n".join(lines)))
    assert project.sites_behind("plant-edge") == ("plant-a", "plant-b")
    sites = {s.name: s for s in project.sites}
    assert project.site_transport(sites["plant-a"]).url == "grpcs://edge.plant.internal:9443"
    assert project.site_transport(sites["plant-b"]).url == "tcps://edge.plant.internal:9445"
    assert project.edge("plant-edge").upstream == "https"
