"""The job file (``job.yaml``) beside an unmodified Flower app, and the app's pyproject.toml.

::

    name: quickstart-numpy      # defaults to the directory's name
    min_sites: 2                # sites needed to run
    run_config:                 # run-config overrides passed to `flwr run`
      num-server-rounds: 3
    time_limit: 900             # seconds before the job is stopped
    node_auth: true             # Flower's SuperNode authentication with the sites' node keys
    flower: "1.39"              # the Flower release to run it with (x.y or x.y.z): relay
                                # and sites pick that installation (default: the relay's)
    mlflow_tracking_uri: https://mlflow.example.org   # the MLflow server for this job's
                                # series (default: the relay's --mlflow-tracking-uri)

A directory without a job file is still a job: its defaults apply.

Both files are checked when a job is submitted, by the CLI and again by the relay
(a member admin's submission is untrusted), so a job that `flwr run` would refuse
is refused then, not when it starts. Errors name a file by its name in the app
directory, never by where the relay keeps it.
"""

from __future__ import annotations

import logging
import math
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ...core.exceptions import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 has no tomllib; tomli is the same parser, and flwr depends on it
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

log = logging.getLogger(__name__)

_YAML_LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)
"""libyaml's safe loader where PyYAML has it (faster, with a nesting limit of its own)."""

JOB_FILE = "job.yaml"
PYPROJECT = "pyproject.toml"
_KNOWN_KEYS = {
    "name",
    "min_sites",
    "run_config",
    "time_limit",
    "node_auth",
    "flower",
    "mlflow_tracking_uri",
}
RunConfigValue = int | float | str

MAX_TIME_LIMIT = 7 * 24 * 3600.0
"""The longest time limit a job may ask for (7 days): beyond it is a typo or an attempt
to hold the relay's SuperLink forever."""
MAX_JOB_FILE_BYTES = 64 * 1024
"""The largest job file read: a few keys, never a document worth parsing for long."""
MAX_JOB_FILE_BRACKETS = 256
"""Flow collections (``[``, ``{``) a job file may open: more only serves to nest deeply."""
MAX_PYPROJECT_BYTES = 1024 * 1024
"""The largest pyproject.toml read."""
JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A job's name: shown in tables and logs, so no spaces, control characters or markup."""
_RUN_CONFIG_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
FLOWER_RELEASE = re.compile(r"[1-9][0-9]?\.[0-9]{1,3}(\.[0-9]{1,3})?")
"""A Flower release as a job names it: "1.39" (any patch) or "1.39.0"."""
MAX_TRACKING_URI_LENGTH = 2048
TRACKING_URI_SCHEMES = ("http", "https")
"""What a job file may name as its MLflow server: a server over HTTP(S), never a path or
database of the relay's (``file:``, ``sqlite:``), which a submitter must not reach."""
_OBJECT_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*")
"""Flower's ``module:attribute`` reference to a ServerApp or ClientApp."""


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
    flower: str = ""
    """The Flower release the job needs ("x.y" or "x.y.z"); "" for the relay's default."""
    mlflow_tracking_uri: str = ""
    """The MLflow server the job's series go to; "" for the relay's (if it has one)."""

    @classmethod
    def load(cls, directory: Path, *, shown_as: str | None = None) -> JobSpec:
        """Read ``directory`` as a job; the error says what to fix.

        ``shown_as``: what to call the directory in errors (the relay passes
        "the submitted app" rather than its own path).
        """
        label = shown_as or str(directory)
        app_dir = directory.resolve()
        if not app_dir.is_dir():
            raise ConfigError(f"job directory {label} does not exist")
        if not (app_dir / PYPROJECT).is_file():
            raise ConfigError(
                f"{label} is not a Flower app: it has no {PYPROJECT} "
                "(a Flower app has pyproject.toml with a [tool.flwr.app] table)"
            )
        data: dict[str, Any] = {}
        job_file = app_dir / JOB_FILE
        if job_file.is_file():
            loaded = _read_yaml(job_file)
            if not isinstance(loaded, dict):
                raise ConfigError(f"{JOB_FILE} must be a mapping of keys to values")
            unknown = {str(k) for k in loaded} - _KNOWN_KEYS
            if unknown:
                raise ConfigError(
                    f"{JOB_FILE}: unknown keys {sorted(unknown)}; known: {sorted(_KNOWN_KEYS)}"
                )
            data = loaded
        node_auth = data.get("node_auth", False)
        if not isinstance(node_auth, bool):
            raise ConfigError(
                f"{JOB_FILE}: node_auth must be true or false, not {_kind(node_auth)}"
            )
        name = data.get("name")
        flower = data.get("flower", "")
        if not (isinstance(flower, str) and (flower == "" or FLOWER_RELEASE.fullmatch(flower))):
            # YAML reads an unquoted 1.40 as the number 1.4: only quotes keep the release
            shown = (
                repr(flower)[:40]
                if isinstance(flower, str)
                else f"the number {flower!r} (quote it)"
                if isinstance(flower, float)
                else _kind(flower)
            )
            raise ConfigError(
                f'{JOB_FILE}: flower must be a quoted Flower release such as "1.39" or '
                f'"1.42.0"; got {shown}'
            )
        return cls(
            app_dir=app_dir,
            name=(
                check_job_name(name, f"{JOB_FILE}: name")
                if name is not None
                else _name_from_directory(app_dir.name)
            ),
            min_sites=check_min_sites(data.get("min_sites", 1), f"{JOB_FILE}: min_sites"),
            run_config=_run_config(data.get("run_config")),
            time_limit=check_time_limit(data.get("time_limit", 900), f"{JOB_FILE}: time_limit"),
            node_auth=node_auth,
            flower=flower,
            mlflow_tracking_uri=check_tracking_uri(
                data.get("mlflow_tracking_uri", ""), f"{JOB_FILE}: mlflow_tracking_uri"
            ),
        )


def check_job_name(value: object, what: str) -> str:
    """A job name as given (job file, ``--name``, a submission); refused unless safe."""
    if isinstance(value, str) and JOB_NAME.fullmatch(value):
        return value
    shown = f"{value!r}" if isinstance(value, str) and len(value) <= 80 else _kind(value)
    raise ConfigError(
        f"{what} must be 1 to 64 letters, digits, '.', '_' or '-' (starting with a letter "
        f"or digit), such as 'quickstart-numpy'; got {shown}"
    )


def check_tracking_uri(value: object, what: str) -> str:
    """An MLflow tracking URI a job names: an http(s) URL with a host, or "" for none."""
    example = "such as 'https://mlflow.example.org' or 'http://mlflow.internal:5000'"
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise ConfigError(
            f"{what} must be a string, the MLflow server's URL {example}; got {_kind(value)}"
        )
    shown = repr(value[:80])
    if len(value) > MAX_TRACKING_URI_LENGTH or any(
        c.isspace() or not c.isprintable() for c in value
    ):
        raise ConfigError(
            f"{what} must be a URL of at most {MAX_TRACKING_URI_LENGTH} characters without "
            f"spaces {example}; got {shown}"
        )
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise ConfigError(f"{what} must be a URL {example}; got {shown}") from None
    if parts.scheme not in TRACKING_URI_SCHEMES or not parts.hostname:
        raise ConfigError(
            f"{what} must be an http:// or https:// URL of an MLflow server {example} "
            f"(a job may not name a file or database of the relay's); got {shown}"
        )
    return value


def check_min_sites(value: object, what: str) -> int:
    """``min_sites`` is a whole number of sites, at least one."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    shown = repr(value)[:40] if isinstance(value, int | float) else _kind(value)
    raise ConfigError(f"{what} must be >= 1, an integer such as 2; got {shown}")


def check_time_limit(value: object, what: str) -> float:
    """A time limit in seconds: a finite number above zero, at most :data:`MAX_TIME_LIMIT`."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
        if math.isfinite(seconds) and 0 < seconds <= MAX_TIME_LIMIT:
            return seconds
        shown = repr(value)[:40]
    elif isinstance(value, str) and len(value) <= 40:
        # YAML reads 1e3 as text: only 1000, 1000.0 or 1.0e+3 are numbers
        shown = f"the string {value!r} (write 900 or 9.0e+2, not 9e2)"
    else:
        shown = _kind(value)
    raise ConfigError(
        f"{what} must be a number of seconds above 0 and at most {MAX_TIME_LIMIT:.0f} "
        f"(7 days), such as 900; got {shown}"
    )


def check_flower_app(app_dir: Path) -> None:
    """Refuse an app whose pyproject.toml `flwr run` would refuse, with the field to fix.

    Checks what Flower needs to build and run the app ([project] name and version,
    [tool.flwr.app] publisher, the ServerApp and ClientApp components), so a broken
    app fails at submission instead of later as "flwr run exited 1".
    """
    path = app_dir / PYPROJECT
    if not path.is_file():
        raise ConfigError(f"the app has no {PYPROJECT}: a Flower app has one at its top")
    if tomllib is None:  # Python 3.10 without tomli: `flwr run` will check it instead
        log.warning("%s not checked: Python 3.10 needs the tomli package to read it", PYPROJECT)
        return
    if path.stat().st_size > MAX_PYPROJECT_BYTES:
        raise ConfigError(f"{PYPROJECT} is over {MAX_PYPROJECT_BYTES // 1024} KiB")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{PYPROJECT} is not UTF-8 text: {exc.reason}") from None
    except ValueError as exc:  # TOMLDecodeError, or an integer too long to convert
        raise ConfigError(f"{PYPROJECT} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{PYPROJECT} nests its values too deeply") from None
    project = _table(data, ("project",))
    for key in ("name", "version"):
        _string(project, key, "[project]", "such as 'quickstart-numpy' or '1.0.0'")
    app = _table(data, ("tool", "flwr", "app"))
    _string(app, "publisher", "[tool.flwr.app]", "such as 'flgate'")
    components = _table(data, ("tool", "flwr", "app", "components"))
    for key in ("serverapp", "clientapp"):
        example = f"'module:attribute' such as 'my_app.{key[:6]}_app:app'"
        value = _string(components, key, "[tool.flwr.app.components]", example)
        if not _OBJECT_REF.fullmatch(value):
            raise ConfigError(
                f"{PYPROJECT}: {key} in [tool.flwr.app.components] must be {example}; "
                f"got {value[:80]!r}"
            )
    if "config" in app and not isinstance(app["config"], dict):
        raise ConfigError(f"{PYPROJECT}: [tool.flwr.app.config] must be a table of values")


def _table(data: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """The table at ``path`` (``("tool", "flwr", "app")`` is [tool.flwr.app]); the error
    names the table needed and the first part of the way to it that is missing or wrong."""
    table = data
    for depth, key in enumerate(path, start=1):
        value = table.get(key)
        if not isinstance(value, dict):
            found = "missing" if value is None else _kind(value)
            raise ConfigError(
                f"{PYPROJECT} needs a [{'.'.join(path)}] table for `flwr run`; "
                f"[{'.'.join(path[:depth])}] is {found}"
            )
        table = value
    return table


def _string(table: dict[str, Any], key: str, name: str, example: str) -> str:
    value = table.get(key)
    if isinstance(value, str) and value.strip():
        return value
    found = "it is missing" if value is None else f"got {_kind(value)}"
    raise ConfigError(f"{PYPROJECT}: {name} needs {key}, a non-empty string {example}; {found}")


def _read_yaml(path: Path) -> object:
    """The job file's content; bounded in size and nesting, since PyYAML's pure-Python
    scanner takes seconds over a few thousand open brackets (libyaml refuses them fast)."""
    if path.stat().st_size > MAX_JOB_FILE_BYTES:
        raise ConfigError(f"{JOB_FILE} is over {MAX_JOB_FILE_BYTES // 1024} KiB")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{JOB_FILE} is not UTF-8 text: {exc.reason}") from None
    if text.count("[") + text.count("{") > MAX_JOB_FILE_BRACKETS:
        raise ConfigError(
            f"{JOB_FILE} has more than {MAX_JOB_FILE_BRACKETS} '[' and '{{': a job file is a "
            "few keys, not nested lists"
        )
    try:
        return yaml.load(text, Loader=_YAML_LOADER) or {}
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an integer too long to convert
        raise ConfigError(f"{JOB_FILE} is not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{JOB_FILE} nests its values too deeply") from None


def _run_config(value: object) -> dict[str, RunConfigValue]:
    """``run_config`` maps names to scalars, as `flwr run --run-config` takes them."""
    value = value or {}
    what = f"{JOB_FILE}: run_config must map names to numbers or strings"
    if not isinstance(value, dict):
        raise ConfigError(f"{what}; got {_kind(value)}")
    config: dict[str, RunConfigValue] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _RUN_CONFIG_KEY.fullmatch(key):
            shown = repr(key)[:80] if isinstance(key, str) else _kind(key)
            raise ConfigError(
                f"{what}; a name is letters, digits, '_', '.' or '-', such as "
                f"'num-server-rounds', not {shown}"
            )
        scalar = isinstance(item, int | float | str) and not isinstance(item, bool)
        if not scalar or (isinstance(item, float) and not math.isfinite(item)):
            shown = repr(item) if isinstance(item, float) else _kind(item)
            raise ConfigError(f"{what}; {key} is {shown}")
        config[key] = item
    return config


def _name_from_directory(directory: str) -> str:
    """The default name: the directory's, with what a job name may not hold replaced."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", directory).lstrip("._-")[:64].rstrip("-")
    return name or "app"


def _kind(value: object) -> str:
    """What a value is, for an error message: never its repr, which a YAML alias can make huge."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    return f"a {type(value).__name__}"


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
