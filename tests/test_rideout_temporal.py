"""The Temporal server SIGKILLed and restarted on the same database: the bridge's signals wait
for it (and the acks of their messages wait with them), the API answers 503 meanwhile, and the
worker rides it out. Each test runs a dev server of its own, on a file database."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from sqlmodel import Session
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from ota import protocol
from ota.bridge import Bridge
from ota.contracts import DeviceReport, device_workflow_id
from ota.db.models import Batch
from tests.fixtures.outage import TemporalServer
from tests.linkkit.seed import seed_fleet, tasks
from tests.test_bridge import bridge_settings, publisher, running, until
from tests.test_bridge_signals import WaitForReport
from tests.test_e2e import (
    add_test_firmware,
    reported,
    start_fleet_batch,
    task_states,
    wait_for,
)

RESULT_SECONDS = 60  # a workflow's result once Temporal is back

# Each test takes a service away and gives it back: 20 to 100 s.
pytestmark = pytest.mark.slow


@contextlib.asynccontextmanager
async def report_workflows(
    server: TemporalServer, pk: str, names: list[str]
) -> AsyncIterator[dict[str, WorkflowHandle]]:
    """A worker (in this process: it must ride the outage out too) and one stand-in device
    workflow per device, waiting for its report."""
    client = await Client.connect(server.address)
    queue = f"test-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[WaitForReport],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        yield {
            dn: await client.start_workflow(
                WaitForReport.run,
                id=device_workflow_id(pk, dn),
                task_queue=queue,
                execution_timeout=timedelta(minutes=5),
            )
            for dn in names
        }


def connector(server: TemporalServer):  # type: ignore[no-untyped-def]
    """What `ota bridge` passes: connect when the first signal is due."""

    async def connect() -> Client:
        return await Client.connect(server.address)

    return connect


async def report(device, pk: str, good: str, bad: str) -> None:  # type: ignore[no-untyped-def]
    """`good` installed 2.0.0; `bad` failed to verify it (a report the database does not keep)."""
    await device.publish(protocol.inform_topic(pk, good), protocol.encode_inform("1", "2.0.0"), 1)
    await device.publish(protocol.progress_topic(pk, bad), protocol.encode_progress("2", -3), 1)


async def results(handles: dict[str, WorkflowHandle]) -> dict[str, DeviceReport]:
    values = await asyncio.wait_for(
        asyncio.gather(*(h.result() for h in handles.values())), RESULT_SECONDS
    )
    return dict(zip(handles, values, strict=True))


async def signalled(handle: WorkflowHandle) -> int:
    history = await handle.fetch_history()
    return sum(e.HasField("workflow_execution_signaled_event_attributes") for e in history.events)


async def test_signals_wait_for_a_restarted_temporal_and_the_acks_wait_with_them(
    own_temporal: TemporalServer, sqlite_engine, mqtt_url, tmp_path
):
    fleet = seed_fleet(sqlite_engine, 2)
    pk, (good, bad) = fleet.product_key, fleet.names
    settings = bridge_settings(tmp_path, mqtt_url)
    bridge = Bridge(
        settings, sqlite_engine, connector(own_temporal), session_expiry=60, products=[pk]
    )
    async with (
        report_workflows(own_temporal, pk, [good, bad]) as handles,
        running(bridge),
        publisher(mqtt_url) as device,
    ):
        own_temporal.kill()
        await report(device, pk, good, bad)
        # Recorded at once (the console shows it), but neither signalled nor acked.
        await until(lambda: tasks(sqlite_engine, fleet.batch_id)[good].state == "updated")
        await until(lambda: bridge.stats["signal_retries"] > 0, 30, "a signal waiting")
        await asyncio.sleep(5)  # a few tries while Temporal is away
        assert bridge.stats["flushes"] == 0, "a flush acked its messages before its signals"
        own_temporal.start()
        got = await results(handles)
        assert got == {
            good: DeviceReport("updated", version="2.0.0", batch_id=fleet.batch_id),
            bad: DeviceReport("failed", reason="verify_failed", batch_id=fleet.batch_id, attempt=1),
        }
        await until(lambda: bridge.stats["flushes"] >= 1, what="the flush acked")
        assert [await signalled(h) for h in handles.values()] == [1, 1]
    assert bridge.stats["signal_outages"] == 1  # one log line for the outage, not one per try
    assert bridge.stats["signal_errors"] == bridge.stats["signals_skipped"] == 0
    assert bridge.stats["signals"] == 2


async def test_a_bridge_that_dies_while_temporal_is_away_gets_the_messages_again(
    own_temporal: TemporalServer, sqlite_engine, mqtt_url, tmp_path
):
    """The failed report lives only in its signal: the broker must hand it to the next bridge."""
    fleet = seed_fleet(sqlite_engine, 2)
    pk, (good, bad) = fleet.product_key, fleet.names
    settings = bridge_settings(tmp_path, mqtt_url)
    first = Bridge(
        settings, sqlite_engine, connector(own_temporal), session_expiry=60, products=[pk]
    )
    async with report_workflows(own_temporal, pk, [bad]) as handles:
        async with running(first), publisher(mqtt_url) as device:
            own_temporal.kill()
            await report(device, pk, good, bad)
            await until(lambda: first.stats["signal_retries"] > 0, 30, "a signal waiting")
        # `first` is gone without acking; Temporal comes back; a new bridge takes the session.
        own_temporal.start()
        second = Bridge(
            settings, sqlite_engine, connector(own_temporal), session_expiry=60, products=[pk]
        )
        async with running(second):
            got = await results(handles)
            assert second.stats["received"] >= 2, "the broker did not redeliver"
    assert got == {
        bad: DeviceReport("failed", reason="verify_failed", batch_id=fleet.batch_id, attempt=1)
    }


async def test_an_updated_report_redelivered_after_a_bridge_crash_is_signalled(
    own_temporal: TemporalServer, sqlite_engine, mqtt_url, tmp_path
):
    fleet = seed_fleet(sqlite_engine, 1)
    pk, (good,) = fleet.product_key, fleet.names
    settings = bridge_settings(tmp_path, mqtt_url)
    first = Bridge(
        settings, sqlite_engine, connector(own_temporal), session_expiry=60, products=[pk]
    )
    async with report_workflows(own_temporal, pk, [good]) as handles:
        async with running(first), publisher(mqtt_url) as device:
            own_temporal.kill()
            topic = protocol.inform_topic(pk, good)
            await device.publish(topic, protocol.encode_inform("1", "2.0.0"), 1)
            await until(lambda: first.stats["signal_retries"] > 0, 30, "a signal waiting")
        own_temporal.start()
        second = Bridge(
            settings, sqlite_engine, connector(own_temporal), session_expiry=60, products=[pk]
        )
        async with running(second):
            await until(lambda: second.stats["received"] >= 1, 20, "the redelivery")
            got = await asyncio.wait_for(handles[good].result(), 15)
    assert got.outcome == "updated"


async def test_the_api_answers_503_while_temporal_is_away_and_recovers_without_restart(
    own_temporal: TemporalServer, ota_processes
):
    """A batch cannot start while Temporal is down: 503 with a problem detail, nothing left
    registered; once Temporal is back the same API process (and Temporal client) starts it."""
    stack = ota_processes
    stack.env["OTA_TEMPORAL_ADDRESS"] = own_temporal.address
    fleet = seed_fleet(stack.context().engine, 1, target="3.0.0", task_state=None)
    firmware_id = add_test_firmware(stack, fleet.product_key)  # 2.0.0, needs no verification
    stack.start("api")
    url = f"http://127.0.0.1:{stack.env['OTA_HTTP_PORT']}/api/v1"
    body = {"src_versions": ["1.0.0"], "timeout_minutes": 5}
    create = f"/firmware/{firmware_id}/batches"
    auth = {"Authorization": f"Bearer {stack.env['OTA_API_TOKEN']}"}
    async with httpx.AsyncClient(base_url=url, headers=auth, timeout=60) as http:
        first = await http.post(create, json=body)  # the API's client is connected now
        assert first.status_code == 201, first.text
        before = (await http.get("/batches")).json()
        own_temporal.kill()
        down = await http.post(create, json=body)
        assert down.status_code == 503, down.text
        assert down.headers["content-type"] == "application/problem+json"
        assert "Temporal is not reachable" in down.json()["detail"]
        assert down.headers["retry-after"]
        assert (await http.get("/batches")).json() == before, "a batch without a workflow"
        own_temporal.start()
        up = await http.post(create, json=body)
        assert up.status_code == 201, up.text


async def test_a_batch_rides_out_a_temporal_restart_with_real_worker_and_bridge(
    own_temporal: TemporalServer, ota_processes, mqtt_url
):
    """SIGKILL the dev server mid-batch (pushes paced, devices reporting), keep it down 15 s,
    restart it on the same file: the same worker and bridge processes finish the batch, every
    device updated and pushed once. The timeout is 30 min: a lost `updated` signal would hold
    its device workflow, and the batch, far beyond this test's wait."""
    stack = ota_processes
    stack.env["OTA_TEMPORAL_ADDRESS"] = own_temporal.address
    pk, devices = f"tmp{uuid.uuid4().hex[:8]}", 40
    for name in ("worker", "bridge", "api"):  # the api serves the downloads
        stack.start(name)
    run = await start_fleet_batch(
        stack, mqtt_url, pk, devices, ["--install-seconds", "2"], rate_per_minute=60,
        timeout_minutes=30,
    )  # fmt: skip
    ctx, batch_id, counter = run.ctx, run.batch_id, run.counter
    await wait_for(lambda: sum(counter.pushes.values()) >= 10, 60, "10 devices pushed")
    own_temporal.kill()
    at_kill = task_states(ctx.engine, batch_id)
    await asyncio.sleep(15)
    assert stack.alive("worker") and stack.alive("bridge"), "a process exited with Temporal"
    own_temporal.start()
    await wait_for(
        lambda: Session(ctx.engine).get(Batch, batch_id).state == "completed",
        180,
        f"batch completed (at kill: {dict(at_kill)})",
        interval=2,
    )
    assert task_states(ctx.engine, batch_id) == Counter({"updated": devices})
    assert reported(ctx.engine, pk, "2.0.0") == devices
    assert len(counter.pushes) == devices and set(counter.pushes.values()) == {1}
    assert at_kill["updated"] < devices, f"killed too late to prove anything: {at_kill}"
    assert stack.alive("worker") and stack.alive("bridge") and stack.alive("api")
    bridge_log = stack.log("bridge")  # one line for the outage, not one per signal or try
    assert bridge_log.count("Temporal unavailable") == 1, bridge_log[-3000:]
    assert bridge_log.count("Temporal reachable again") == 1
    run.listening.cancel()


async def test_a_worker_started_before_temporal_waits_for_it(
    own_temporal: TemporalServer, ota_processes
):
    """`ota worker` used to exit when Temporal was not up yet; now it waits and then polls."""
    stack = ota_processes
    stack.env["OTA_TEMPORAL_ADDRESS"] = own_temporal.address
    own_temporal.kill()
    stack.start("worker")
    await wait_for(lambda: "cannot connect to Temporal" in stack.log("worker"), 30, "a retry")
    await asyncio.sleep(3)
    assert stack.alive("worker"), stack.log("worker")[-2000:]
    own_temporal.start()
    await wait_for(lambda: "worker polling task queue" in stack.log("worker"), 90, "polling")
    assert stack.alive("worker")
