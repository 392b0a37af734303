"""The engine's own ceiling: a bare fan-out, one child per device, one activity and one signal each.

The parent starts children in bursts (ABANDON, not awaited) and continues as new every
`CHUNK` starts; each child runs one regular activity that publishes an MQTT message, then waits
for one signal. A signaller subscribed to those messages plays device and bridge together.
Nothing else: no database, no timers. Our device path is compared against this.

Its MQTT clients come from ota.mqtt like ours: against an mqtts:// broker the baseline pays for
TLS too, or the comparison would flatter it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import timedelta

import aiomqtt
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from ota.mqtt import MqttEndpoint

BURST = 50
CHUNK = 500
TOPIC = "bench/baseline"


@dataclass
class FanOutInput:
    run_id: str
    devices: int
    next_index: int = 0


@dataclass
class ChildInput:
    run_id: str
    index: int


class BaselineActivities:
    def __init__(self, mqtt: aiomqtt.Client) -> None:
        self.mqtt = mqtt

    @activity.defn(name="BaselinePush")
    async def push(self, req: ChildInput) -> None:
        await self.mqtt.publish(f"{TOPIC}/{req.run_id}", str(req.index).encode(), qos=1)


@workflow.defn(name="BaselineChild")
class BaselineChild:
    def __init__(self) -> None:
        self.done = False

    @workflow.run
    async def run(self, req: ChildInput) -> None:
        await workflow.execute_activity(
            "BaselinePush", req, start_to_close_timeout=timedelta(seconds=30)
        )
        await workflow.wait_condition(lambda: self.done)

    @workflow.signal
    def finish(self) -> None:
        self.done = True


@workflow.defn(name="BaselineFanOut")
class BaselineFanOut:
    @workflow.run
    async def run(self, req: FanOutInput) -> None:
        index = req.next_index
        stop = min(req.devices, req.next_index + CHUNK)
        while index < stop:
            burst = range(index, min(stop, index + BURST))
            await asyncio.gather(
                *(
                    workflow.start_child_workflow(
                        BaselineChild.run,
                        ChildInput(req.run_id, i),
                        id=child_id(req.run_id, i),
                        parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                    )
                    for i in burst
                )
            )
            index = burst.stop
        if index < req.devices:
            workflow.continue_as_new(FanOutInput(req.run_id, req.devices, index))


def child_id(run_id: str, index: int) -> str:
    return f"baseline-{run_id}-{index}"


async def _signaller(client: Client, mqtt: MqttEndpoint, run_id: str, n: int) -> None:
    """Answer each push with the signal that lets its child finish."""
    pending: set[asyncio.Task[None]] = set()
    answered = 0
    async with mqtt.client(f"bench-sub-{run_id}") as sub:
        await sub.subscribe(f"{TOPIC}/{run_id}", qos=1)
        async for msg in sub.messages:
            index = int(bytes(msg.payload).decode())  # type: ignore[arg-type]
            handle = client.get_workflow_handle(child_id(run_id, index))
            task = asyncio.create_task(handle.signal(BaselineChild.finish))
            pending.add(task)
            task.add_done_callback(pending.discard)
            answered += 1
            if answered >= n:
                break
    await asyncio.gather(*pending)


async def _completed(client: Client, run_id: str) -> int:
    query = (
        'WorkflowType = "BaselineChild" AND ExecutionStatus = "Completed"'
        f' AND WorkflowId STARTS_WITH "baseline-{run_id}-"'
    )
    return (await client.count_workflows(query)).count


async def run_baseline(
    client: Client, mqtt: MqttEndpoint, devices: int, run_id: str
) -> dict[str, float]:
    """Fan out to `devices` children and return devices per second, start to last completion."""
    queue = f"bench-baseline-{run_id}"
    async with mqtt.client(f"bench-pub-{run_id}") as pub:
        acts = BaselineActivities(pub)
        async with Worker(
            client,
            task_queue=queue,
            workflows=[BaselineFanOut, BaselineChild],
            activities=[acts.push],
            workflow_runner=UnsandboxedWorkflowRunner(),
            max_concurrent_workflow_tasks=100,
        ):
            signaller = asyncio.create_task(_signaller(client, mqtt, run_id, devices))
            await asyncio.sleep(0.5)  # the subscription is in place before the first push
            started = time.monotonic()
            await client.start_workflow(
                BaselineFanOut.run,
                FanOutInput(run_id, devices),
                id=f"baseline-{run_id}",
                task_queue=queue,
            )
            await signaller
            while await _completed(client, run_id) < devices:
                await asyncio.sleep(0.5)
            elapsed = time.monotonic() - started
    return {"devices": devices, "seconds": elapsed, "devices_per_s": devices / elapsed}
