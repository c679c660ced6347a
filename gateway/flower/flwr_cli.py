"""Drive a SuperLink with Flower's ``flwr`` CLI, as an operator would, and read its answers.

Each call runs ``flwr`` with a private ``FLWR_HOME`` (:func:`write_flwr_home`)
naming one SuperLink connection: ``flwr run`` to submit an app, ``ls`` for a
run's status, ``log`` for its logs, ``supernode register`` to admit a node key.
``flwr`` exits 0 in many failures, so its printed answers decide (run ids,
final status, JSON). Starting the SuperLink itself is :mod:`.launch`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from ..core.exceptions import ProcessError
from .install import FlowerInstall

ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")  # Flower colours its log even when piped


@contextlib.asynccontextmanager
async def _started(
    argv: list[str], env: Mapping[str, str]
) -> AsyncIterator[tuple[subprocess.Popen[bytes], asyncio.StreamReader]]:
    """``argv`` running in a session of its own, its stdout and stderr as one stream;
    killed with its process group on the way out if it has not exited by then.

    Started by the standard library's fork-exec, not ``asyncio.create_subprocess_exec``:
    on uvloop (the relay's loop) that one runs Python's at-fork hooks in the child, and
    grpcio's, with the relay's channels open, abort it ("flwr run exited -6").
    """
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(env),
        start_new_session=True,
    )
    assert process.stdout is not None
    loop = asyncio.get_running_loop()
    output = asyncio.StreamReader(loop=loop)
    try:
        pipe, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(output, loop=loop), process.stdout
        )
    except BaseException:
        process.kill()
        process.stdout.close()
        await asyncio.to_thread(process.wait)
        raise
    try:
        yield process, output
    finally:
        if process.poll() is None:  # timed out, or the job was cancelled meanwhile
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # and whatever it started
            await asyncio.to_thread(process.wait)
        pipe.close()


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
    named = ["--name", name] if install.traits.register_takes_name else []  # 1.38+
    command = ["supernode", "register", str(public_key), connection, "--format", "json"]
    text = await _flwr_output(install, flwr_home, [*command, *named])
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
    lines: list[str] = []
    async with _started(argv, install.env(flwr_home)) as (process, output):
        async for raw in output:
            line = ANSI_RE.sub("", raw.decode(errors="replace").rstrip("\n"))
            lines.append(line)
            if on_line is not None:
                on_line(line)
        code = await asyncio.to_thread(process.wait)
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
    argv = [str(install.program("flwr")), *args]
    async with _started(argv, install.env(flwr_home)) as (process, output):
        try:
            out = await asyncio.wait_for(output.read(), FLWR_COMMAND_TIMEOUT)
        except asyncio.TimeoutError:
            return f"flwr {args[0]}: no answer within {FLWR_COMMAND_TIMEOUT:.0f} s"
        await asyncio.to_thread(process.wait)
    return out.decode(errors="replace")
