"""The tree is the architecture: production processes never load the local harness, and no
module imports itself through others (the layers contract itself is `lint-imports`, in CI)."""

from __future__ import annotations

import json
import subprocess
import sys

import grimp
import pytest

# The long-running processes of a federation, and what each must never load.
PRODUCTION_ENTRY_POINTS = [
    "gateway.control.relay_app",
    "gateway.control.site_agent",
    "gateway.control.admin",
]
NEVER_IN_PRODUCTION = ("gateway.harness", "gateway.bench", "gateway.cli")


@pytest.mark.parametrize("entry_point", PRODUCTION_ENTRY_POINTS)
def test_a_production_process_loads_nothing_of_the_harness(entry_point: str) -> None:
    # A fresh interpreter: this test process has imported everything already.
    probe = (
        f"import json, sys, {entry_point}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('gateway'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(done.stdout)
    assert entry_point in loaded
    assert [m for m in loaded if m.startswith(NEVER_IN_PRODUCTION)] == []


def test_no_module_imports_itself_through_others() -> None:
    # grimp reads every import statement, those inside functions included.
    graph = grimp.build_graph("gateway")
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                cycles.append((module, *back))
    assert cycles == []
