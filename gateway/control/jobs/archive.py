"""Pack a Flower app directory for submission, and unpack it safely on the relay.

The relay treats a submitted archive as hostile: a member admin may send a few MiB
of .tar.gz that unpack to gigabytes, or headers crafted to write outside the job
directory or to make tarfile hold gigabytes in memory. So :func:`unpack_app` reads
the archive as a stream, one member at a time, writes each file itself in chunks
and stops at the first limit crossed. It counts the bytes it actually decompresses,
headers included, rather than trusting the sizes the headers declare. It refuses
absolute paths, ``..``, links, devices and other special files, and removes
whatever it wrote when it refuses. It blocks, so the job manager runs it in a
worker thread.

:func:`pack_app` is the CLI's side: it walks the app directory without recursion,
applies the same limits before anything is uploaded, and says which files it
left out and why.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ...core.config import MiB
from ...core.exceptions import ConfigError

KiB = 1024

MAX_APP_BYTES = 64 * MiB
"""The largest packed (compressed) app the CLI sends: code and a small data set."""
MAX_UNPACKED_BYTES = 4 * MAX_APP_BYTES
"""The most file bytes an app may unpack to on the relay; a bigger one is a bomb or a data set."""
MAX_MEMBERS = 10_000
"""Files and directories in one app; a Flower app has tens, so more is an attack or a mistake."""
MAX_DEPTH = 32
"""Path components in one member's name (``a/b/c.py`` has 3); no Python package nests deeper."""
MAX_PATH_BYTES = 1024
"""UTF-8 bytes of one member's name: well inside PATH_MAX with the job directory in front."""
MAX_HEADER_BYTES = 64 * KiB
"""Decompressed bytes the headers of one member may take (pax records, GNU long names):
tarfile holds them in memory, so a header that claims gigabytes must not be read."""

_CHUNK = 1 * MiB
"""How much of a file is decompressed and written at a time."""
_INPUT_CHUNK = 16 * KiB
"""How much compressed input is taken at a time, so decompression stops soon after a limit."""
_STREAM_BUFFER = 64 * KiB
"""How much tarfile's stream asks for at a time (its default, 10 KiB, costs a third more CPU)."""
_SLACK = 2 * _STREAM_BUFFER + tarfile.RECORDSIZE
"""What tarfile may read ahead of the member it is at."""
_GZIP = 16 + zlib.MAX_WBITS
"""zlib's window bits for a gzip stream (header and trailer checked)."""
_SKIPPED_DIRS = {
    "__pycache__": "cache directory",
    ".mypy_cache": "cache directory",
    ".ruff_cache": "cache directory",
    ".pytest_cache": "cache directory",
    ".git": "version-control directory",
}


@dataclass(frozen=True)
class ArchiveLimits:
    """What one app archive may hold; tests pass small limits to stay fast."""

    unpacked_bytes: int = MAX_UNPACKED_BYTES
    members: int = MAX_MEMBERS
    depth: int = MAX_DEPTH
    path_bytes: int = MAX_PATH_BYTES
    header_bytes: int = MAX_HEADER_BYTES


DEFAULT_LIMITS = ArchiveLimits()


@dataclass(frozen=True)
class Unpacked:
    """What an accepted archive unpacked to."""

    members: int
    bytes: int
    """File bytes written (the decompressed stream also holds headers and padding)."""


@dataclass(frozen=True)
class LeftOut:
    """A path in the app directory that :func:`pack_app` did not pack, and why."""

    path: str
    """Relative to the app directory."""
    why: str
    target: str = ""
    """Where a symbolic link points."""

    def __str__(self) -> str:
        arrow = f" -> {self.target}" if self.target else ""
        return f"{self.path}{arrow} ({self.why})"


@dataclass(frozen=True)
class PackedApp:
    """An app directory as .tar.gz bytes, and what was left out of them."""

    archive: bytes
    files: int
    left_out: tuple[LeftOut, ...]


# --- packing (the CLI) ---------------------------------------------------------


def pack_app(
    app_dir: Path, *, limit: int = MAX_APP_BYTES, limits: ArchiveLimits = DEFAULT_LIMITS
) -> PackedApp:
    """The app directory as .tar.gz bytes: regular files only, caches and virtual
    environments left out; refused here when the relay would refuse it."""
    left_out: list[LeftOut] = []
    files = _app_files(app_dir, left_out, limits)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path, name in files:
            tar.add(path, arcname=name, recursive=False)
    data = buffer.getvalue()
    if len(data) > limit:
        raise ConfigError(
            f"the app in {app_dir} packs to {len(data) / MiB:.1f} MiB, over the "
            f"{limit / MiB:.0f} MiB limit: keep data sets out of the app directory"
        )
    return PackedApp(archive=data, files=len(files), left_out=tuple(left_out))


def _app_files(
    app_dir: Path, left_out: list[LeftOut], limits: ArchiveLimits
) -> list[tuple[Path, str]]:
    """The regular files to pack, with their names in the archive, sorted.

    An explicit stack instead of recursion (``os.walk`` and ``rglob`` recurse on
    Python 3.11), so a directory nested a thousand levels deep gets a clear error.
    """
    files: list[tuple[Path, str]] = []
    total = 0
    pending: list[tuple[str, tuple[str, ...]]] = [(str(app_dir), ())]
    while pending:
        directory, parts = pending.pop()
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        for entry in entries:
            rel = (*parts, entry.name)
            name = "/".join(rel)
            if len(rel) > limits.depth:
                raise ConfigError(
                    f"the app in {app_dir} nests deeper than {limits.depth} levels at "
                    f"{_shown(name)}: the relay refuses deeper paths (MAX_DEPTH)"
                )
            if entry.is_symlink():
                left_out.append(LeftOut(name, "symbolic link", _link_target(entry.path)))
            elif entry.is_dir(follow_symlinks=False):
                if entry.name in _SKIPPED_DIRS:
                    left_out.append(LeftOut(name, _SKIPPED_DIRS[entry.name]))
                elif entry.name.startswith(".venv"):
                    left_out.append(LeftOut(name, "virtual environment"))
                else:
                    pending.append((entry.path, rel))
            elif entry.is_file(follow_symlinks=False):
                if entry.name.endswith(".pyc"):
                    left_out.append(LeftOut(name, "compiled Python"))
                    continue
                if len(_encoded(name)) > limits.path_bytes:
                    raise ConfigError(
                        f"the app in {app_dir} has a path of {len(_encoded(name))} bytes, "
                        f"{_shown(name)}, over the relay's limit of {limits.path_bytes} "
                        "(MAX_PATH_BYTES)"
                    )
                files.append((Path(entry.path), name))
                total += entry.stat(follow_symlinks=False).st_size
                if len(files) > limits.members:
                    raise ConfigError(
                        f"the app in {app_dir} has more than {limits.members} files, the "
                        "relay's limit (MAX_MEMBERS): keep data sets out of the app directory"
                    )
            else:
                left_out.append(LeftOut(name, _special_kind(entry)))
    if total > limits.unpacked_bytes:
        raise ConfigError(
            f"the app in {app_dir} holds {total / MiB:.1f} MiB of files, over the relay's "
            f"limit of {limits.unpacked_bytes / MiB:.0f} MiB: keep data sets out of the app "
            "directory"
        )
    left_out.sort(key=lambda item: item.path)
    return sorted(files, key=lambda item: item[1])


def _link_target(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def _special_kind(entry: os.DirEntry[str]) -> str:
    try:
        mode = entry.stat(follow_symlinks=False).st_mode
    except OSError:
        return "unreadable file"
    if stat.S_ISFIFO(mode):
        return "named pipe"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


# --- unpacking (the relay) -------------------------------------------------------


def unpack_app(
    archive: bytes | BinaryIO,
    destination: Path,
    *,
    limits: ArchiveLimits = DEFAULT_LIMITS,
    stop: threading.Event | None = None,
) -> Unpacked:
    """Extract an app archive into ``destination``, which must not exist yet.

    Blocks: call it in a worker thread. Refuses (``ConfigError`` naming the member
    and the limit) at the first member that is unsafe or crosses a limit, and then
    leaves nothing behind; ``stop``, when set, makes it give up the same way.
    """
    source = io.BytesIO(archive) if isinstance(archive, bytes) else archive
    destination.mkdir(parents=True)
    try:
        return _Unpacker(source, destination, limits, stop).run()
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise


class _Exceeded(Exception):
    """The decompressed stream ran past what the current step may take."""


class _Inflater:
    """The archive's gzip stream, decompressed on demand, refusing to produce more
    than allowed: tarfile reads its headers through this, so a header that claims
    gigabytes is stopped here, before it is in memory."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._zlib = zlib.decompressobj(_GZIP)
        self._input = b""
        self._ended = False
        self._limit = 0
        self.produced = 0
        """Decompressed bytes handed out so far."""

    def allow(self, more: int) -> None:
        """From here on, at most ``more`` further bytes may be decompressed."""
        self._limit = self.produced + more

    def read(self, size: int = -1, /) -> bytes:
        size = size if size > 0 else _CHUNK
        while not self._ended:
            if not self._input:
                self._input = self._source.read(_INPUT_CHUNK)
                if not self._input:
                    raise EOFError("the archive ends inside its gzip stream")
            data = self._zlib.decompress(self._input, size)
            self._input = self._zlib.unconsumed_tail
            if self._zlib.eof:
                self._next_gzip_member(self._zlib.unused_data)
            if data:
                self.produced += len(data)
                if self.produced > self._limit:
                    raise _Exceeded
                return data
        return b""

    def _next_gzip_member(self, rest: bytes) -> None:
        """A gzip file may hold several members back to back, and end in zero padding."""
        while True:
            rest = rest.lstrip(b"\0")
            if rest:
                self._zlib = zlib.decompressobj(_GZIP)
                self._input = rest
                return
            rest = self._source.read(_INPUT_CHUNK)
            if not rest:
                self._ended = True
                self._input = b""
                return

    # What tarfile's type for a file object asks for; a stream needs only read().
    def write(self, data: bytes, /) -> int:
        raise io.UnsupportedOperation("write")

    def tell(self) -> int:
        return self.produced

    def seek(self, position: int, /) -> int:
        raise io.UnsupportedOperation("seek")

    def close(self) -> None:
        pass


class _Unpacker:
    """One archive into one destination; every refusal is a ConfigError naming the member."""

    def __init__(
        self,
        source: BinaryIO,
        destination: Path,
        limits: ArchiveLimits,
        stop: threading.Event | None,
    ) -> None:
        self._inflater = _Inflater(source)
        self._destination = destination
        self._limits = limits
        self._stop = stop
        self._members = 0
        self._bytes = 0
        self._last = ""
        """The name of the last member read, to say where the archive went wrong."""

    def run(self) -> Unpacked:
        try:
            self._inflater.allow(self._limits.header_bytes + _SLACK)
            with tarfile.open(fileobj=self._inflater, mode="r|", bufsize=_STREAM_BUFFER) as tar:
                while True:
                    self._check_stop()
                    self._inflater.allow(self._limits.header_bytes + _SLACK)
                    member = tar.next()
                    if member is None:
                        break
                    self._last = member.name
                    self._unpack(tar, member)
        except _Exceeded:
            where = f"at or after member {_shown(self._last)}" if self._last else "at its start"
            raise ConfigError(
                f"the app archive has headers {where} that take more than "
                f"{self._limits.header_bytes // KiB} KiB (long names or pax records; "
                "MAX_HEADER_BYTES)"
            ) from None
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            where = f" at or after member {_shown(self._last)}" if self._last else ""
            raise ConfigError(f"the app archive is not a valid .tar.gz{where}: {exc}") from None
        return Unpacked(members=self._members, bytes=self._bytes)

    def _refuse(self, member: tarfile.TarInfo, problem: str) -> ConfigError:
        return ConfigError(f"the app archive's member {_shown(member.name)} {problem}")

    def _check_stop(self) -> None:
        if self._stop is not None and self._stop.is_set():
            raise ConfigError("the submission was given up while its archive was unpacked")

    def _unpack(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        limits = self._limits
        self._members += 1
        if self._members > limits.members:
            raise self._refuse(
                member, f"is one more than the limit of {limits.members} members (MAX_MEMBERS)"
            )
        name = member.name
        path = PurePosixPath(name)
        if "\0" in name or path.is_absolute() or ".." in path.parts:
            raise self._refuse(member, "has an unsafe path (absolute, with '..' or a NUL)")
        if not (member.isfile() or member.isdir()):
            raise self._refuse(member, f"is {_member_kind(member)}: only files and directories")
        parts = path.parts
        if len(parts) > limits.depth:
            raise self._refuse(
                member,
                f"is {len(parts)} levels deep, over the limit of {limits.depth} (MAX_DEPTH)",
            )
        length = len(_encoded(name))
        if length > limits.path_bytes:
            raise self._refuse(
                member,
                f"has a path of {length} bytes, over the limit of {limits.path_bytes} "
                "(MAX_PATH_BYTES)",
            )
        if member.isdir():
            self._make_dir(member, self._destination.joinpath(*parts))
        elif not parts:
            raise self._refuse(member, "is a file without a name")
        else:
            self._write(tar, member, self._destination.joinpath(*parts))

    def _make_dir(self, member: tarfile.TarInfo, target: Path) -> None:
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._refuse(member, f"cannot be unpacked: {exc.strerror}") from None

    def _write(self, tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
        """Decompress one file in chunks, counting what actually comes out."""
        budget = self._limits.unpacked_bytes
        over = f"over the limit of {budget / MiB:g} MiB for the whole app (MAX_UNPACKED_BYTES)"
        if member.size < 0 or member.size > budget - self._bytes:
            raise self._refuse(member, f"declares {member.size} bytes: the app would unpack {over}")
        source = tar.extractfile(member)
        if source is None:  # a regular file always has a reader; this is for the type checker
            raise self._refuse(member, "cannot be read")
        self._inflater.allow(member.size + _SLACK)
        self._make_dir(member, target.parent)
        mode = 0o755 if member.mode & stat.S_IXUSR else 0o644
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            with source, open(os.open(target, flags, mode), "wb") as out:
                while chunk := source.read(_CHUNK):
                    self._check_stop()
                    self._bytes += len(chunk)
                    if self._bytes > budget:
                        raise self._refuse(member, f"unpacks {over}")
                    out.write(chunk)
        except FileExistsError:
            raise self._refuse(member, "is in the archive twice") from None
        except OSError as exc:
            raise self._refuse(member, f"cannot be unpacked: {exc.strerror}") from None


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link (to {_shown(member.linkname)})"
    if member.islnk():
        return f"a hard link (to {_shown(member.linkname)})"
    if member.isdev():
        return "a device or named pipe"
    return f"of the unsupported tar type {member.type!r}"


def _encoded(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _shown(name: str, width: int = 120) -> str:
    """A member's name for a message: quoted, control characters escaped, and cut
    short, since a hostile name may be long or meant to confuse a terminal."""
    if len(name) > width:
        name = f"{name[: width // 2]}...{name[-width // 3 :]}"
    return repr(name)
