"""The committed generated modules must match protos/ (regenerate with protos/generate.py)."""

from __future__ import annotations

import runpy
from pathlib import Path

from tests.support.paths import REPO


def test_generated_modules_are_fresh(tmp_path: Path) -> None:
    generate = runpy.run_path(str(REPO / "protos" / "generate.py"))["generate"]
    written = generate(tmp_path)
    assert written, "protoc wrote nothing"
    stale = []
    for path in written:
        committed = REPO / path.relative_to(tmp_path)
        if not committed.exists() or committed.read_bytes() != path.read_bytes():
            stale.append(str(committed.relative_to(REPO)))
    assert not stale, f"stale generated modules {stale}: run `python protos/generate.py`"
    generated_names = {p.name for p in written}
    committed_names = {p.name for p in (REPO / "gateway" / "proto").glob("*_pb2*.py*")}
    assert committed_names == generated_names, "generated modules without a .proto source"
