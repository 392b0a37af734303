"""The bridge signals real device workflows on the Temporal dev server."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from temporalio import workflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from ota import protocol
from ota.bridge import Bridge
from ota.contracts import SIGNAL_REPORT, DeviceReport, device_workflow_id
from tests.linkkit.seed import seed_fleet, tasks
from tests.test_bridge import bridge_settings, publisher, running, until


@workflow.defn(name="WaitForReport")
class WaitForReport:
    """Test-only stand-in for the device workflow: returns the first report it gets."""

    def __init__(self) -> None:
        self.report: DeviceReport | None = None

    @workflow.signal(name=SIGNAL_REPORT)
    def on_report(self, report: DeviceReport) -> None:
        self.report = report

    @workflow.run
    async def run(self) -> DeviceReport:
        await workflow.wait_condition(lambda: self.report is not None)
        assert self.report is not None
        return self.report


async def test_reports_reach_the_device_workflows(
    temporal_env: WorkflowEnvironment, sqlite_engine, mqtt_url, tmp_path
):
    client = temporal_env.client
    fleet = seed_fleet(sqlite_engine, 3)
    good, bad, gone = fleet.names  # gone: no workflow at all
    pk = fleet.product_key
    queue = f"test-{uuid.uuid4().hex[:8]}"
    settings = bridge_settings(tmp_path, mqtt_url)
    bridge = Bridge(settings, sqlite_engine, client, session_expiry=60, products=[pk])
    async with (
        Worker(
            client,
            task_queue=queue,
            workflows=[WaitForReport],
            workflow_runner=UnsandboxedWorkflowRunner(),
        ),
        running(bridge),
        publisher(mqtt_url) as device,
    ):
        handles = {
            dn: await client.start_workflow(
                WaitForReport.run,
                id=device_workflow_id(pk, dn),
                task_queue=queue,
                execution_timeout=timedelta(seconds=60),
            )
            for dn in (good, bad)
        }
        for step in ("10", "60", "100"):  # intermediate percentages: never signalled
            payload = protocol.encode_progress("1", int(step))
            await device.publish(protocol.progress_topic(pk, good), payload, qos=1)
        await device.publish(
            protocol.inform_topic(pk, good), protocol.encode_inform("2", "2.0.0"), 1
        )
        await device.publish(protocol.progress_topic(pk, bad), protocol.encode_progress("3", -3), 1)
        await device.publish(
            protocol.inform_topic(pk, gone), protocol.encode_inform("4", "2.0.0"), 1
        )
        results = await asyncio.wait_for(
            asyncio.gather(handles[good].result(), handles[bad].result()), 30
        )
        await until(lambda: bridge.stats["signals_not_found"] == 1, what="the missing workflow")
    assert results == [
        DeviceReport(outcome="updated", version="2.0.0", batch_id=fleet.batch_id),
        DeviceReport(outcome="failed", reason="verify_failed", batch_id=fleet.batch_id, attempt=1),
    ]
    # Each workflow got exactly one signal, whatever the number of progress reports.
    for h in handles.values():
        history = await h.fetch_history()
        signaled = [
            e for e in history.events if e.HasField("workflow_execution_signaled_event_attributes")
        ]
        assert len(signaled) == 1
    states = {dn: t.state for dn, t in tasks(sqlite_engine, fleet.batch_id).items()}
    assert states == {good: "updated", bad: "pushed", gone: "updated"}
    assert bridge.stats["signals"] == 2
