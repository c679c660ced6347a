"""The relay's glibc setting that returns large freed blocks at once."""

from __future__ import annotations

import platform

import pytest

from gateway.core.memory import return_large_blocks_at_once


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_the_mmap_threshold_is_fixed_on_glibc() -> None:
    assert return_large_blocks_at_once() is True
