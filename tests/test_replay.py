"""Running installations upgrade: today's workflows replay the previous release's histories.

The histories in tests/histories/ were recorded by tests/histories/record.py before device
workflow ids became `device/{pk}/{dn}`; their pacer and verification started children as
`device-{pk}-{dn}`, which the `device-workflow-id-slash` patch keeps for such runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner
from temporalio.workflow import NondeterminismError

from ota.contracts import device_workflow_id
from workflows import WORKFLOWS

HISTORIES = Path(__file__).resolve().parent / "histories"
LEGACY = sorted(HISTORIES.glob("legacy-*.json"))


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


def child_ids(history: WorkflowHistory) -> list[str]:
    return [
        e.start_child_workflow_execution_initiated_event_attributes.workflow_id
        for e in history.events
        if e.HasField("start_child_workflow_execution_initiated_event_attributes")
    ]


def replayer() -> Replayer:
    return Replayer(workflows=WORKFLOWS, workflow_runner=UnsandboxedWorkflowRunner())


def test_the_recorded_histories_use_legacy_ids():
    assert [p.name for p in LEGACY] == [
        "legacy-batch-run1.json",
        "legacy-batch-run2.json",
        "legacy-device.json",
        "legacy-verify.json",
    ]
    assert child_ids(load(HISTORIES / "legacy-batch-run1.json")) == [
        "device-rec-a-b-c00000",
        "device-rec-a-b-c00001",
    ]


@pytest.mark.parametrize("path", LEGACY, ids=lambda p: p.stem)
async def test_legacy_history_replays(path: Path):
    await replayer().replay_workflow(load(path))


async def test_replay_fails_without_the_patch(monkeypatch):
    """The check has teeth: a child started under the new id where the history has the old
    one is a non-determinism error, which the patch is there to prevent."""
    monkeypatch.setattr("workflows.children.legacy_device_workflow_id", device_workflow_id)
    with pytest.raises(NondeterminismError):
        await replayer().replay_workflow(load(HISTORIES / "legacy-batch-run1.json"))
