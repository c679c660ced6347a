"""Message ids: unique within a process and apart from a forked child's."""

from __future__ import annotations

import os
import re
import warnings

import pytest

from gateway.core.envelope import new_message_id


def test_message_ids_are_32_hex_digits_and_never_repeat() -> None:
    ids = [new_message_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python warns about forking a process with threads (other tests may have left
        # some); the child here takes no lock and leaves at once.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: send one id, leave at once
        os.write(write, new_message_id().encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        childs = pipe.read().decode()
    os.waitpid(pid, 0)
    parents = new_message_id()
    assert len(childs) == 32 and childs[:16] != parents[:16]
