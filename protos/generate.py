"""Regenerate the Python modules of the gateway's protobuf definitions.

Usage: ``python protos/generate.py [--out DIR]`` (default: the repository root,
so modules land in ``gateway/proto/``). Needs ``grpcio-tools`` (dev extra);
``tests/unit/proto/test_generated_code_is_fresh.py`` regenerates into a temporary directory and fails
when the committed modules differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "gateway" / "proto").glob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Run protoc on every .proto file; return the modules written."""
    from grpc_tools import protoc  # dev dependency, imported only here

    out.mkdir(parents=True, exist_ok=True)
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return sorted((out / "gateway" / "proto").glob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT)
    args = parser.parse_args()
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
