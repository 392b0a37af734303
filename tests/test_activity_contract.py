"""The workflows call activities through ota.contracts' stubs: the worker must run the same ones.

A stub and the method the worker registers must agree on the name (histories record it), the
argument and the result type; and the states and outcomes typed as StrEnums must travel as the
same JSON strings as before, and come back as the enum.
"""

from __future__ import annotations

import json
from dataclasses import astuple

import pytest
from temporalio import activity
from temporalio.converter import DataConverter

from ota.activity_stubs import ACTIVITIES
from ota.contracts import DeviceReport, FinishBatchRequest, PacerCarry, PushResult, TaskCheck
from ota.domain import BatchState, PushOutcome, ReportOutcome, TaskReason, TaskState
from tests.test_workflow_support import make_context
from worker import build_worker

# The activity type names in the histories of every release: a rename strands running workflows.
RECORDED_NAMES = {
    "prepare_batch",
    "claim_tasks",
    "set_batch_state",
    "cancel_tasks",
    "start_rollback",  # since the rollback policy (issue 16)
    "prepare_verify",
    "finish_verify",
    "push",
    "recheck",
    "check_task",
    "finish_task",
}


def definition(fn: object) -> tuple[str | None, list[type] | None, type | None]:
    defn = activity._Definition.must_from_callable(fn)  # type: ignore[arg-type]
    return defn.name, defn.arg_types, defn.ret_type


@pytest.fixture
def registered(temporal_env, mqtt_url, tmp_path) -> dict[str, tuple]:
    ctx = make_context(tmp_path, mqtt_url, temporal_env.client)
    worker = build_worker(temporal_env.client, ctx)
    found = [definition(fn) for fn in worker.config()["activities"]]
    return {name: (name, args, ret) for name, args, ret in found if name}


def test_every_stub_is_registered_with_its_signature(registered):
    stubs = {definition(stub)[0]: definition(stub) for stub in ACTIVITIES}
    assert set(stubs) == RECORDED_NAMES
    assert set(registered) == set(stubs), "a registered activity without a stub, or the reverse"
    for name, stub in stubs.items():
        assert registered[name] == stub, f"{name}: the worker's signature is not the contract's"


async def test_a_stub_never_runs():
    """One registered by mistake fails loudly instead of returning None."""
    for stub in ACTIVITIES:
        with pytest.raises(NotImplementedError):
            await stub(None)  # type: ignore[arg-type]


CONVERTER = DataConverter.default.payload_converter


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (
            DeviceReport(ReportOutcome.FAILED, reason="download_failed", attempt=2),
            {
                "outcome": "failed",
                "reason": "download_failed",
                "version": None,
                "batch_id": None,
                "attempt": 2,
            },
        ),
        (
            PushResult(PushOutcome.OFFLINE, TaskState.PUSHED, "offline"),
            {"outcome": "offline", "state": "pushed", "reason": "offline"},
        ),
        (
            FinishBatchRequest("b1", BatchState.IN_PROGRESS),
            {"batch_id": "b1", "state": "in_progress", "note": None, "waiting": None},
        ),
        (
            FinishBatchRequest("b1", BatchState.PAUSED, "paused by the operator"),
            {
                "batch_id": "b1",
                "state": "paused",
                "note": "paused by the operator",
                "waiting": None,
            },
        ),
        (
            FinishBatchRequest("b1", BatchState.IN_PROGRESS, "at the gate", TaskReason.PHASE),
            {"batch_id": "b1", "state": "in_progress", "note": "at the gate", "waiting": "phase"},
        ),
        (
            TaskCheck(TaskState.UPDATED),
            {"state": "updated", "reason": None, "first_progress_at": None},
        ),
    ],
    ids=lambda v: type(v).__name__,
)
def test_enums_travel_as_the_same_strings(value, wire):
    (payload,) = CONVERTER.to_payloads([value])
    assert json.loads(payload.data) == wire
    # What a worker of the previous release sent (plain strings) decodes into the enums.
    (decoded,) = CONVERTER.from_payloads([payload], [type(value)])
    assert decoded == value
    assert [type(v) for v in astuple(decoded)] == [type(v) for v in astuple(value)]


def test_a_carry_of_the_previous_release_decodes():
    """Runs continued as new before `turns_pending` existed carry no such field."""
    old = json.dumps({"prepared": True, "started": 3, "runs": 2}).encode()
    (payload,) = CONVERTER.to_payloads([PacerCarry()])
    payload.data = old
    (carry,) = CONVERTER.from_payloads([payload], [PacerCarry])
    assert (carry.started, carry.runs, carry.turns_pending) == (3, 2, False)
