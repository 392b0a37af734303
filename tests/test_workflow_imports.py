"""Workflow modules import only the standard library, temporalio and the shared contract.

The worker runs them unsandboxed (worker.py), so nothing checks this at run time but this test:
a database or MQTT import in a workflow would make replays depend on the outside world.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).parent.parent / "workflows"
# The shared modules workflows may import, themselves pure (test_shared_modules_are_pure).
SHARED = (
    "ota.contracts",
    "ota.activity_stubs",
    "ota.domain",
    "ota.batch_options",
    "ota.errors",
    "ota.windows",
    "ota.rollout",
)
# Pure libraries from PyPI: cron arithmetic for maintenance windows, no I/O.
PURE_LIBRARIES = ("cronsim",)
ALLOWED = {"temporalio", "workflows", *SHARED, *PURE_LIBRARIES}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.py")), ids=lambda p: p.name)
def test_workflow_imports(path):
    for name in imported(path):
        top = name.split(".")[0]
        ok = top in sys.stdlib_module_names or top == "__future__"
        ok = ok or any(name == a or name.startswith(a + ".") for a in ALLOWED)
        assert ok, f"{path.name} imports {name}"


@pytest.mark.parametrize("module", SHARED)
def test_shared_modules_are_pure(module):
    """What workflows import imports nothing from the outside world either."""
    path = WORKFLOWS.parent / (module.replace(".", "/") + ".py")
    for name in imported(path):
        top = name.split(".")[0]
        ok = top in sys.stdlib_module_names or top in ("__future__", "temporalio", *PURE_LIBRARIES)
        assert ok or name in SHARED, f"{module} imports {name}"
