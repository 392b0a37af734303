"""The fault harness's invariants (bench/fault_checks.py) catch what they are for: each broken
rule on a made-up batch gives one violation naming the device."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

from bench.fault_checks import check_tasks

T0 = 1_800_000_000.0  # when every device's first push was seen


def task(state: str, recorded: str, attempts: int = 1, reason: str | None = None) -> dict:
    final_at = datetime.fromtimestamp(T0 + 60, timezone.utc)
    return {
        "state": state, "reason": reason, "attempts": attempts, "target_version": "2.0.0",
        "updated_at": final_at, "recorded": recorded,
    }  # fmt: skip


def check(
    tasks: dict, truth: dict, pushes: dict, passes: list[float], again: Counter | None = None
) -> list[str]:
    first = {name: T0 for name in tasks}
    return check_tasks(tasks, truth, Counter(pushes), first, passes, len(tasks), again)


def test_a_batch_that_went_right_has_no_violation() -> None:
    tasks = {"a": task("updated", "2.0.0"), "b": task("failed", "1.0.0", reason="update_failed")}
    assert check(tasks, {"a": "2.0.0", "b": "1.0.0"}, {"a": 1, "b": 1}, []) == []


def test_a_final_state_the_device_contradicts_is_named() -> None:
    tasks = {"a": task("failed", "1.0.0", reason="timeout"), "b": task("updated", "2.0.0")}
    found = check(tasks, {"a": "2.0.0", "b": "1.0.0"}, {"a": 1, "b": 1}, [])
    assert "a: task failed (timeout) but the device runs 2.0.0 (target 2.0.0)" in found
    assert "a: the platform records 1.0.0, the device runs 2.0.0" in found
    assert "b: task updated but the device runs 1.0.0 (target 2.0.0)" in found


def test_an_active_task_is_named() -> None:
    found = check({"a": task("in_upgrade", "1.0.0")}, {"a": "1.0.0"}, {"a": 1}, [])
    assert found == ["a: task in_upgrade is still active"]


def test_only_passes_while_the_task_was_in_flight_allow_another_push() -> None:
    tasks = {"a": task("updated", "2.0.0")}
    during, before, after = T0 + 30, T0 - 100, T0 + 200
    assert check(tasks, {"a": "2.0.0"}, {"a": 2}, [during]) == []
    found = check(tasks, {"a": "2.0.0"}, {"a": 2}, [before, after])
    assert found == [
        "a: pushed 2 times for 1 attempts, 0 reconciliation passes while in flight"
        " and 0 asked again"
    ]


def test_a_push_its_workflow_sent_again_is_allowed_once_per_time_the_worker_says_so(
    tmp_path,
) -> None:
    """A reconnect on the old version, or the last look before a timeout: the worker logs each
    push it sends again (activities/push.py), and each allows one more push."""
    from activities.push import ASKED_AGAIN
    from bench.fault_checks import asked_again

    log = tmp_path / "worker.log"
    log.write_text(
        f"2026-11-30 12:00:00,000 INFO activities.push: {ASKED_AGAIN}: pk1/a asked again\n"
        "2026-11-30 12:00:01,000 INFO activities.push: something else about pk1/a\n"
    )
    again = asked_again(log)
    assert again == {"a": 1}
    tasks = {"a": task("updated", "2.0.0")}
    assert check(tasks, {"a": "2.0.0"}, {"a": 2}, [], again) == []
    assert check(tasks, {"a": "2.0.0"}, {"a": 3}, [], again) != []
