"""The Flower app that gives the bench's objects a real run to belong to.

A SuperLink stores a pushed object only when a pending message of a RUNNING
run references it, and serves a pulled object only when some message put it
there. So the object figures come from a real exchange: this ServerApp keeps
one message outstanding for each node the bench names, its content one array
of N chunks of 5 MiB (Flower's chunk size), fresh random bytes each time; the
synthetic node pulls it object by object, confirms it, and replies with the
same content (as ``Message(msg.content, reply_to=msg)`` would), pushing every
object back. The bench names the nodes, their N and the end in a small JSON
control file (``{"nodes": {"<node id>": N}, "stop": false}``), read before
each new message; other nodes (the latency and capacity steps') get nothing.

The app is written out as files at run time (it imports flwr; the gateway
package does not), then submitted with ``flwr run``.
"""

from __future__ import annotations

import json
from pathlib import Path

CHUNK_BYTES = 5 * 1024 * 1024
"""Flower's ArrayChunk size (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE)."""
NPY_HEADER_BYTES = 128
"""Flower serializes an array with ``np.save``: a 128-byte header for 1-D uint8."""

_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "flgate-bench"
version = "1.0.0"
description = "flgate bench: an echo exchange of large objects"
license = "Apache-2.0"
dependencies = ["flwr>=1.40.0", "numpy>=1.26.0"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "flgate"

[tool.flwr.app.components]
serverapp = "flgate_bench.server_app:app"
clientapp = "flgate_bench.client_app:app"

[tool.flwr.app.config]
control-file = ""
chunk-bytes = {chunk_bytes}
npy-header-bytes = {npy_header_bytes}
"""

_SERVER_APP = '''\
"""flgate bench ServerApp: a message with a fresh blob outstanding for each chosen node."""

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()
ATTEMPTS = 10


def _control(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _retry(call, *args):
    # A SuperLink writing gigabytes into SQLite answers some calls with 500
    # ("database is locked") for a while; reads and polls are safe to repeat.
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return call(*args)
        except Exception as exc:  # noqa: BLE001
            if attempt == ATTEMPTS:
                raise
            print(f"FLGATE-BENCH retrying {call.__name__}: {exc}", flush=True)
            time.sleep(2)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    control = str(cfg["control-file"])
    chunk = int(cfg["chunk-bytes"])
    header = int(cfg["npy-header-bytes"])
    pending: dict[int, str] = {}
    sent = 0
    while not (state := _control(control)).get("stop"):
        wanted = {int(k): int(v) for k, v in state.get("nodes", {}).items()}
        online = set(_retry(grid.get_node_ids)) if wanted else set()
        for node_id, chunks in wanted.items():
            if chunks <= 0 or node_id in pending or node_id not in online:
                continue
            sent += 1
            blob = np.frombuffer(
                np.random.default_rng(sent).bytes(chunks * chunk - header), dtype=np.uint8
            )
            message = Message(
                RecordDict({"blob": ArrayRecord([blob])}), dst_node_id=node_id, message_type="query"
            )
            del blob
            # Pushing the same message again is safe: the SuperLink knows its id and
            # asks only for the objects it does not have yet.
            ids = [i for i in _retry(grid.push_messages, [message]) if i]
            del message
            if ids:
                pending[node_id] = ids[0]
        if pending:
            for reply in _retry(grid.pull_messages, list(pending.values())):
                pending.pop(reply.metadata.src_node_id, None)
        time.sleep(0.1 if wanted else 0.5)
    print(f"FLGATE-BENCH sent {sent} messages", flush=True)
'''

_CLIENT_APP = '''\
"""flgate bench ClientApp: never started (the bench's nodes are synthetic)."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    return Message(msg.content, reply_to=msg)
'''


def write_app(directory: Path) -> Path:
    """Write the bench's Flower app into ``directory``; return it."""
    package = directory / "flgate_bench"
    package.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(
        _PYPROJECT.format(chunk_bytes=CHUNK_BYTES, npy_header_bytes=NPY_HEADER_BYTES)
    )
    (package / "__init__.py").write_text('"""flgate bench app."""\n')
    (package / "server_app.py").write_text(_SERVER_APP)
    (package / "client_app.py").write_text(_CLIENT_APP)
    return directory


class Control:
    """The bench's side of the control file: which node gets messages of how many chunks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._nodes: dict[int, int] = {}
        self._write(stop=False)

    def send(self, node_id: int, chunks: int) -> None:
        """From now on, give ``node_id`` messages of ``chunks`` chunks (0: no more)."""
        self._nodes[node_id] = chunks
        self._write(stop=False)

    def stop(self) -> None:
        self._write(stop=True)

    def _write(self, *, stop: bool) -> None:
        temporary = self.path.with_suffix(".tmp")
        nodes = {str(k): v for k, v in self._nodes.items()}
        temporary.write_text(json.dumps({"nodes": nodes, "stop": stop}))
        temporary.replace(self.path)
