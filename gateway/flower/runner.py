"""Start Flower's programs the way an operator would, on loopback ports we pick.

These are the only places that know Flower's command-line flags, per version:
flwr >= 1.40 serves Fleet, Control and Runtime on one HTTP port; flwr <= 1.39
serves the Fleet API over gRPC on ``--fleet-api-address`` and Control/Runtime
over HTTP on ``--host/--port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..core.config import LoopbackTLS
from ..core.exceptions import ProcessError
from ..proto.envelope_pb2 import DIALECT_GRPC
from .install import FlowerInstall
from .process import ManagedProcess, free_port

LOOPBACK = "127.0.0.1"
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")  # Flower colours its log even when piped


@dataclass(frozen=True)
class SuperLinkAddresses:
    """Where a started SuperLink listens."""

    control: str
    """host:port that ``flwr run`` talks to (Control API)."""
    fleet: str
    """host:port of the Fleet API (the same port as ``control`` for flwr >= 1.40)."""


def start_superlink(
    install: FlowerInstall,
    workdir: Path,
    *,
    tls: LoopbackTLS | None = None,
    node_auth: bool = False,
) -> tuple[ManagedProcess, SuperLinkAddresses]:
    """A SuperLink with its own database in ``workdir``, bound to loopback only.

    ``tls`` makes it serve TLS on all its APIs; ``node_auth`` turns on Flower's
    SuperNode authentication, which Flower only allows with TLS.
    """
    if node_auth and tls is None:
        raise ValueError("flower-superlink --enable-supernode-auth requires TLS")
    workdir.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    argv = [
        str(install.program("flower-superlink")),
        *_superlink_tls_args(tls),
        "--host", LOOPBACK,
        "--port", str(http_port),
        "--database", str(workdir / "superlink.db"),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    if node_auth:
        argv.append("--enable-supernode-auth")
    control = f"{LOOPBACK}:{http_port}"
    fleet = control
    if install.dialect == DIALECT_GRPC:
        fleet = f"{LOOPBACK}:{free_port()}"
        argv += ["--fleet-api-address", fleet]
    process = ManagedProcess(
        "superlink",
        argv,
        log_path=workdir / "superlink.log",
        env=install.env(workdir / "flwr-home"),
        cwd=workdir,
    )
    return process, SuperLinkAddresses(control=control, fleet=fleet)


def _superlink_tls_args(tls: LoopbackTLS | None) -> list[str]:
    if tls is None:
        return ["--insecure"]
    # Absolute paths: the SuperLink hands the CA path on to the flower-superexec it starts.
    return [
        "--ssl-ca-certfile", str(tls.ca_cert.resolve()),
        "--ssl-certfile", str(tls.cert.resolve()),
        "--ssl-keyfile", str(tls.key.resolve()),
    ]  # fmt: skip


_PORT_TAKEN = "address already in use"
T = TypeVar("T")


def _lost_port_race(process: ManagedProcess) -> bool:
    """True when the process died because another one took the port we picked for it."""
    return not process.alive() and _PORT_TAKEN in process.log_tail(60).lower()


async def _start_serving(
    start: Callable[[], tuple[ManagedProcess, T, list[str]]], *, timeout: float, attempts: int
) -> tuple[ManagedProcess, T]:
    """Start a process and wait until every address it must serve accepts connections.

    A port that was free when picked can be taken by another process before
    Flower binds it (many runs start at once): such a start is retried, with the
    new ports that ``start`` picks each time.
    """
    for attempt in range(1, attempts + 1):
        process, info, addresses = start()
        try:
            for address in addresses:
                await process.wait_for_port(address, timeout)
        except ProcessError:
            await asyncio.to_thread(process.stop)
            if attempt < attempts and _lost_port_race(process):
                continue
            raise
        return process, info
    raise AssertionError("unreachable: the last attempt returns or raises")


async def launch_superlink(
    install: FlowerInstall,
    workdir: Path,
    *,
    tls: LoopbackTLS | None = None,
    node_auth: bool = False,
    timeout: float = 60.0,
    attempts: int = 3,
) -> tuple[ManagedProcess, SuperLinkAddresses]:
    """Start a SuperLink and wait until its Control and Fleet APIs serve."""

    def start() -> tuple[ManagedProcess, SuperLinkAddresses, list[str]]:
        process, addresses = start_superlink(install, workdir, tls=tls, node_auth=node_auth)
        return process, addresses, [addresses.control, addresses.fleet]

    return await _start_serving(start, timeout=timeout, attempts=attempts)


async def launch_supernode(
    install: FlowerInstall,
    superlink: str,
    workdir: Path,
    *,
    name: str,
    node_config: Mapping[str, int | str],
    grpc_mode: str = "rere",
    auth_key: Path | None = None,
    root_certificates: Path | None = None,
    timeout: float = 60.0,
    attempts: int = 3,
) -> ManagedProcess:
    """Start a SuperNode and wait until its Runtime API serves."""

    def start() -> tuple[ManagedProcess, None, list[str]]:
        port = free_port()
        process = start_supernode(
            install,
            superlink,
            workdir,
            name=name,
            node_config=node_config,
            grpc_mode=grpc_mode,
            auth_key=auth_key,
            root_certificates=root_certificates,
            port=port,
        )
        return process, None, [f"{LOOPBACK}:{port}"]

    process, _ = await _start_serving(start, timeout=timeout, attempts=attempts)
    return process


def node_config_text(config: Mapping[str, int | str]) -> str:
    """Flower's ``--node-config`` syntax: space-separated ``key=value``, strings quoted."""
    parts = []
    for key, value in config.items():
        parts.append(f'{key}="{value}"' if isinstance(value, str) else f"{key}={value}")
    return " ".join(parts)


def start_supernode(
    install: FlowerInstall,
    superlink: str,
    workdir: Path,
    *,
    name: str,
    node_config: Mapping[str, int | str],
    grpc_mode: str = "rere",
    auth_key: Path | None = None,
    root_certificates: Path | None = None,
    port: int = 0,
) -> ManagedProcess:
    """A SuperNode dialing ``superlink``; ``grpc_mode`` is 'rere' or 'adapter' (flwr <= 1.39).

    ``port`` is the SuperNode's own Runtime API port on loopback (0: pick one).
    ``auth_key`` is the node's OpenSSH private key for Flower's node authentication:
    the SuperNode signs every Fleet call with it instead of a key of its own, and
    does not register itself (the key must be registered with the SuperLink).
    Flower allows that only over TLS: ``root_certificates`` is the CA of the
    server at ``superlink`` (without it the connection is plain).
    """
    if auth_key is not None and root_certificates is None:
        raise ValueError("flower-supernode --auth-supernode-private-key requires TLS")
    trust = (
        ["--root-certificates", str(root_certificates.resolve())]
        if root_certificates is not None
        else ["--insecure"]
    )
    argv = [
        str(install.program("flower-supernode")),
        *trust,
        "--superlink", superlink,
        "--port", str(port or free_port()),
        "--node-config", node_config_text(node_config),
    ]  # fmt: skip
    if install.dialect == DIALECT_GRPC:
        argv.append("--grpc-adapter" if grpc_mode == "adapter" else "--grpc-rere")
    if auth_key is not None:
        argv += ["--auth-supernode-private-key", str(auth_key.resolve())]
    workdir.mkdir(parents=True, exist_ok=True)
    return ManagedProcess(
        name,
        argv,
        log_path=workdir / f"{name}.log",
        env=install.env(workdir / "flwr-home"),
        cwd=workdir,
    )


def write_flwr_home(
    directory: Path,
    control: str,
    *,
    connection: str = "gateway",
    root_certificates: Path | None = None,
) -> Path:
    """A private ``FLWR_HOME`` whose config.toml names one SuperLink connection.

    The connection is insecure unless ``root_certificates`` (the CA that signed
    a TLS SuperLink's certificate) is given.
    """
    directory.mkdir(parents=True, exist_ok=True)
    trust = (
        f"root-certificates = {json.dumps(str(root_certificates.resolve()))}\n"
        if root_certificates is not None
        else "insecure = true\n"
    )
    (directory / "config.toml").write_text(
        f'[superlink]\ndefault = "{connection}"\n\n'
        f'[superlink.{connection}]\naddress = "{control}"\n{trust}'
    )
    return directory


async def register_supernode(
    install: FlowerInstall,
    flwr_home: Path,
    public_key: Path,
    *,
    name: str,
    connection: str = "gateway",
) -> int:
    """Register a node's public key (OpenSSH file) with a SuperLink; return its node id.

    This is Flower's supported way (``flwr supernode register`` over the Control
    API) to admit a SuperNode when the SuperLink runs ``--enable-supernode-auth``.
    ``flwr`` exits 0 even when the SuperLink refuses, so its JSON answer decides.
    """
    text = await _flwr_output(
        install,
        flwr_home,
        ["supernode", "register", str(public_key), connection, "--name", name, "--format", "json"],
    )
    try:
        payload = json.loads(text[text.index("{") : text.rindex("}") + 1])
    except ValueError:
        payload = {}
    if payload.get("success") is True and "node-id" in payload:
        return int(payload["node-id"])
    detail = str(payload.get("error-message") or text).strip().splitlines()
    raise ProcessError(
        f"the SuperLink refused to register the node key of {name}: "
        f"{detail[-1] if detail else 'no answer from flwr supernode register'}"
    )


async def flwr_run(
    install: FlowerInstall,
    app_dir: Path,
    flwr_home: Path,
    *,
    run_config: Mapping[str, int | float | str] | None = None,
    on_line: Callable[[str], None] | None = None,
    connection: str = "gateway",
) -> tuple[int, str]:
    """Submit ``app_dir`` with ``flwr run --stream``; return (exit code, its output)."""
    argv = [str(install.program("flwr")), "run", str(app_dir), connection, "--stream"]
    if run_config:
        argv += ["--run-config", " ".join(f"{k}={_toml_value(v)}" for k, v in run_config.items())]
    env = install.env(flwr_home)
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    lines: list[str] = []
    assert process.stdout is not None
    try:
        async for raw in process.stdout:
            line = ANSI_RE.sub("", raw.decode(errors="replace").rstrip("\n"))
            lines.append(line)
            if on_line is not None:
                on_line(line)
        code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return code, "\n".join(lines)


def _toml_value(value: int | float | str) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


RUN_ID_RE = re.compile(r"Successfully started run (\d+)")


def run_id_from_output(output: str) -> str | None:
    """The run id that ``flwr run`` reports when the SuperLink accepted the run."""
    match = RUN_ID_RE.search(output)
    return match.group(1) if match else None


async def run_status(
    install: FlowerInstall, flwr_home: Path, run_id: str, *, connection: str = "gateway"
) -> str | None:
    """The SuperLink's status text of a run (``finished:completed``, ``finished:failed``...).

    ``flwr run`` exits 0 even when the ServerApp fails, so this is how a run's real
    outcome is learned.
    """
    text = await _flwr_output(
        install, flwr_home, ["ls", connection, "--run-id", run_id, "--format", "json"]
    )
    try:
        payload = json.loads(text[text.index("{") :])
    except ValueError:
        return None
    for run in payload.get("runs", []):
        if str(run.get("run-id")) == run_id:
            status = run.get("status")
            return str(status) if status is not None else None
    return None


async def final_status(install: FlowerInstall, flwr_home: Path, run_id: str) -> str | None:
    """The run's status once the SuperLink has recorded its end (a few seconds at most)."""
    status = None
    for _ in range(20):
        status = await run_status(install, flwr_home, run_id)
        if status is not None and status.startswith("finished"):
            return status
        await asyncio.sleep(0.5)
    return status


async def run_logs(
    install: FlowerInstall, flwr_home: Path, run_id: str, *, connection: str = "gateway"
) -> str:
    """Everything a run has logged so far (``flwr log RUN_ID --show``), colours removed."""
    return ANSI_RE.sub(
        "", await _flwr_output(install, flwr_home, ["log", run_id, connection, "--show"])
    )


FLWR_COMMAND_TIMEOUT = 120.0
"""Seconds a short ``flwr`` command (ls, log, register) may take; a SuperLink that
hangs must not stall the job that polls it."""


async def _flwr_output(install: FlowerInstall, flwr_home: Path, args: list[str]) -> str:
    """What ``flwr ARGS`` prints (stdout and stderr) with a private ``FLWR_HOME``.

    A command that does not finish within ``FLWR_COMMAND_TIMEOUT`` is killed and
    its output is a line saying so, which no caller parses as an answer.
    """
    process = await asyncio.create_subprocess_exec(
        str(install.program("flwr")),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        env=install.env(flwr_home),
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), FLWR_COMMAND_TIMEOUT)
    except asyncio.TimeoutError:
        return f"flwr {args[0]}: no answer within {FLWR_COMMAND_TIMEOUT:.0f} s"
    finally:
        if process.returncode is None:  # timed out, or the job was cancelled meanwhile
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # and whatever it started
            await process.wait()
    return out.decode(errors="replace")
