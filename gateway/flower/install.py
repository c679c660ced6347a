"""A Flower installation: where its programs are and which Fleet dialect it speaks."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..core.exceptions import ConfigError
from ..proto.envelope_pb2 import DIALECT_GRPC, DIALECT_HTTP, Dialect
from .releases import ReleaseTraits, traits_of

log = logging.getLogger(__name__)

# flwr 1.40 moved the Fleet API from gRPC to protobuf over HTTP.
FIRST_HTTP_VERSION = (1, 40)
SUPPORTED = ((1, 26), (1, 42))
"""The Flower releases (major, minor) the gateway starts and drives, oldest and newest:
each measured through the gateway with results identical to direct Flower
(``scripts/flower-matrix``, and the version matrix of the end-to-end tests). 1.26 and
1.27 run their SuperLink on Flower's in-memory state (:mod:`.releases`): on a file
database their unlocked first migrations crash when two callers arrive at once."""
_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def flower_env(bin_dir: Path | None = None, flwr_home: Path | None = None) -> dict[str, str]:
    """The environment of a Flower process: no telemetry, its own programs first on PATH.

    Flower's programs start helpers (``flower-superexec``) by bare name, so the
    installation's ``bin`` must come first or another version's helper is used.
    ``flwr_home`` keeps installed FABs and CLI state private to one run.
    """
    env = dict(os.environ)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"  # 1.29+: each process asks api.flower.ai
    env["PYTHONUNBUFFERED"] = "1"
    if bin_dir is not None:
        env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


@dataclass(frozen=True)
class FlowerInstall:
    """Flower's programs in one ``bin`` directory (a virtual environment's, say)."""

    bin_dir: Path

    @classmethod
    def find(cls, bin_dir: Path | None = None) -> FlowerInstall:
        """The installation in ``bin_dir``, else the one beside this Python, else on PATH."""
        if bin_dir is not None:
            install = cls(bin_dir)
        elif (Path(sys.executable).parent / "flower-superlink").exists():
            install = cls(Path(sys.executable).parent)
        else:
            found = shutil.which("flower-superlink")
            if found is None:
                raise ConfigError(
                    "Flower is not installed: `pip install flwr==1.42.0` "
                    "(or pass --flower-bin DIR of an environment that has it)"
                )
            install = cls(Path(found).parent)
        install.check()
        return install

    def program(self, name: str) -> Path:
        return self.bin_dir / name

    def env(self, flwr_home: Path | None = None) -> dict[str, str]:
        """The environment for this installation's programs."""
        return flower_env(self.bin_dir, flwr_home)

    def check(self) -> None:
        for name in ("flower-superlink", "flower-supernode", "flwr"):
            if not self.program(name).exists():
                raise ConfigError(f"{name} not found in {self.bin_dir}: is flwr installed there?")

    @cached_property
    def version(self) -> tuple[int, int, int]:
        """Flower's version, as ``flwr --version`` reports it."""
        try:
            out = subprocess.run(
                [str(self.program("flwr")), "--version"],
                capture_output=True,
                text=True,
                timeout=60,
                env=flower_env(self.bin_dir),
                check=False,
            ).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"cannot run {self.program('flwr')} --version: {exc}") from exc
        match = _VERSION_RE.search(out)
        if match is None:
            raise ConfigError(f"cannot read Flower's version from {out!r}")
        major, minor, patch = (int(x) for x in match.groups())
        return major, minor, patch

    def require_supported(self) -> None:
        """Refuse, before anything starts, a release outside :data:`SUPPORTED`."""
        low, high = SUPPORTED
        if not low <= self.version[:2] <= high:
            raise ConfigError(
                f"Flower {self.version_text} in {self.bin_dir} is not supported: the gateway runs "
                f"Flower {low[0]}.{low[1]} to {high[0]}.{high[1]} "
                f"(pip install flwr=={high[0]}.{high[1]}.0, or --flower-bin DIR of such a release)"
            )

    @property
    def traits(self) -> ReleaseTraits:
        """How this release is started (:mod:`.releases`); refused outside its table."""
        traits = traits_of(self.version[:2])
        if traits is None:
            self.require_supported()
            raise AssertionError("unreachable: outside the table is outside SUPPORTED")
        return traits

    @property
    def version_text(self) -> str:
        return ".".join(str(x) for x in self.version)

    @property
    def dialect(self) -> Dialect:
        """The Fleet API dialect this Flower speaks."""
        return dialect_of(self.version_text)


def dialect_of(release: str) -> Dialect:
    """The Fleet API dialect of Flower ``release`` ("x.y.z")."""
    return DIALECT_HTTP if _major_minor(release) >= FIRST_HTTP_VERSION else DIALECT_GRPC


def _major_minor(release: str) -> tuple[int, int]:
    major, _, rest = release.partition(".")
    minor = rest.partition(".")[0]
    if not (major.isdigit() and minor.isdigit()):
        raise ConfigError(f"{release!r} is not a Flower release (x.y or x.y.z)")
    return int(major), int(minor)


def release_matches(wanted: str, release: str) -> bool:
    """Whether ``release`` ("x.y.z") is what ``wanted`` names: "x.y" means any patch of
    x.y, "x.y.z" that release exactly."""
    if wanted.count(".") >= 2:
        return wanted == release
    return _major_minor(wanted) == _major_minor(release)


@dataclass(frozen=True)
class FlowerInstalls:
    """The Flower installations a relay or a site runs jobs with; the first is the
    default, for jobs that name no release. One per release: a second installation of
    a release already listed is left out."""

    installs: tuple[FlowerInstall, ...]

    @classmethod
    def find(cls, bin_dirs: Sequence[Path] = (), *, envs_dir: Path | None = None) -> FlowerInstalls:
        """The installations in ``bin_dirs`` and in each environment under ``envs_dir``
        (``envs_dir/*/bin``), in that order; with neither, :meth:`FlowerInstall.find`'s."""
        found = [FlowerInstall.find(d) for d in bin_dirs]
        if envs_dir is not None:
            if not envs_dir.is_dir():
                raise ConfigError(f"--flower-envs {envs_dir}: no such directory")
            envs = [e / "bin" for e in sorted(envs_dir.iterdir())]
            found += [FlowerInstall.find(b) for b in envs if (b / "flower-superlink").exists()]
            if not found:
                raise ConfigError(
                    f"no Flower environment in {envs_dir} (each ENV/bin/flower-superlink)"
                )
        return cls.of(found or [FlowerInstall.find()])

    @classmethod
    def of(cls, installs: Sequence[FlowerInstall]) -> FlowerInstalls:
        kept: dict[str, FlowerInstall] = {}
        for install in installs:
            kept.setdefault(install.version_text, install)
        return cls(tuple(kept.values()))

    @property
    def default(self) -> FlowerInstall:
        return self.installs[0]

    @property
    def releases(self) -> list[str]:
        """Their releases ("x.y.z"), the default first."""
        return [i.version_text for i in self.installs]

    def require_supported(self) -> None:
        """Refuse, before anything starts, any of them outside :data:`SUPPORTED`."""
        for install in self.installs:
            install.require_supported()

    def choose(self, wanted: str = "") -> FlowerInstall:
        """The installation for a job that asks for ``wanted`` ("x.y" or "x.y.z"; "" for
        the default); the newest patch when several match."""
        if not wanted:
            return self.default
        matching = [i for i in self.installs if release_matches(wanted, i.version_text)]
        if not matching:
            raise ConfigError(
                f"no Flower {wanted} here (installed: {', '.join(self.releases)}); "
                f"add one with --flower-bin DIR"
            )
        return max(matching, key=lambda i: i.version)

    def matching(self, release: str) -> FlowerInstall | None:
        """The installation for a job whose SuperLink runs ``release``: the same
        major.minor (the newest patch of it), or ``None``."""
        same = [i for i in self.installs if _major_minor(i.version_text) == _major_minor(release)]
        return max(same, key=lambda i: i.version) if same else None
