"""The table of Flower releases, checked against what each release's own parser accepts
(``docs/flower-flag-matrix.tsv``, read from every release 1.26.1-1.42.0)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.config import LoopbackTLS
from gateway.flower.launch import superlink_command, supernode_command
from gateway.flower.releases import RELEASES, traits_of
from tests.support.paths import REPO
from tests.support.relay import flower_not_installed

MATRIX = REPO / "docs" / "flower-flag-matrix.tsv"


def _matrix() -> dict[str, dict[str, dict[str, str]]]:
    """Per program, per release: each option's mark (H listed, h hidden, - unknown)."""
    programs: dict[str, dict[str, dict[str, str]]] = {}
    releases: list[str] = []
    program = ""
    for line in MATRIX.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, *marks = line.split("\t")
        if not name.startswith("-"):
            program, releases = name, marks
            programs[program] = {release: {} for release in releases}
            continue
        for release, mark in zip(releases, marks, strict=True):
            programs[program][release][name] = mark
    return programs


MATRIX_RELEASES = list(_matrix()["flower-superlink"])


def _version(release: str) -> tuple[int, int, int]:
    major, minor, patch = (int(x) for x in release.split("."))
    return major, minor, patch


def _options(argv: list[str]) -> list[str]:
    return [arg for arg in argv if arg.startswith("--")]


def test_the_table_is_in_release_order_and_covers_every_measured_release() -> None:
    firsts = [row.first for row in RELEASES]
    assert firsts == sorted(firsts)
    assert all(traits_of(_version(r)[:2]) is not None for r in MATRIX_RELEASES)
    assert traits_of((1, 25)) is None
    assert traits_of((1, 43)) is None


@pytest.mark.parametrize("release", MATRIX_RELEASES)
def test_every_superlink_flag_is_one_its_release_lists(tmp_path: Path, release: str) -> None:
    install = flower_not_installed(tmp_path, _version(release))
    tls = LoopbackTLS(ca_cert=tmp_path / "ca", cert=tmp_path / "c", key=tmp_path / "k")
    listed = _matrix()["flower-superlink"][release]
    for options in (
        superlink_command(install, tmp_path)[0],
        superlink_command(install, tmp_path, tls=tls, node_auth=True)[0],
    ):
        assert {o: listed.get(o, "-") for o in _options(options)} == dict.fromkeys(
            _options(options), "H"
        )


@pytest.mark.parametrize("release", MATRIX_RELEASES)
def test_every_supernode_flag_is_one_its_release_lists(tmp_path: Path, release: str) -> None:
    install = flower_not_installed(tmp_path, _version(release))
    listed = _matrix()["flower-supernode"][release]
    for options in (
        supernode_command(install, "127.0.0.1:1", node_config={"partition-id": 0}),
        supernode_command(
            install,
            "127.0.0.1:1",
            node_config={},
            grpc_mode="adapter",
            auth_key=tmp_path / "key",
            root_certificates=tmp_path / "ca",
        ),
    ):
        assert {o: listed.get(o, "-") for o in _options(options)} == dict.fromkeys(
            _options(options), "H"
        )


@pytest.mark.parametrize(
    ("release", "ports", "control_is_fleet"),
    [("1.30.0", 3, False), ("1.35.0", 3, False), ("1.38.0", 2, False), ("1.42.0", 1, True)],
)
def test_the_superlink_serves_each_api_where_its_release_puts_it(
    tmp_path: Path, release: str, ports: int, control_is_fleet: bool
) -> None:
    _, addresses = superlink_command(flower_not_installed(tmp_path, _version(release)), tmp_path)
    assert len(set(addresses.serving)) == ports
    assert {addresses.control, addresses.fleet} <= set(addresses.serving)
    assert (addresses.control == addresses.fleet) is control_is_fleet


@pytest.mark.parametrize(
    ("release", "database_file"), [("1.26.1", False), ("1.27.0", False), ("1.28.0", True)]
)
def test_the_superlink_keeps_its_state_in_memory_where_a_file_database_races(
    tmp_path: Path, release: str, database_file: bool
) -> None:
    # 1.26-1.27 create the state on first use without a lock: on a file, two first calls at
    # once run the alembic migrations together (seen: segfaults in direct runs).
    argv, _ = superlink_command(flower_not_installed(tmp_path, _version(release)), tmp_path)
    database = argv[argv.index("--database") + 1]
    assert (database == str(tmp_path / "superlink.db")) is database_file
    assert (database == ":flwr-in-memory:") is not database_file
