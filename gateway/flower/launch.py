"""Start Flower's programs the way an operator would, on loopback ports we pick.

These are the only places that build the command lines of ``flower-superlink`` and
``flower-supernode``; which flags a release takes is the table of :mod:`.releases`
(flwr >= 1.40 serves all its APIs on one HTTP port, older releases some or all of
them on gRPC ports of their own).
``launch_*`` also waits until the started program serves, and starts it again
on new ports when another process took a port first. Driving a started
SuperLink with the ``flwr`` CLI is :mod:`.flwr_cli`'s.
"""

from __future__ import annotations

import asyncio
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
IN_MEMORY = ":flwr-in-memory:"
"""``--database`` for Flower's in-memory SuperLink state (its default, in every release)."""


@dataclass(frozen=True)
class SuperLinkAddresses:
    """Where a started SuperLink listens."""

    control: str
    """host:port that ``flwr run`` talks to (Control API)."""
    fleet: str
    """host:port of the Fleet API (the same port as ``control`` for flwr >= 1.40)."""
    serving: tuple[str, ...] = ()
    """Every address it opens (each of its APIs), to wait for."""


def start_superlink(
    install: FlowerInstall,
    workdir: Path,
    *,
    tls: LoopbackTLS | None = None,
    node_auth: bool = False,
) -> tuple[ManagedProcess, SuperLinkAddresses]:
    """A SuperLink with its own database in ``workdir`` (in memory for the releases whose
    file database breaks, :mod:`.releases`), bound to loopback only, each of its APIs
    where its release serves it.

    ``tls`` makes it serve TLS on all its APIs; ``node_auth`` turns on Flower's
    SuperNode authentication, which Flower only allows with TLS.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    argv, addresses = superlink_command(install, workdir, tls=tls, node_auth=node_auth)
    process = ManagedProcess(
        "superlink",
        argv,
        log_path=workdir / "superlink.log",
        env=install.env(workdir / "flwr-home"),
        cwd=workdir,
    )
    return process, addresses


def superlink_command(
    install: FlowerInstall,
    workdir: Path,
    *,
    tls: LoopbackTLS | None = None,
    node_auth: bool = False,
) -> tuple[list[str], SuperLinkAddresses]:
    """The command line of :func:`start_superlink` (on free ports picked now), and where
    it will serve."""
    if node_auth and tls is None:
        raise ValueError("flower-superlink --enable-supernode-auth requires TLS")
    traits = install.traits
    argv = [
        str(install.program("flower-superlink")),
        *_superlink_tls_args(tls),
        "--database", IN_MEMORY if traits.in_memory_state else str(workdir / "superlink.db"),
    ]  # fmt: skip
    if traits.disable_dependency_install:
        argv.append("--disable-runtime-dependency-installation")
    serving: list[str] = []
    http = f"{LOOPBACK}:{free_port()}"
    if traits.superlink_http_port:
        argv += ["--host", LOOPBACK, "--port", http.rpartition(":")[2]]
        serving.append(http)

    def api(on_http: bool, flag: str) -> str:
        if on_http:
            return http
        address = f"{LOOPBACK}:{free_port()}"
        argv.extend([flag, address])
        serving.append(address)
        return address

    api(traits.serverappio_http, "--serverappio-api-address")
    control = api(traits.control_http, "--control-api-address")
    fleet = api(traits.fleet_http, "--fleet-api-address")
    if node_auth:
        argv.append("--enable-supernode-auth")
    return argv, SuperLinkAddresses(control=control, fleet=fleet, serving=tuple(serving))


def _superlink_tls_args(tls: LoopbackTLS | None) -> list[str]:
    if tls is None:
        return ["--insecure"]
    # Absolute paths: the SuperLink hands the CA path on to the flower-superexec it starts.
    return [
        "--ssl-ca-certfile", str(tls.ca_cert.resolve()),
        "--ssl-certfile", str(tls.cert.resolve()),
        "--ssl-keyfile", str(tls.key.resolve()),
    ]  # fmt: skip


_PORT_TAKEN = ("address already in use", "is already in use")
"""How Flower says a port it was given is taken: the OS's error through uvicorn's HTTP
servers ("[Errno 98] address already in use"), and Flower's own gRPC servers' exit
("Port in server address 127.0.0.1:PORT is already in use.", e.g. 1.36's Fleet API)."""
T = TypeVar("T")


def port_taken(log_text: str) -> bool:
    """Whether a Flower process's last log lines say a port it was given was taken."""
    text = log_text.lower()
    return any(phrase in text for phrase in _PORT_TAKEN)


def _lost_port_race(process: ManagedProcess) -> bool:
    """True when the process died because another one took the port we picked for it."""
    return not process.alive() and port_taken(process.log_tail(60))


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
        return process, addresses, list(addresses.serving)

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
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    attempts: int = 3,
) -> ManagedProcess:
    """Start a SuperNode and wait until its Runtime API serves (``env``: more of its
    environment, which its ClientApps inherit)."""

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
            env=env,
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
    env: Mapping[str, str] | None = None,
) -> ManagedProcess:
    """A SuperNode dialing ``superlink``; ``grpc_mode`` is 'rere' or 'adapter' (flwr <= 1.39).

    ``env``: variables added to its environment; the ``flwr-clientapp`` processes it
    starts inherit them (the site's tracking URL and the job's token, say).
    ``port`` is the SuperNode's own Runtime API port on loopback (0: pick one).
    ``auth_key`` is the node's OpenSSH private key for Flower's node authentication:
    the SuperNode signs every Fleet call with it instead of a key of its own, and
    does not register itself (the key must be registered with the SuperLink).
    Flower allows that only over TLS: ``root_certificates`` is the CA of the
    server at ``superlink`` (without it the connection is plain).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    return ManagedProcess(
        name,
        supernode_command(
            install,
            superlink,
            node_config=node_config,
            grpc_mode=grpc_mode,
            auth_key=auth_key,
            root_certificates=root_certificates,
            port=port,
        ),
        log_path=workdir / f"{name}.log",
        env={**install.env(workdir / "flwr-home"), **(env or {})},
        cwd=workdir,
    )


def supernode_command(
    install: FlowerInstall,
    superlink: str,
    *,
    node_config: Mapping[str, int | str],
    grpc_mode: str = "rere",
    auth_key: Path | None = None,
    root_certificates: Path | None = None,
    port: int = 0,
) -> list[str]:
    """The command line of :func:`start_supernode`."""
    if auth_key is not None and root_certificates is None:
        raise ValueError("flower-supernode --auth-supernode-private-key requires TLS")
    trust = (
        ["--root-certificates", str(root_certificates.resolve())]
        if root_certificates is not None
        else ["--insecure"]
    )
    own_api = str(port or free_port())
    argv = [
        str(install.program("flower-supernode")),
        *trust,
        "--superlink", superlink,
        *(
            ["--port", own_api]
            if install.traits.supernode_port_flag
            else ["--clientappio-api-address", f"{LOOPBACK}:{own_api}"]
        ),
        "--node-config", node_config_text(node_config),
    ]  # fmt: skip
    if install.dialect == DIALECT_GRPC:
        argv.append("--grpc-adapter" if grpc_mode == "adapter" else "--grpc-rere")
    if auth_key is not None:
        argv += ["--auth-supernode-private-key", str(auth_key.resolve())]
    return argv
