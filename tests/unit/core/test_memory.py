"""A server's memory settings: free memory given back, and the garbage collector's."""

from __future__ import annotations

import gc
import platform

import pytest

from gateway.core.memory import (
    GC_THRESHOLDS,
    collecting_garbage_less_often,
    give_free_memory_back,
)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_free_memory_is_given_back_on_glibc() -> None:
    assert give_free_memory_back() is True


def test_a_server_collects_garbage_less_often_and_never_visits_what_start_up_loaded() -> None:
    before = gc.get_threshold()
    with collecting_garbage_less_often():
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 1000  # the modules and classes start-up loaded
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
