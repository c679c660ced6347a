"""A real Prometheus server (Debian's ``prometheus`` package) that scrapes given targets,
and its HTTP query API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gateway.flower.process import free_port

SCRAPE_SECONDS = 1.0


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    return found


@dataclass
class RunningPrometheus:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @classmethod
    def start(cls, workdir: Path, targets: dict[str, list[str]]) -> RunningPrometheus:
        """Scrape each job's ``host:port`` targets every :data:`SCRAPE_SECONDS`."""
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {
                "scrape_interval": f"{SCRAPE_SECONDS:g}s",
                "evaluation_interval": f"{SCRAPE_SECONDS:g}s",
            },
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": addresses}]}
                for job, addresses in targets.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = workdir / "prometheus.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    prometheus_binary(),
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = cls(process, port, log)
        server._wait_ready()
        return server

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/-/ready", timeout=2
                ) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready in {timeout:g} s: {self.log.read_text()[-2000:]}")

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """The instant vector of ``expr`` now: (labels, value) per series."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        with urllib.request.urlopen(url, timeout=10) as answer:
            payload = json.loads(answer.read())
        assert payload["status"] == "success", payload
        return [(r["metric"], float(r["value"][1])) for r in payload["data"]["result"]]

    def value(self, expr: str) -> float | None:
        """The single value of ``expr`` (e.g. a ``sum(...)``), ``None`` when it has none."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return result[0][1] if result else None

    def targets_up(self) -> dict[str, int]:
        """Per scrape job, how many of its targets answered the last scrape."""
        return {r[0]["job"]: int(r[1]) for r in self.query("sum by (job) (up)")}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
