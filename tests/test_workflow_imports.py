"""Workflow modules import only the standard library, temporalio and the shared contract.

The worker runs them unsandboxed (worker.py), so nothing checks this at run time but this test:
a database or MQTT import in a workflow would make replays depend on the outside world. What
they import must keep to the same rule: ota.contracts (which types its fields with ota.domain's
states) and ota.domain.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).parent.parent / "workflows"
ALLOWED = {"temporalio", "ota.contracts", "ota.domain", "workflows"}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


OTA = WORKFLOWS.parent / "ota"
# What the modules workflows import may themselves import, besides the standard library.
SHARED = {
    OTA / "contracts.py": {"temporalio", "ota.domain"},
    OTA / "domain.py": {"ota.errors"},
    OTA / "errors.py": set(),
}


def outside(path: Path, allowed: set[str]) -> list[str]:
    def ok(name: str) -> bool:
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top == "__future__":
            return True
        return any(name == a or name.startswith(a + ".") for a in allowed)

    return sorted(name for name in imported(path) if not ok(name))


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.py")), ids=lambda p: p.name)
def test_workflow_imports(path):
    assert not outside(path, ALLOWED), f"{path.name} imports {outside(path, ALLOWED)}"


@pytest.mark.parametrize("path", sorted(SHARED), ids=lambda p: p.name)
def test_what_workflows_import_keeps_to_the_rule(path):
    assert not outside(path, SHARED[path]), f"{path.name} imports {outside(path, SHARED[path])}"
