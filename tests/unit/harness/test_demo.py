"""`flgate demo` finds its bundled job wherever it is started from."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.harness.demo import default_job_dir
from tests.support.paths import QUICKSTART


def test_the_demo_job_is_found_outside_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_job_dir() == QUICKSTART


def test_a_jobs_folder_in_the_working_directory_comes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "jobs" / "quickstart-numpy").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert default_job_dir() == tmp_path / "jobs" / "quickstart-numpy"
