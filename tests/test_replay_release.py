"""Running installations upgrade: today's workflows replay every release's recorded histories.

Each tests/histories/release-*/ directory was recorded by tests/histories/record_release.py at
that release (its README says which commit). Every file there is replayed in-process, so a new
release's directory adds its cases by being there. A history is also read for what its
scenario is about (a marker, a signal, a timer, how it ended): a file recorded from the wrong
scenario, or one where the interesting path was never taken, fails rather than replays
trivially.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner
from temporalio.workflow import NondeterminismError

from ota.activity_stubs import cancel_tasks, set_batch_state
from ota.contracts import (
    SIGNAL_CANCEL,
    SIGNAL_DEVICES_ARRIVED,
    SIGNAL_DEVICES_ONLINE,
    SIGNAL_ONLINE,
    SIGNAL_PAUSE,
    SIGNAL_PROMOTE,
    SIGNAL_REPORT,
    SIGNAL_RESUME,
    BatchInput,
    BatchProgress,
    CancelTasksRequest,
    FinishBatchRequest,
    TaskCheck,
)
from ota.domain import BatchState, CancelScope
from tests.histories.record_release import SCENARIOS, expected_in
from workflows import WORKFLOWS
from workflows.batch import (
    CAP_PATCH,
    NUDGE_PATCH,
    PAUSE_PATCH,
    PHASE_PATCH,
    RAMP_PATCH,
    STOP_PATCH,
    WINDOW_PATCH,
    BatchWorkflow,
)
from workflows.batch_safety import OPERATOR_PAUSE
from workflows.children import DEVICE_ID_PATCH
from workflows.device import (
    OFFLINE_RECHECK,
    PICKUP_PATCH,
    RECHECK_GRACE,
    RECHECK_PATCH,
    REPUSH_PATCH,
)
from workflows.policies import BATCH_CANCEL_TIMEOUT, CANCEL_HEARTBEAT, local

HISTORIES = Path(__file__).resolve().parent / "histories"
RELEASES = sorted(p for p in HISTORIES.glob("release-*") if p.is_dir())
CASES = [path for release in RELEASES for path in sorted(release.glob("*.json"))]
PAYLOADS = DataConverter.default.payload_converter


def case_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


def replayer() -> Replayer:
    return Replayer(workflows=WORKFLOWS, workflow_runner=UnsandboxedWorkflowRunner())


def decoded(payloads: Any) -> Any:
    return PAYLOADS.from_payloads(payloads.payloads)[0]


@dataclass
class Call:
    """An activity the workflow ran: its name, and its result when local (the marker's)."""

    name: str
    result: Any = None


class Story:
    """What a history says happened, in the words a scenario's check uses."""

    def __init__(self, history: WorkflowHistory) -> None:
        self.events: list[HistoryEvent] = list(history.events)

    def _attrs(self, kind: str) -> list[Any]:
        name = f"{kind}_event_attributes"
        return [getattr(e, name) for e in self.events if e.HasField(name)]  # type: ignore[arg-type]

    @property
    def input(self) -> dict[str, Any]:
        return decoded(self._attrs("workflow_execution_started")[0].input)

    @property
    def next_input(self) -> dict[str, Any]:
        """The input the run continued as new with (its carry: what the next run begins from)."""
        return decoded(self._attrs("workflow_execution_continued_as_new")[0].input)

    @property
    def calls(self) -> list[Call]:
        """Local activities (markers) and regular ones (scheduled), in history order."""
        out = []
        for e in self.events:
            if e.HasField("activity_task_scheduled_event_attributes"):
                out.append(Call(e.activity_task_scheduled_event_attributes.activity_type.name))
            elif e.HasField("marker_recorded_event_attributes"):
                details = e.marker_recorded_event_attributes.details
                if "data" in details:  # a local activity's marker (a patch has "patch-data")
                    result = details.get("result")
                    data = decoded(details["data"])
                    out.append(
                        Call(data["activity_type"], None if result is None else decoded(result))
                    )
        return out

    @property
    def activities(self) -> list[str]:
        return [c.name for c in self.calls]

    def results_of(self, activity: str) -> list[Any]:
        return [c.result for c in self.calls if c.name == activity]

    @property
    def patches(self) -> list[str]:
        return [
            decoded(m.details["patch-data"])["id"]
            for m in self._attrs("marker_recorded")
            if m.marker_name == "core_patch"
        ]

    @property
    def signals(self) -> list[tuple[str, Any]]:
        return [
            (s.signal_name, decoded(s.input) if s.input.payloads else None)
            for s in self._attrs("workflow_execution_signaled")
        ]

    @property
    def signal_names(self) -> list[str]:
        return [name for name, _ in self.signals]

    @property
    def fired_timers(self) -> list[timedelta]:
        """The durations of the timers that fired (not canceled, not left pending)."""
        started = {
            e.timer_started_event_attributes.timer_id: (
                e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
            )
            for e in self.events
            if e.HasField("timer_started_event_attributes")
        }
        return [started[t.timer_id] for t in self._attrs("timer_fired")]

    @property
    def children(self) -> list[str]:
        return [c.workflow_id for c in self._attrs("start_child_workflow_execution_initiated")]

    @property
    def end(self) -> str:
        return self.events[-1].WhichOneof("attributes") or ""

    @property
    def result(self) -> dict[str, Any]:
        assert self.end == "workflow_execution_completed_event_attributes", self.end
        return decoded(self._attrs("workflow_execution_completed")[0].result)

    @property
    def suggested_continue(self) -> bool:
        return any(s.suggest_continue_as_new for s in self._attrs("workflow_task_started"))


def device_result(story: Story) -> tuple[str, str | None, int]:
    r = story.result
    return r["state"], r["reason"], r["attempts"]


def first_push(story: Story) -> str:
    return story.results_of("push")[0]["outcome"]


# --- what each scenario is about (the recorder's SCENARIOS, one check each) -----------------------


def device_happy(s: Story) -> None:
    assert s.activities == ["push"] and s.patches == []
    assert s.signal_names == [SIGNAL_REPORT]
    assert device_result(s) == ("updated", None, 1)


def device_offline_online(s: Story) -> None:
    assert s.activities == ["push", "push"] and first_push(s) == "offline"
    assert s.signal_names == [SIGNAL_ONLINE, SIGNAL_REPORT]
    assert device_result(s) == ("updated", None, 1)


def device_retry(s: Story) -> None:
    assert s.activities == ["push", "push"]
    assert [(n, r["outcome"]) for n, r in s.signals] == [
        (SIGNAL_REPORT, "failed"),
        (SIGNAL_REPORT, "updated"),
    ]
    assert timedelta(minutes=10) in s.fired_timers  # the retry interval
    assert device_result(s) == ("updated", None, 2)


def device_repush_on_reconnect(s: Story) -> None:
    assert s.patches == [REPUSH_PATCH]
    assert s.activities == ["push", "recheck"]
    assert s.signal_names == [SIGNAL_ONLINE, SIGNAL_REPORT]
    assert device_result(s) == ("updated", None, 1)


def device_timeout(s: Story) -> None:
    assert s.patches == [RECHECK_PATCH]
    assert s.activities == ["push", "check_task", "recheck", "finish_task"]
    assert s.results_of("recheck")[0]["outcome"] == "pushed"  # online: it was asked once more
    assert s.fired_timers == [timedelta(minutes=30), RECHECK_GRACE]
    assert s.signal_names == []
    assert device_result(s) == ("failed", "timeout", 1)


def device_timeout_answered(s: Story) -> None:
    assert s.patches == [RECHECK_PATCH]
    assert s.activities == ["push", "check_task", "recheck"]
    assert s.fired_timers == [timedelta(minutes=30)]
    assert s.signal_names == [SIGNAL_REPORT]
    assert device_result(s) == ("updated", None, 1)


def device_cancel_pushed(s: Story) -> None:
    assert first_push(s) == "pushed"
    assert s.activities == ["push", "finish_task"]
    assert s.signal_names == [SIGNAL_CANCEL]
    assert device_result(s) == ("canceled", "canceled", 1)


def device_cancel_offline(s: Story) -> None:
    assert s.activities == ["push", "finish_task"] and first_push(s) == "offline"
    assert s.signal_names == [SIGNAL_CANCEL]
    assert device_result(s) == ("canceled", "canceled", 1)


def device_continued_run1(s: Story) -> None:
    assert s.activities == ["push"] and first_push(s) == "offline"
    assert s.fired_timers == [OFFLINE_RECHECK] and s.suggested_continue
    assert s.end == "workflow_execution_continued_as_new_event_attributes"


def device_continued_run2(s: Story) -> None:
    assert s.input["awaiting_report"] is False and s.input["retries_used"] == 0
    assert s.activities == ["push", "push"] and first_push(s) == "offline"
    assert s.signal_names == [SIGNAL_ONLINE, SIGNAL_REPORT]
    assert device_result(s) == ("updated", None, 1)


def device_paced_turn(s: Story) -> None:
    device_offline_online(s)  # the `online` is the pacer's turn (claim_tasks) this time


def batch_static(s: Story) -> None:
    # An unpaced batch gets the default in-flight cap (OTA_MAX_IN_FLIGHT) since the cap came.
    capped = [CAP_PATCH] if s.input.get("max_in_flight") else []
    assert s.activities[0] == "prepare_batch" and s.patches == [*capped, DEVICE_ID_PATCH]
    assert len(s.children) == 4 and all(c.startswith("device/") for c in s.children)
    assert s.result["counts"] == {"updated": 4}


def batch_cancel_all(s: Story) -> None:
    assert [(n, r["scope"]) for n, r in s.signals] == [(SIGNAL_CANCEL, "all")]
    assert "cancel_tasks" in s.activities and len(s.children) == 2
    assert (s.result["state"], s.result["counts"]) == ("canceled", {"canceled": 2})


def batch_continued_run1(s: Story) -> None:
    assert s.input["carry"] is None and s.input["continue_as_new_every"] == 2
    assert len(s.children) == 2
    assert s.end == "workflow_execution_continued_as_new_event_attributes"


def batch_continued_last(s: Story) -> None:
    carry = s.input["carry"]
    assert (carry["runs"], carry["started"]) == (3, 4)
    assert "prepare_batch" not in s.activities and len(s.children) == 1
    assert (s.result["started"], s.result["counts"]) == (5, {"updated": 5})


def batch_paced_turns(s: Story) -> None:
    assert s.input["rate_per_minute"] == 24
    assert s.signal_names == [SIGNAL_DEVICES_ONLINE]
    turns = [r["turns_given"] for r in s.results_of("claim_tasks")]
    assert sum(turns) == 3 and max(turns) == 2  # bursts of 2: the rate held
    assert len(s.children) == 3 and s.result["counts"] == {"updated": 3}


def batch_scheduled(s: Story) -> None:
    assert s.input["scheduled_at"] and s.input["rate_per_minute"] == 12
    assert s.fired_timers[0] > timedelta(hours=23)  # the schedule, fast-forwarded
    assert s.activities[:2] == ["prepare_batch", "set_batch_state"]
    assert len(s.children) == 2 and s.result["counts"] == {"updated": 2}


def batch_dynamic_policy_canceled(s: Story) -> None:
    assert s.input["policy"] == "dynamic"
    assert [(n, r["scope"]) for n, r in s.signals] == [(SIGNAL_CANCEL, "scheduled")]
    assert len(s.children) == 2  # the second matched after the batch began
    assert "set_batch_state" in s.activities
    assert (s.result["state"], s.result["counts"]) == ("canceled", {"updated": 2})


def batch_dynamic_nudged(s: Story) -> None:
    assert s.input["policy"] == "dynamic" and s.input["dynamic_poll_seconds"] == 3600
    assert s.signal_names == [SIGNAL_DEVICES_ARRIVED, SIGNAL_CANCEL]
    assert NUDGE_PATCH in s.patches
    assert len(s.children) == 2  # the second joined on the nudge, not the hourly poll
    assert (s.result["state"], s.result["counts"]) == ("canceled", {"updated": 2})


def verify_passed(s: Story) -> None:
    assert s.activities == ["prepare_verify", "finish_verify"]
    assert len(s.children) == 2
    assert (s.result["state"], s.result["counts"]) == ("completed", {"updated": 2})


# --- the rollout controls (since release-2026-11-30-rollout) -------------------------------------

CONTINUED = "workflow_execution_continued_as_new_event_attributes"


def batch_paused_run1(s: Story) -> None:
    assert s.input["rate_per_minute"] == 12 and PAUSE_PATCH in s.patches
    assert s.signal_names == [SIGNAL_PAUSE] and len(s.children) == 1
    assert s.activities[-1] == "set_batch_state" and s.end == CONTINUED  # paused, in a fresh run
    carry = s.next_input["carry"]
    assert (carry["paused"], carry["pause_note"], carry["started"]) == (True, OPERATOR_PAUSE, 1)


def batch_resumed_last(s: Story) -> None:
    carry = s.input["carry"]
    assert (carry["paused"], carry["started"]) == (True, 1)
    assert s.signal_names == [SIGNAL_RESUME] and PAUSE_PATCH in s.patches
    assert "prepare_batch" not in s.activities and len(s.children) == 2
    assert (s.result["state"], s.result["started"], s.result["counts"]) == (
        "completed",
        3,
        {"updated": 3},
    )


def batch_stop_paused(s: Story) -> None:
    inp = s.input
    assert (inp["stop_at"], inp["stop_min"], inp["stop_action"]) == (50, 2, "pause")
    assert STOP_PATCH in s.patches and s.signal_names == []  # the rule paused it, no operator
    assert len(s.children) == 2 and s.end == CONTINUED
    carry = s.next_input["carry"]
    assert (carry["paused"], carry["stop_tripped"], carry["started"]) == (True, True, 2)
    assert carry["pause_note"] == "paused: 100% failed after 2 devices, threshold 50%"


def batch_phase_gate_run1(s: Story) -> None:
    assert (s.input["phases"], s.input["promote"]) == ([50], "manual")
    assert PHASE_PATCH in s.patches and len(s.children) == 1  # the first phase: one of two
    assert s.end == CONTINUED  # the gate waits in a fresh run
    carry = s.next_input["carry"]
    assert (carry["phase"], carry["started"], carry["total"]) == (0, 1, 2)


def batch_phase_promoted(s: Story) -> None:
    carry = s.input["carry"]
    assert (s.input["promote"], carry["phase"], carry["started"]) == ("manual", 0, 1)
    assert PHASE_PATCH in s.patches and s.signal_names == [SIGNAL_PROMOTE]
    assert len(s.children) == 1  # the second phase, after the promote
    assert (s.result["phase"], s.result["counts"]) == (1, {"updated": 2})


def batch_phase_auto_promoted(s: Story) -> None:
    carry = s.input["carry"]
    assert (s.input["promote_at"], carry["phase"], carry["started"]) == (100, 0, 1)
    assert PHASE_PATCH in s.patches and s.signal_names == []  # its success opened the gate
    assert len(s.children) == 1
    assert (s.result["phase"], s.result["counts"]) == (1, {"updated": 2})


def batch_window_waited(s: Story) -> None:
    assert s.input["window"] and s.input["window_minutes"] == 60
    assert WINDOW_PATCH in s.patches
    # Held (the tasks' reason), then let go: both recorded before the first claim.
    assert s.activities[:4] == [
        "prepare_batch",
        "set_batch_state",
        "set_batch_state",
        "claim_tasks",
    ]
    assert s.fired_timers[0] > timedelta(hours=2)  # the wait for the window, fast-forwarded
    assert len(s.children) == 2 and s.result["counts"] == {"updated": 2}


def batch_ramp(s: Story) -> None:
    assert (s.input["ramp_base"], s.input["rate_per_minute"]) == (12, 60)
    assert RAMP_PATCH in s.patches
    assert s.fired_timers[0] > timedelta(seconds=3)  # the first gap: 12 a minute
    assert s.result["rate"] == 60  # the ramp rose to the batch's rate
    assert len(s.children) == 3 and s.result["counts"] == {"updated": 3}


def batch_capped(s: Story) -> None:
    assert s.input["max_in_flight"] == 1 and s.input["rate_per_minute"] is None
    assert CAP_PATCH in s.patches
    assert max(len(r["tasks"]) for r in s.results_of("claim_tasks")) == 1  # one at a time
    assert len(s.children) == 3 and s.result["counts"] == {"updated": 3}


def device_pickup_timeout(s: Story) -> None:
    assert s.input["pickup_timeout_minutes"] == 5 and s.patches == [PICKUP_PATCH]
    assert s.activities == ["push", "check_task", "finish_task"]
    assert s.fired_timers == [timedelta(minutes=5)] and s.signal_names == []
    assert device_result(s) == ("failed", "no_response", 1)


CHECKS: dict[str, Callable[[Story], None]] = {
    "device-happy": device_happy,
    "device-offline-online": device_offline_online,
    "device-retry": device_retry,
    "device-repush-on-reconnect": device_repush_on_reconnect,
    "device-timeout": device_timeout,
    "device-timeout-answered": device_timeout_answered,
    "device-cancel-pushed": device_cancel_pushed,
    "device-cancel-offline": device_cancel_offline,
    "device-continued-run1": device_continued_run1,
    "device-continued-run2": device_continued_run2,
    "batch-static": batch_static,
    "batch-cancel-all": batch_cancel_all,
    "batch-continued-run1": batch_continued_run1,
    "batch-continued-last": batch_continued_last,
    "batch-paced-turns": batch_paced_turns,
    "device-paced-turn": device_paced_turn,
    "batch-scheduled": batch_scheduled,
    "batch-dynamic-policy-canceled": batch_dynamic_policy_canceled,
    "batch-dynamic-nudged": batch_dynamic_nudged,
    "verify-passed": verify_passed,
    "batch-paused-run1": batch_paused_run1,
    "batch-resumed-last": batch_resumed_last,
    "batch-stop-paused": batch_stop_paused,
    "batch-phase-gate-run1": batch_phase_gate_run1,
    "batch-phase-promoted": batch_phase_promoted,
    "batch-phase-auto-promoted": batch_phase_auto_promoted,
    "batch-window-waited": batch_window_waited,
    "batch-ramp": batch_ramp,
    "batch-capped": batch_capped,
    "device-pickup-timeout": device_pickup_timeout,
}


def test_every_scenario_the_recorder_makes_has_a_check():
    assert set(CHECKS) == set(SCENARIOS)


def test_each_release_holds_every_scenario_of_its_time():
    assert RELEASES, "no release-* directory of histories"
    for release in RELEASES:
        assert {p.stem for p in release.glob("*.json")} == expected_in(release.name), release.name
        assert (release / "README.md").is_file(), f"{release.name}: which commit recorded it?"


@pytest.mark.parametrize("path", CASES, ids=case_id)
async def test_release_history_replays(path: Path):
    history = load(path)
    CHECKS[path.stem](Story(history))
    await replayer().replay_workflow(history)


# --- the check has teeth: what a refactor could get wrong is a non-determinism error -------------

RENAMED = "renamed-by-a-refactor"


def latest(scenario: str) -> Path:
    return RELEASES[-1] / f"{scenario}.json"


async def fails_to_replay(scenario: str) -> None:
    with pytest.raises(NondeterminismError):
        await replayer().replay_workflow(load(latest(scenario)))


@pytest.mark.parametrize(
    ("scenario", "patch_id"),
    [
        ("device-timeout", "workflows.device.RECHECK_PATCH"),
        ("device-repush-on-reconnect", "workflows.device.REPUSH_PATCH"),
        ("batch-static", "workflows.children.DEVICE_ID_PATCH"),
        ("batch-stop-paused", "workflows.batch_safety.STOP_PATCH"),
        ("batch-phase-gate-run1", "workflows.batch_holds.PHASE_PATCH"),
        ("batch-ramp", "workflows.batch_holds.RAMP_PATCH"),
        ("batch-capped", "workflows.batch_safety.CAP_PATCH"),
        ("device-pickup-timeout", "workflows.device.PICKUP_PATCH"),
    ],
)
async def test_replay_fails_when_a_patch_id_is_spelled_anew(monkeypatch, scenario, patch_id):
    """A patch id moved into a module of policies and renamed: the path it guards is no longer
    taken where the history took it."""
    monkeypatch.setattr(patch_id, RENAMED)
    await fails_to_replay(scenario)


async def test_replay_fails_when_a_local_activity_is_called_by_another_name(monkeypatch):
    """A typed activity call naming another activity than the one the history ran: a contract
    stub renamed."""

    @activity.defn(name="check_task_v2")
    async def check_task(task_id: int) -> TaskCheck:
        raise NotImplementedError

    monkeypatch.setattr("workflows.device.check_task", check_task)
    await fails_to_replay("device-timeout")


async def test_replay_fails_when_activities_run_in_another_order(monkeypatch):
    """The batch's cancel records its state before it cancels the tasks, not after."""

    async def cancel(self: BatchWorkflow, inp: BatchInput, scope: CancelScope) -> BatchProgress:
        await local(set_batch_state, FinishBatchRequest(inp.batch_id, BatchState.CANCELED))
        await workflow.execute_activity(
            cancel_tasks,
            CancelTasksRequest(inp.batch_id, scope),
            start_to_close_timeout=BATCH_CANCEL_TIMEOUT,
            heartbeat_timeout=CANCEL_HEARTBEAT,
        )
        self._set_state(BatchState.CANCELED)
        await self._claim(inp, limit=0, counts=True)
        return self.progress()

    monkeypatch.setattr(BatchWorkflow, "_cancel_batch", cancel)
    await fails_to_replay("batch-cancel-all")


async def test_replay_fails_when_the_pacer_is_deaf_to_promote(monkeypatch):
    """A pacer that drops every `promote` (as one that never knows it waits at a gate would):
    the promoted run waits on where its history started the second phase."""
    never_at_gate = property(lambda self: False, lambda self, value: None)
    monkeypatch.setattr(BatchWorkflow, "_at_gate", never_at_gate, raising=False)
    await fails_to_replay("batch-phase-promoted")


async def test_replay_fails_when_the_pacer_is_deaf_to_pause(monkeypatch):
    """A pacer that drops `pause` (as the code before the pause): the paused run pushes on where
    its history recorded the pause."""

    async def deaf(self: BatchWorkflow, inp: BatchInput) -> None:
        self._want_paused = self._carry.paused

    monkeypatch.setattr(BatchWorkflow, "_follow_pause", deaf)
    await fails_to_replay("batch-paused-run1")
