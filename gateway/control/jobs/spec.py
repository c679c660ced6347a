"""The job file (``job.yaml``) beside an unmodified Flower app.

::

    name: quickstart-numpy      # defaults to the directory's name
    min_sites: 2                # sites needed to run
    run_config:                 # run-config overrides passed to `flwr run`
      num-server-rounds: 3
    time_limit: 900             # seconds before the job is stopped
    node_auth: true             # Flower's SuperNode authentication with the sites' node keys

A directory without a job file is still a job: its defaults apply.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...core.exceptions import ConfigError

JOB_FILE = "job.yaml"
_KNOWN_KEYS = {"name", "min_sites", "run_config", "time_limit", "node_auth"}
RunConfigValue = int | float | str


@dataclass(frozen=True)
class JobSpec:
    """What to run and with which overrides."""

    app_dir: Path
    name: str
    min_sites: int = 1
    run_config: dict[str, RunConfigValue] = field(default_factory=dict)
    time_limit: float = 900.0
    node_auth: bool = False
    """Run the job's SuperLink with ``--enable-supernode-auth``: only SuperNodes
    holding a key that a site of the job reported may join."""

    @classmethod
    def load(cls, directory: Path) -> JobSpec:
        """Read ``directory`` as a job; the error says what to fix."""
        app_dir = directory.resolve()
        if not app_dir.is_dir():
            raise ConfigError(f"job directory {directory} does not exist")
        if not (app_dir / "pyproject.toml").is_file():
            raise ConfigError(
                f"{directory} is not a Flower app: it has no pyproject.toml "
                "(a Flower app has pyproject.toml with a [tool.flwr.app] table)"
            )
        data: dict[str, Any] = {}
        job_file = app_dir / JOB_FILE
        if job_file.is_file():
            try:
                loaded = yaml.safe_load(job_file.read_text()) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{job_file} is not valid YAML: {exc}") from exc
            if not isinstance(loaded, dict):
                raise ConfigError(f"{job_file} must be a mapping of keys to values")
            unknown = set(loaded) - _KNOWN_KEYS
            if unknown:
                raise ConfigError(
                    f"{job_file}: unknown keys {sorted(unknown)}; known: {sorted(_KNOWN_KEYS)}"
                )
            data = loaded
        run_config = data.get("run_config") or {}
        scalar = (int, float, str)
        if not isinstance(run_config, dict) or not all(
            isinstance(v, scalar) and not isinstance(v, bool) for v in run_config.values()
        ):
            raise ConfigError(f"{job_file}: run_config must map names to numbers or strings")
        try:
            min_sites = int(data.get("min_sites", 1))
            time_limit = float(data.get("time_limit", 900))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{job_file}: min_sites and time_limit must be numbers") from exc
        if min_sites < 1 or time_limit <= 0:
            raise ConfigError(f"{job_file}: min_sites must be >= 1 and time_limit > 0")
        node_auth = data.get("node_auth", False)
        if not isinstance(node_auth, bool):
            raise ConfigError(f"{job_file}: node_auth must be true or false, not {node_auth!r}")
        return cls(
            app_dir=app_dir,
            name=str(data.get("name") or app_dir.name),
            min_sites=min_sites,
            run_config={str(k): v for k, v in run_config.items()},
            time_limit=time_limit,
            node_auth=node_auth,
        )


def parse_run_config(text: str) -> dict[str, RunConfigValue]:
    """``"num-server-rounds=5 lr=0.1 name='x'"`` -> a dict; the error says what to fix."""
    config: dict[str, RunConfigValue] = {}
    try:
        items = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"run-config {text!r}: {exc}") from exc
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or not raw:
            raise ConfigError(
                f'run-config item {item!r} is not key=value; example: "num-server-rounds=5 lr=0.1"'
            )
        value: RunConfigValue
        try:
            value = int(raw)
        except ValueError:
            try:
                value = float(raw)
            except ValueError:
                value = raw
        config[key] = value
    return config
