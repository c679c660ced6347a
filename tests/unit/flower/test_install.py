"""A Flower installation's release, and the range the gateway supports."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.exceptions import ConfigError
from gateway.flower.install import SUPPORTED, FlowerInstall, FlowerInstalls, release_matches
from tests.support.relay import flower_not_installed


@pytest.mark.parametrize(
    "version", [SUPPORTED[0] + (0,), (1, 30, 0), (1, 39, 0), SUPPORTED[1] + (3,)]
)
def test_a_release_in_the_range_is_accepted(tmp_path: Path, version: tuple[int, int, int]) -> None:
    flower_not_installed(tmp_path, version).require_supported()


@pytest.mark.parametrize("version", [(1, 25, 0), (1, 43, 0), (2, 0, 0)])
def test_a_release_outside_the_range_is_refused_naming_the_range(
    tmp_path: Path, version: tuple[int, int, int]
) -> None:
    with pytest.raises(
        ConfigError, match=r"is not supported: the gateway runs Flower 1\.26 to 1\.42"
    ):
        flower_not_installed(tmp_path, version).require_supported()


def test_the_release_is_read_from_flwr_version(tmp_path: Path) -> None:
    flwr = tmp_path / "flwr"
    flwr.write_text('#!/bin/sh\necho "Flower version: 1.38.2"\n')
    flwr.chmod(0o755)
    assert FlowerInstall(tmp_path).version_text == "1.38.2"


@pytest.mark.parametrize(
    ("wanted", "release", "matches"),
    [
        ("1.39", "1.39.0", True),
        ("1.39", "1.39.2", True),
        ("1.39.0", "1.39.0", True),
        ("1.39.0", "1.39.1", False),
        ("1.4", "1.40.0", False),
        ("1.40", "1.4.0", False),
        ("1.42", "2.42.0", False),
    ],
)
def test_a_release_named_x_y_matches_any_patch_and_x_y_z_only_itself(
    wanted: str, release: str, matches: bool
) -> None:
    assert release_matches(wanted, release) is matches


def test_installations_are_chosen_by_release_the_first_being_the_default(
    tmp_path: Path,
) -> None:
    versions = [(1, 42, 0), (1, 39, 0), (1, 39, 2), (1, 42, 0)]
    installs = FlowerInstalls.of(
        [flower_not_installed(tmp_path / str(i), v) for i, v in enumerate(versions)]
    )
    assert installs.releases == ["1.42.0", "1.39.0", "1.39.2"]  # one per release
    assert installs.choose() is installs.default
    assert installs.default.bin_dir == tmp_path / "0"
    assert installs.choose("1.39").version_text == "1.39.2"
    assert installs.choose("1.39.0").version_text == "1.39.0"
    assert installs.matching("1.39.0") is not None
    assert installs.matching("1.39.0").version_text == "1.39.2"  # type: ignore[union-attr]
    assert installs.matching("1.38.1") is None
    with pytest.raises(ConfigError, match=r"no Flower 1\.30 here \(installed: 1\.42\.0, 1\.39"):
        installs.choose("1.30")


def test_an_environments_directory_offers_each_environment_in_it(tmp_path: Path) -> None:
    for release in ("1.39.0", "1.42.0"):
        bin_dir = tmp_path / "envs" / release / "bin"
        bin_dir.mkdir(parents=True)
        for name in ("flower-superlink", "flower-supernode", "flwr"):
            (bin_dir / name).write_text(f'#!/bin/sh\necho "Flower version: {release}"\n')
            (bin_dir / name).chmod(0o755)
    (tmp_path / "envs" / "not-an-env").mkdir()
    installs = FlowerInstalls.find(envs_dir=tmp_path / "envs")
    assert installs.releases == ["1.39.0", "1.42.0"]
    with pytest.raises(ConfigError, match="no Flower environment in"):
        FlowerInstalls.find(envs_dir=tmp_path / "envs" / "not-an-env")
