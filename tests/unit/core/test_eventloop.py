"""The relay's and the sites' event loop: uvloop where installed, asyncio on request."""

from __future__ import annotations

import asyncio
import sys

import pytest

from gateway.core.eventloop import EVENT_LOOP_ENV, loop_factory, run
from gateway.core.exceptions import ConfigError

uvloop = pytest.importorskip("uvloop")


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_uvloop_runs_by_default_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    assert loop_factory() is uvloop.new_event_loop
    assert run(_loop_type()) is uvloop.Loop


def test_the_environment_turns_uvloop_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "asyncio")
    assert loop_factory() is None
    assert not issubclass(run(_loop_type()), uvloop.Loop)


def test_an_unknown_loop_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "trio")
    with pytest.raises(ConfigError, match="asyncio"):
        loop_factory()


def test_uvloop_asked_for_where_missing_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import fails
    with pytest.raises(ConfigError, match="not installed"):
        loop_factory("uvloop")
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    assert loop_factory() is None
