"""Pack a Flower app directory for submission, and unpack it safely on the relay.

Unpacking refuses absolute paths, ``..``, links and special files, and stops at
a size limit, so a submitted archive cannot write outside its job directory.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path, PurePosixPath

from ...core.config import MiB
from ...core.exceptions import ConfigError

MAX_APP_BYTES = 64 * MiB
_SKIPPED_DIRS = {"__pycache__", ".git", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


def _skipped(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return any(p in _SKIPPED_DIRS or p.startswith(".venv") for p in parts) or path.suffix == ".pyc"


def pack_app(app_dir: Path, *, limit: int = MAX_APP_BYTES) -> bytes:
    """The app directory as .tar.gz bytes (caches and virtual environments left out)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(app_dir.rglob("*")):
            if _skipped(path, app_dir) or not (path.is_file() and not path.is_symlink()):
                continue
            tar.add(path, arcname=str(path.relative_to(app_dir)), recursive=False)
    data = buffer.getvalue()
    if len(data) > limit:
        raise ConfigError(
            f"the app in {app_dir} packs to {len(data) / MiB:.1f} MiB, over the "
            f"{limit / MiB:.0f} MiB limit: keep data sets out of the app directory"
        )
    return data


def unpack_app(data: bytes, destination: Path, *, limit: int = 4 * MAX_APP_BYTES) -> None:
    """Extract an app archive into ``destination``; refuse anything unsafe."""
    total = 0
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")  # noqa: SIM115
        members_in = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ConfigError(f"the app archive is not a valid .tar.gz: {exc}") from exc
    with tar:
        members = []
        for member in members_in:
            name = PurePosixPath(member.name)
            if name.is_absolute() or ".." in name.parts:
                raise ConfigError(f"the app archive has an unsafe path: {member.name!r}")
            if not (member.isfile() or member.isdir()):
                raise ConfigError(f"the app archive has a link or special file: {member.name!r}")
            total += member.size
            if total > limit:
                raise ConfigError(f"the app archive unpacks to more than {limit / MiB:.0f} MiB")
            members.append(member)
        destination.mkdir(parents=True, exist_ok=True)
        tar.extractall(destination, members=members, filter="data")
