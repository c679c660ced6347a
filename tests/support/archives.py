"""Archives built byte by byte for the tests of hostile submissions: bombs that cost
kilobytes to build (:class:`ZeroRunGzip`), members of any kind, a minimal Flower app."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from pathlib import Path

from gateway.core.config import MiB

PYPROJECT = """\
[project]
name = "tiny-app"
version = "1.0.0"

[tool.flwr.app]
publisher = "flgate"

[tool.flwr.app.components]
serverapp = "tiny_app.server_app:app"
clientapp = "tiny_app.client_app:app"
"""


class ZeroRunGzip:
    """A gzip stream written piece by piece, where runs of zeros cost almost nothing.

    After a full flush deflate starts afresh, so the compressed form of a 1 MiB zero
    block is the same bytes wherever it lands in the stream: repeating them is a
    valid stream of as many MiB of zeros, at about 1 KiB per MiB.
    """

    _ZERO = bytes(MiB)
    _BLOCK = b""
    """The compressed form of ``_ZERO``, made once."""

    def __init__(self) -> None:
        self._deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._parts = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"]  # gzip header
        self._crc = 0
        self._size = 0

    def write(self, data: bytes) -> None:
        self._parts.append(self._deflate.compress(data))
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)

    def zeros(self, count: int) -> None:
        blocks, rest = divmod(count, MiB)
        if blocks and not ZeroRunGzip._BLOCK:
            block = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
            ZeroRunGzip._BLOCK = block.compress(self._ZERO) + block.flush(zlib.Z_FULL_FLUSH)
        if blocks:
            self._parts.append(self._deflate.flush(zlib.Z_FULL_FLUSH))
            self._parts.append(self._BLOCK * blocks)
            for _ in range(blocks):
                self._crc = zlib.crc32(self._ZERO, self._crc)
            self._size += blocks * MiB
        self.write(bytes(rest))

    def member(self, info: tarfile.TarInfo, data: bytes | None = None) -> None:
        """One tar member: its header, then ``data`` or ``info.size`` zeros, padded."""
        self.write(info.tobuf(tarfile.PAX_FORMAT))
        if data is not None:
            self.write(data)
        else:
            self.zeros(info.size)
        self.write(bytes(-info.size % tarfile.BLOCKSIZE))

    def finish(self, *, end_of_archive: bool = True) -> bytes:
        if end_of_archive:
            self.write(bytes(2 * tarfile.BLOCKSIZE))
        self._parts.append(self._deflate.flush())
        self._parts.append(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        return b"".join(self._parts)


class CountingReader(io.BytesIO):
    """The archive's bytes, counting how many the unpacker took."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.taken = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.taken += len(data)
        return data


def file_info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    info.mode = 0o644
    return info


def tar_gz(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    """An archive as tarfile itself writes it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def app_members(
    pyproject: str = PYPROJECT, job_file: str = ""
) -> list[tuple[tarfile.TarInfo, bytes]]:
    files = {"pyproject.toml": pyproject.encode(), "tiny_app/__init__.py": b""}
    if job_file:
        files["job.yaml"] = job_file.encode()
    members = []
    for name, data in files.items():
        members.append((file_info(name, len(data)), data))
    return members


def legal_app_with_data(data_bytes: int) -> bytes:
    """A valid Flower app carrying ``data_bytes`` of zeros: big, and within the limits."""
    gz = ZeroRunGzip()
    for info, data in app_members():
        gz.member(info, data)
    gz.member(file_info("tiny_app/data.bin", data_bytes))
    return gz.finish()


def left_on_disk(root: Path) -> list[Path]:
    return sorted(root.rglob("*")) if root.exists() else []
