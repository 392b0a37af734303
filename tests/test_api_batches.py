"""Verifications, batches, tasks and cancel over the API, on the real Temporal dev server.

No worker polls these tests' task queues: a started workflow waits, which is all the API needs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session

from ota.db.engine import session_scope
from ota.db.models import Batch, Task
from tests.test_api import login
from tests.test_api_support import api_client, api_settings, assert_problem, firmware, fleet


@pytest.fixture
async def client(tmp_path, database_url, temporal_env):
    address = temporal_env.client.service_client.config.target_host
    async with api_client(api_settings(tmp_path, database_url, address)) as c:
        yield c


def _in(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


# Batch Update: each seed choice out of range once; the problem names the body's field.
BATCH_CASES = [
    ({"rate_per_minute": 9}, "rate_per_minute", "between 10 and 1000"),
    ({"MaximumPerMinute": 1001}, "rate_per_minute", "between 10 and 1000"),
    ({"timeout_minutes": 0}, "timeout_minutes", "between 1 and 1440"),
    ({"TimeoutInMinutes": 1441}, "timeout_minutes", "between 1 and 1440"),
    ({"max_retries": 3}, "max_retries", "1, 2 or 5"),
    ({"RetryCount": 0}, "max_retries", "1, 2 or 5"),
    ({"retry_interval": 15}, "retry_interval", "none, 0, 10m, 30m, 1h, 24h"),
    ({"target": "phased", "percent": 0}, "percent", "between 1 and 100"),
    ({"TargetSelection": "GRAY", "GrayPercent": 101}, "percent", "between 1 and 100"),
    ({"target": "phased"}, "percent", "required"),
    ({"percent": 10}, "percent", "only a phased batch"),
    ({"target": "selected"}, "device_names", "needs one or more"),
    ({"TargetSelection": "SPECIFIC", "TargetDeviceName": ["nobody"]}, "device_names", "nobody"),
    ({"device_names": ["dev-0000"]}, "device_names", "only with --target selected"),
    ({"target": "most"}, "target", "all, selected or phased"),
    ({"TargetSelection": "GROUP"}, "target", "groups are not supported"),
    ({"policy": "dynamic", "target": "phased", "percent": 5}, "target", "dynamic batch"),
    ({"policy": "sometimes"}, "policy", "static or dynamic"),
    ({"scheduled_at": _in(minutes=1)}, "scheduled_at", "5 minutes and 7 days"),
    (
        {"ScheduleTime": int((datetime.now(UTC) + timedelta(days=8)).timestamp() * 1000)},
        "scheduled_at",
        "5 minutes and 7 days",
    ),
    ({"ScheduleTime": -(2**101)}, "scheduled_at", "5 minutes and 7 days"),  # a 500 once (fuzz)
    ({"scheduled_at": "2030-01-01T10:00:00"}, "scheduled_at", "time zone"),
    ({"scheduled_at": "tomorrow"}, "scheduled_at", "ISO 8601"),
    ({"policy": "dynamic", "scheduled_at": _in(hours=1)}, "scheduled_at", "only a static"),
    ({"src_versions": []}, "src_versions", "required for a full firmware"),
    ({"SrcVersion": "2.0.0"}, "src_versions", "target version"),
    ({"src_versions": ["Bad"]}, "src_versions", "lowercase"),
    ({"rate_per_minute": "fast"}, "rate_per_minute", "integer"),
    ({"stop_at": 0}, "stop_at", "between 1 and 100 percent"),
    ({"stop_at": 20, "stop_min": 0}, "stop_min", "between 1 and 100000 devices"),
    ({"stop_at": 20, "stop_on": "rejected"}, "stop_on", "all, failed or timeout"),
    ({"stop_at": 20, "stop_action": "halt"}, "stop_action", "pause or cancel"),
    ({"stop_min": 5}, "stop_at", "is required with"),
    ({"max_in_flight": 0}, "max_in_flight", "between 1 and 100000 devices"),
    ({"max_in_flight": 100_001}, "max_in_flight", "between 1 and 100000 devices"),
    ({"max_in_flight": "many"}, "max_in_flight", "integer"),
    ({"rollback_firmware": 1}, "rollback_firmware", "requires stop_at"),
    ({"stop_at": 20, "rollback_firmware": 0}, "rollback_firmware", "between 1 and 2147483647"),
    ({"stop_at": 20, "rollback_firmware": 2**31 - 1}, "rollback_firmware", "does not exist"),
    ({"GrayPercentage": 5}, "GrayPercentage", "Extra inputs"),
]


async def test_every_batch_rule_is_a_problem_naming_the_field(client):
    pk = await fleet(client, versions=["1.0.0", "1.0.0", "1.1.0"])
    fw = await firmware(client, pk)
    url = f"/api/v1/firmware/{fw['id']}/batches"
    for change, field, detail in BATCH_CASES:
        body = {"src_versions": ["1.0.0"], **change}
        if "SrcVersion" in change:
            del body["src_versions"]
        problem = assert_problem(await client.post(url, json=body), 422, field)
        assert detail in problem["detail"], (change, problem)
    problem = assert_problem(await client.post(url, json={"MaximumPerMinute": 5}), 422)
    assert problem["errors"] == [
        {
            "field": "rate_per_minute",
            "alias": "MaximumPerMinute",
            "detail": "must be between 10 and 1000 devices per minute",
        }
    ]
    assert_problem(await client.post("/api/v1/firmware/999/batches", json={}), 404)
    unverified = await firmware(client, pk, "2.1.0", verified=False)
    r = await client.post(
        f"/api/v1/firmware/{unverified['id']}/batches", json={"SrcVersion": "1.0.0"}
    )
    assert "verify it first" in assert_problem(r, 409, "firmware")["detail"]
    assert (await client.get("/api/v1/batches")).json()["items"] == []  # nothing was created


async def test_a_dry_run_answers_the_numbers_and_creates_nothing(client, temporal_env):
    pk = await fleet(client, versions=["1.0.0"] * 4 + ["1.1.0", "2.0.0"])
    fw = await firmware(client, pk)
    url = f"/api/v1/firmware/{fw['id']}/batches?dry_run=true"
    body = {
        "SrcVersion": ["1.0.0", "1.1.0"],
        "TargetSelection": "GRAY",
        "GrayPercent": 50,
        "MaximumPerMinute": 60,
        "pickup_timeout_minutes": 20,
    }
    r = await client.post(url, json=body)
    assert r.status_code == 200, r.text
    p = r.json()
    assert (p["dry_run"], p["matching"], p["percent"], p["targets"]) == (True, 5, 50, 2)
    assert sum(p["by_source_version"].values()) == 2
    assert (p["skipped"], p["offline"], p["rate_per_minute"], p["push_minutes"]) == (
        1,
        2,  # both targets: registered, never connected
        60,
        round(1 / 60, 1),
    )
    assert (p["phases"], p["gates"], p["windows"]) == ([], 0, 0)
    assert p["eta"].startswith("last push ~") and p["eta_notes"] == []
    assert (await client.get("/api/v1/batches")).json()["items"] == []
    assert [w async for w in temporal_env.client.list_workflows(f'OtaProductKey = "{pk}"')] == []
    # What create refuses, the dry run refuses the same way, naming the same field.
    for change, field, detail in BATCH_CASES:
        change = {"src_versions": ["1.0.0"], **change}
        if "SrcVersion" in change:
            del change["src_versions"]
        problem = assert_problem(await client.post(url, json=change), 422, field)
        assert detail in problem["detail"], (change, problem)
    assert_problem(await client.post(url, json={"pickup_timeout_minutes": 0}), 422)
    assert_problem(await client.post("/api/v1/firmware/999/batches?dry_run=1", json={}), 404)
    assert (await client.get("/api/v1/batches")).json()["items"] == []


async def test_a_phased_batch_by_its_cloud_names_then_cancel(client, temporal_env):
    pk = await fleet(client, versions=["1.0.0"] * 4)
    fw = await firmware(client, pk)
    body = {
        "SrcVersion": ["1.0.0"],
        "TargetSelection": "GRAY",
        "GrayPercent": 50,
        "MaximumPerMinute": 100,
        "RetryInterval": 10,
        "RetryCount": 2,
        "TimeoutInMinutes": 30,
    }
    r = await client.post(f"/api/v1/firmware/{fw['id']}/batches", json=body)
    assert r.status_code == 201, r.text
    batch = r.json()
    assert (batch["target"], batch["percent"], batch["rate_per_minute"]) == ("phased", 50, 100)
    assert (batch["retry_interval_minutes"], batch["max_retries"], batch["timeout_minutes"]) == (
        10,
        2,
        30,
    )
    assert batch["workflow_url"] == (
        f"http://127.0.0.1:8233/namespaces/default/workflows/batch-{batch['id']}"
    )
    handle = temporal_env.client.get_workflow_handle(batch["workflow_id"])
    assert (await handle.describe()).status.name == "RUNNING"
    assert (await client.get(f"/api/v1/batches/{batch['id']}")).json()["id"] == batch["id"]
    listed = (await client.get(f"/api/v1/firmware/{fw['id']}/batches")).json()["items"]
    assert [b["id"] for b in listed] == [batch["id"]]

    cancel = f"/api/v1/batches/{batch['id']}/cancel"
    assert_problem(await client.post(cancel, json={"CancelUnconfirmedTask": True}), 422)
    assert_problem(
        await client.post(cancel, json={"CancelQueuedTask": True}), 422, "CancelQueuedTask"
    )
    assert_problem(await client.post(cancel, json={"scope": "some"}), 422, "scope")
    assert_problem(await client.post("/api/v1/batches/nope/cancel"), 404)
    flags = {"CancelQueuedTask": True, "CancelNotifiedTask": True, "CancelInProgressTask": True}
    r = await client.post(cancel, json=flags)
    assert r.status_code == 200 and r.json()["scope"] == "all"
    signals = [
        e.workflow_execution_signaled_event_attributes
        async for e in handle.fetch_history_events()
        if e.HasField("workflow_execution_signaled_event_attributes")
    ]
    assert [s.signal_name for s in signals] == ["cancel"]
    await handle.terminate("test done")


async def test_scheduled_and_dynamic_batches_and_their_rules(client, temporal_env):
    pk = await fleet(client, versions=["1.0.0", "1.1.0"])
    fw = await firmware(client, pk)
    url = f"/api/v1/firmware/{fw['id']}/batches"
    at = datetime.now(UTC) + timedelta(hours=2)
    r = await client.post(
        url, json={"SrcVersion": "1.0.0", "ScheduleTime": int(at.timestamp() * 1000)}
    )
    assert r.status_code == 201, r.text
    scheduled = r.json()
    assert scheduled["state"] == "scheduled" and scheduled["state_label"] == "Scheduled"
    r = await client.post(f"/api/v1/batches/{scheduled['id']}/cancel")  # default: scheduled only
    assert r.json()["scope"] == "scheduled"

    dynamic = (await client.post(url, json={"policy": "dynamic", "SrcVersion": "1.1.0"})).json()
    r = await client.post(url, json={"policy": "dynamic", "src_versions": ["1.0.0"]})
    assert "cancel it first" in assert_problem(r, 409, "policy")["detail"]
    for b in (scheduled, dynamic):
        await temporal_env.client.get_workflow_handle(b["workflow_id"]).terminate("test done")


async def test_verification_rules_and_start(client, temporal_env):
    pk = await fleet(client, versions=["1.0.0", "2.0.0"])
    fw = await firmware(client, pk, verified=False)
    url = f"/api/v1/firmware/{fw['id']}/verifications"
    for body, field, detail in [
        (
            {"TargetDeviceName": ["dev-0000"], "TimeoutInMinutes": 0},
            "timeout_minutes",
            "1 and 1440",
        ),
        ({"device_names": ["dev-0000"], "timeout_minutes": 1441}, "timeout_minutes", "1 and 1440"),
        ({"device_names": []}, "device_names", "1 to 100 devices"),
        ({"device_names": ["ghost-01"]}, "device_names", "not a device"),
        ({"device_names": ["dev-0001"]}, "device_names", "already runs 2.0.0"),
        ({"device_names": "dev-0000", "timeout_minutes": "soon"}, "timeout_minutes", "integer"),
    ]:
        problem = assert_problem(await client.post(url, json=body), 422, field)
        assert detail in problem["detail"], (body, problem)
    assert_problem(
        await client.post(
            "/api/v1/firmware/999/verifications", json={"device_names": ["dev-0000"]}
        ),
        404,
    )
    r = await client.post(url, json={"TargetDeviceName": "dev-0000", "TimeoutInMinutes": 5})
    assert r.status_code == 201, r.text
    verify = r.json()
    assert verify["kind"] == "verify" and verify["workflow_id"] == f"verify-{verify['id']}"
    assert verify["workflow_url"].endswith(f"/workflows/verify-{verify['id']}")
    assert (await client.get(f"/api/v1/firmware/{fw['id']}")).json()["state"] in (
        "unverified",
        "verifying",
    )
    await temporal_env.client.get_workflow_handle(verify["workflow_id"]).terminate("test done")


async def test_tasks_filter_by_state_and_reason_page_by_page(client, temporal_env):
    pk = await fleet(client, versions=["1.0.0"] * 5)
    fw = await firmware(client, pk)
    r = await client.post(
        f"/api/v1/firmware/{fw['id']}/batches",
        json={"SrcVersion": "1.0.0", "scheduled_at": _in(days=1)},
    )
    batch = r.json()
    # No worker runs here: write the tasks its prepare step would, in the states the seed shows.
    engine = client.app.state.ctx.engine  # type: ignore[attr-defined]
    rows = [
        ("to_be_pushed", "offline"),
        ("to_be_pushed", "scheduled"),
        ("to_be_pushed", "rate_limited"),
        ("failed", "timeout"),
        ("updated", None),
    ]
    with Session(engine) as session:
        for i, (state, reason) in enumerate(rows):
            session.add(
                Task(
                    batch_id=batch["id"],
                    device_id=i + 1,
                    product_key=pk,
                    device_name=f"dev-{i:04d}",
                    module="default",
                    from_version="1.0.0",
                    target_version="2.0.0",
                    state=state,
                    reason=reason,
                )
            )
        session.commit()
    tasks_url = f"/api/v1/batches/{batch['id']}/tasks"
    page = (await client.get(tasks_url, params={"limit": 2})).json()
    assert [t["device_name"] for t in page["items"]] == ["dev-0000", "dev-0001"]
    rest = (await client.get(tasks_url, params={"after_id": page["next_after_id"]})).json()
    assert len(rest["items"]) == 3 and rest["next_after_id"] is None
    labels = [t["label"] for t in page["items"] + rest["items"]]
    when = datetime.fromisoformat(batch["scheduled_at"]).astimezone(UTC)
    assert labels == [
        "To Be Pushed (Device Offline)",
        f"To Be Pushed (Timing: {when:%Y/%m/%d %H:%M:%S})",
        "To Be Pushed",
        "Update Failed (Timed out)",
        "Updated",
    ]
    assert page["items"][0]["workflow_url"].endswith(f"/workflows/device%2F{pk}%2Fdev-0000")
    r = await client.get(tasks_url, params={"state": "to_be_pushed", "reason": "offline"})
    assert [t["device_name"] for t in r.json()["items"]] == ["dev-0000"]
    r = await client.get(tasks_url, params={"reason": "timeout"})
    assert [t["state"] for t in r.json()["items"]] == ["failed"]
    assert_problem(await client.get(tasks_url, params={"state": "lost"}), 422, "state")
    assert_problem(await client.get(tasks_url, params={"reason": "bored"}), 422, "reason")
    assert_problem(await client.get(tasks_url, params={"limit": 0}), 422, "limit")
    assert_problem(await client.get("/api/v1/batches/nope/tasks"), 404)
    shown = (await client.get(f"/api/v1/batches/{batch['id']}")).json()
    assert shown["counts"] == {"to_be_pushed": 3, "failed": 1, "updated": 1}
    await temporal_env.client.get_workflow_handle(batch["workflow_id"]).terminate("test done")


async def test_without_temporal_nothing_is_registered(tmp_path, database_url):
    """503, and no batch left behind without a workflow."""
    settings = api_settings(tmp_path, database_url, "127.0.0.1:1")
    async with api_client(settings, raise_app_exceptions=False) as client:
        pk = await fleet(client, versions=["1.0.0"])
        fw = await firmware(client, pk)
        r = await client.post(f"/api/v1/firmware/{fw['id']}/batches", json={"SrcVersion": "1.0.0"})
        assert "Temporal is not reachable" in assert_problem(r, 503)["detail"]
        unverified = await firmware(client, pk, "2.1.0", verified=False)
        r = await client.post(
            f"/api/v1/firmware/{unverified['id']}/verifications",
            json={"device_names": ["dev-0000"]},
        )
        assert_problem(r, 503)
        assert (await client.get("/api/v1/batches")).json()["items"] == []


async def test_pause_and_resume_signal_the_batch(client, temporal_env):
    pk = await fleet(client, versions=["1.0.0"] * 2)
    fw = await firmware(client, pk)
    body = {"src_versions": ["1.0.0"], "rate_per_minute": 10, "stop_at": 20, "stop_min": 20}
    r = await client.post(f"/api/v1/firmware/{fw['id']}/batches", json=body)
    assert r.status_code == 201, r.text
    batch = r.json()
    assert (batch["stop_at"], batch["stop_min"], batch["stop_on"], batch["stop_action"]) == (
        20,
        20,
        "all",
        "pause",
    )
    assert batch["state_note"] is None
    for action in ("pause", "resume"):
        r = await client.post(f"/api/v1/batches/{batch['id']}/{action}")
        assert r.status_code == 200, r.text
        assert r.json()["signal"] == action
    assert_problem(await client.post("/api/v1/batches/nope/pause"), 404)
    handle = temporal_env.client.get_workflow_handle(batch["workflow_id"])
    signals = [
        e.workflow_execution_signaled_event_attributes.signal_name
        async for e in handle.fetch_history_events()
        if e.HasField("workflow_execution_signaled_event_attributes")
    ]
    assert signals == ["pause", "resume"]

    # What a paused batch shows (no worker here: the row as the workflow writes it).
    note = "paused: 23% failed after 40 devices, threshold 20%"
    with session_scope(client.app.state.ctx.engine) as session:
        row = session.get(Batch, batch["id"])
        row.state, row.state_note = "paused", note
    shown = (await client.get(f"/api/v1/batches/{batch['id']}")).json()
    assert (shown["state"], shown["state_label"], shown["state_note"]) == ("paused", "Paused", note)
    await login(client)
    page = (await client.get(f"/batches/{batch['id']}")).text
    assert note in page and 'data-signal="resume"' in page and 'data-signal="pause"' not in page
    assert ">Batch paused</option>" in page  # the reason filter
    await handle.terminate("test done")
    r = await client.post(f"/api/v1/batches/{batch['id']}/pause")
    assert "already" in assert_problem(r, 409)["detail"]


async def test_promote_signals_a_phased_batch_and_refuses_others(client, temporal_env):
    pk = await fleet(client, versions=["1.0.0"] * 2)
    fw = await firmware(client, pk)
    url = f"/api/v1/firmware/{fw['id']}/batches"
    body = {"src_versions": ["1.0.0"], "phases": [50, 100], "promote": "manual"}
    phased = (await client.post(url, json=body)).json()
    plain = (await client.post(url, json={"src_versions": ["1.0.0"], "rate_per_minute": 10})).json()
    assert phased["phases"] == [50, 100] and not plain["phases"]

    await login(client)
    page = (await client.get(f"/batches/{phased['id']}")).text
    assert 'data-signal="promote"' in page
    # The reasons a phased batch's and a window batch's devices wait for, in the filter.
    assert ">Waiting for the phase gate</option>" in page
    assert ">Waiting for the maintenance window</option>" in page
    assert 'data-signal="promote"' not in (await client.get(f"/batches/{plain['id']}")).text

    # No worker polls here: the pacer cannot say whether it waits at a gate, so the promote goes
    # unchecked and the receipt says so.
    r = await client.post(f"/api/v1/batches/{phased['id']}/promote")
    assert r.status_code == 200, r.text  # as pause, resume and cancel answer
    assert (r.json()["batch_id"], r.json()["signal"], r.json()["at_gate"]) == (
        phased["id"],
        "promote",
        False,
    )
    handle = temporal_env.client.get_workflow_handle(phased["workflow_id"])
    signals = [
        e.workflow_execution_signaled_event_attributes.signal_name
        async for e in handle.fetch_history_events()
        if e.HasField("workflow_execution_signaled_event_attributes")
    ]
    assert signals == ["promote"]

    r = await client.post(f"/api/v1/batches/{plain['id']}/promote")
    assert "has no phases" in assert_problem(r, 409, "batch")["detail"]
    assert_problem(await client.post("/api/v1/batches/nope/promote"), 404)
    await handle.terminate("test done")
    r = await client.post(f"/api/v1/batches/{phased['id']}/promote")
    assert "already" in assert_problem(r, 409)["detail"]
    with session_scope(client.app.state.ctx.engine) as session:
        session.get(Batch, phased["id"]).state = "completed"
    r = await client.post(f"/api/v1/batches/{phased['id']}/promote")
    assert "is already completed" in assert_problem(r, 409, "batch")["detail"]
    page = (await client.get(f"/batches/{phased['id']}")).text
    assert 'data-signal="promote"' not in page
    await temporal_env.client.get_workflow_handle(plain["workflow_id"]).terminate("test done")
