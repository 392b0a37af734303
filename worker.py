"""Composition root: settings -> database, MQTT, Temporal client -> activity instances -> Worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.batches import BatchActivities
from activities.push import MqttPublisher, PushActivities
from activities.rollback import RollbackActivities
from activities.tasks import TaskActivities
from activities.verify import VerifyActivities
from ota.aio import RESTART_FIRST_SECONDS, RESTART_MAX_SECONDS, stopped_within, until_ready
from ota.context import Context, open_database
from ota.identity.accounts import ServiceRole, service_endpoint
from ota.ops.http import serving_ops
from ota.ops.probes import Probes
from ota.ops.temporal_metrics import sdk_metrics_runtime
from ota.ops.tracing import worker_interceptors
from ota.temporal import ensure_search_attributes
from workflows import WORKFLOWS

log = logging.getLogger("ota.worker")

# Sync activities (database work) run on these threads; local ones share them.
ACTIVITY_THREADS = 32
MAX_LOCAL_ACTIVITIES = 200  # pushes are async and wait on the broker, not on a thread
# Waiting for Temporal (at start, or after the worker failed): 1 s, doubling, then every minute.


class OtaWorker(Worker):
    """A Worker that also closes what its activities hold when it shuts down."""

    def __init__(
        self, *args: object, publisher: MqttPublisher, executor: ThreadPoolExecutor, **kw: object
    ) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.publisher = publisher
        self.executor = executor

    async def shutdown(self) -> None:
        await super().shutdown()
        await self.publisher.close()
        self.executor.shutdown(wait=False)


def build_worker(client: Client, context: Context, task_queue: str | None = None) -> OtaWorker:
    """The worker for task queue `ota` (or `task_queue`): every workflow and activity.

    Workflows run unsandboxed: ENGINE.md measured it to halve the worker's CPU on a machine the
    Temporal server shares, and our workflow modules import only the standard library,
    temporalio and ota.contracts/ota.domain (checked by tests/test_workflow_imports.py).
    """
    settings = context.settings
    engine = context.engine
    publisher = MqttPublisher(service_endpoint(settings, ServiceRole.WORKER))
    push = PushActivities(engine, settings, publisher)
    tasks = TaskActivities(engine)
    batches = BatchActivities(engine, client)
    verify = VerifyActivities(engine, client)
    rollback = RollbackActivities(context)
    executor = ThreadPoolExecutor(max_workers=ACTIVITY_THREADS, thread_name_prefix="ota-activity")
    return OtaWorker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=WORKFLOWS,
        activities=[
            push.push,
            push.recheck,
            tasks.check_task,
            tasks.finish_task,
            batches.prepare_batch,
            batches.claim_tasks,
            batches.set_batch_state,
            batches.cancel_tasks,
            rollback.start_rollback,
            verify.prepare_verify,
            verify.finish_verify,
        ],
        activity_executor=executor,
        max_concurrent_activities=ACTIVITY_THREADS,
        max_concurrent_local_activities=MAX_LOCAL_ACTIVITIES,
        workflow_runner=UnsandboxedWorkflowRunner(),
        interceptors=worker_interceptors(client),  # tracing, when on and not on the client
        publisher=publisher,
        executor=executor,
    )


async def run_worker(context: Context | None = None) -> None:
    """`ota worker`: run until SIGINT/SIGTERM, then finish what is in hand and stop; serving
    /metrics, /healthz and /readyz on OTA_WORKER_METRICS_PORT when it is set."""
    context = context or Context()
    # The SDK's metrics (workflow task latency, slots, ...) on /metrics when it is served.
    context.temporal_runtime = context.temporal_runtime or sdk_metrics_runtime(context.settings)
    probes = Probes(context, engine=context.engine_if_open, broker_roles=(ServiceRole.WORKER,))
    checks = probes.checks("database", "temporal", "broker")
    async with serving_ops(
        context.settings.metrics_host, context.settings.worker_metrics_port, checks
    ):
        await _serve(context)


async def _serve(context: Context) -> None:
    """Run the worker until SIGINT/SIGTERM, then finish what is in hand and stop.

    Temporal may be away when the worker starts, or go away while it runs (a server restart):
    the worker waits for it rather than exit. Its polls retry by themselves through an outage;
    a worker that still fails fatally (the namespace missing while the server starts) is
    replaced by a new one, with a growing pause, on the same client, which reconnects by itself.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The database first: opening it migrates it, and PostgreSQL may be restarting too.
    if await open_database(context, stop) is None:
        return  # stopped while waiting
    client = await until_ready("connect to Temporal", context.temporal, stop)
    if (
        client is None
        or await until_ready(
            "register search attributes", lambda: ensure_search_attributes(client), stop
        )
        is None
    ):
        return
    pause = RESTART_FIRST_SECONDS
    while not stop.is_set():
        worker = build_worker(client, context)
        began = loop.time()
        running = asyncio.create_task(worker.run())
        stopping = asyncio.create_task(stop.wait())
        log.info("worker polling task queue %s", context.settings.task_queue)
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        await worker.shutdown()  # graceful on a stop; after a fatal error, closes what it holds
        if stop.is_set():
            log.info("stopping")
            with contextlib.suppress(Exception):  # already logged by temporalio
                await running
            return
        error = running.exception() if not running.cancelled() else None
        if loop.time() - began > RESTART_MAX_SECONDS:  # it worked for a while: start afresh
            pause = RESTART_FIRST_SECONDS
        log.error("worker stopped (%s); starting a new one in %.0f s", error, pause)
        if await stopped_within(stop, pause):
            return
        pause = min(pause * 2, RESTART_MAX_SECONDS)
