"""A Flower installation's release, and the range the gateway supports."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.exceptions import ConfigError
from gateway.flower.install import SUPPORTED, FlowerInstall
from tests.support.relay import flower_not_installed


@pytest.mark.parametrize(
    "version", [SUPPORTED[0] + (0,), (1, 30, 0), (1, 39, 0), SUPPORTED[1] + (3,)]
)
def test_a_release_in_the_range_is_accepted(tmp_path: Path, version: tuple[int, int, int]) -> None:
    flower_not_installed(tmp_path, version).require_supported()


@pytest.mark.parametrize("version", [(1, 26, 1), (1, 25, 0), (1, 43, 0), (2, 0, 0)])
def test_a_release_outside_the_range_is_refused_naming_the_range(
    tmp_path: Path, version: tuple[int, int, int]
) -> None:
    with pytest.raises(
        ConfigError, match=r"is not supported: the gateway runs Flower 1\.27 to 1\.42"
    ):
        flower_not_installed(tmp_path, version).require_supported()


def test_the_release_is_read_from_flwr_version(tmp_path: Path) -> None:
    flwr = tmp_path / "flwr"
    flwr.write_text('#!/bin/sh\necho "Flower version: 1.38.2"\n')
    flwr.chmod(0o755)
    assert FlowerInstall(tmp_path).version_text == "1.38.2"
