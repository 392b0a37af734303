"""The worker's metrics: real batches on the real Temporal, broker and database move our
counters by what happened, and the Temporal SDK's own metrics reach the same REGISTRY.

Counters are process-wide, so each test reads them before and after (`Counts`).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest

from activities.targets import finish_tasks
from ota.contracts import BatchInput, batch_workflow_id
from ota.db.engine import session_scope
from ota.domain import TaskState
from ota.ops.temporal_metrics import SdkMetricsCollector, sdk_metrics_runtime
from ota.services.batch_signals import cancel_batch
from ota.services.batches import create_batch
from tests.fixtures.net import free_port
from tests.test_workflow_support import (
    FakeBridge,
    eventually,
    make_context,
    make_firmware,
    make_fleet,
    make_task,
    running_worker,
    states_of,
    tasks_of,
    upgrade_listener,
)

SERIES = (
    "ota_pushes_total",
    "ota_task_transitions_total",
    "ota_task_retries_total",
    "ota_task_timeouts_total",
    "ota_batch_transitions_total",
    "ota_broker_reconnects_total",
    "ota_temporal_sdk_scrape_errors_total",
)


def samples(registry: CollectorRegistry = REGISTRY) -> dict[tuple[str, frozenset], float]:
    """Every sample of our worker series: (name, labels) -> value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name in SERIES
    }


class Counts:
    """What the counters moved by since it was made."""

    def __init__(self) -> None:
        self.before = samples()

    def delta(self, name: str, **labels: str) -> float:
        """The change of `name`, summed over the samples carrying `labels` (a subset)."""
        after = samples()
        want = set(labels.items())

        def total(values: dict[tuple[str, frozenset], float]) -> float:
            return sum(v for (n, ls), v in values.items() if n == name and want <= ls)

        return total(after) - total(self.before)


async def test_a_batch_moves_the_worker_counters_and_the_sdk_metrics(
    temporal_env, mqtt_url, tmp_path
):
    """Four devices: one updated at once, one updated at its retry, one failed after its
    retry, one offline until it connects. Also the SDK's metrics, through the worker's client
    made with the exporting runtime (what run_worker does when OTA_WORKER_METRICS_PORT is set)."""
    ctx = make_context(
        tmp_path,
        mqtt_url,
        temporal_env.client,
        batch_poll_seconds=0.5,
        worker_metrics_port=0,  # on: only "not None" matters to the worker's runtime
        temporal_address=temporal_env.client.service_client.config.target_host,
    )
    ctx._temporal = None  # our own client, made with the runtime
    ctx.temporal_runtime = sdk_metrics_runtime(ctx.settings)
    assert ctx.temporal_runtime is not None
    assert sdk_metrics_runtime(ctx.settings) is ctx.temporal_runtime  # one per process
    client = await ctx.temporal()
    pk, (first, retried, failing) = make_fleet(ctx.engine, 3)
    _, (offline,) = make_fleet(ctx.engine, 1, online=False, product_key=pk, prefix="off")
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, client, pk)
    counts = Counts()

    def pushes_to(name: str) -> int:
        return sum(n == name for n, _ in pushes)

    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(client, ctx):
        batch = await create_batch(
            ctx, BatchInput("", fw, src_versions=["1.0.0"], retry_interval_minutes=0, max_retries=1)
        )
        await eventually(lambda: len(pushes) == 3)
        await eventually(lambda: states_of(ctx.engine, batch["id"])[first] == "pushed")
        await bridge.updated(first)
        for name in (retried, failing):
            await bridge.failed(name)
            await eventually(lambda n=name: pushes_to(n) == 2)  # the retry's push
        await bridge.updated(retried)
        await bridge.failed(failing)  # its retries are spent: failed
        await eventually(lambda: states_of(ctx.engine, batch["id"])[offline] == "to_be_pushed")
        await bridge.online(offline)
        await eventually(lambda: pushes_to(offline) == 1)
        await eventually(lambda: states_of(ctx.engine, batch["id"])[offline] == "pushed")
        await bridge.updated(offline)
        result = await client.get_workflow_handle(batch_workflow_id(batch["id"])).result()
    assert result["counts"] == {"updated": 3, "failed": 1}

    assert counts.delta("ota_pushes_total", product=pk, outcome="pushed") == 6
    assert counts.delta("ota_pushes_total", product=pk, outcome="offline") == 1
    assert counts.delta("ota_pushes_total", product=pk) == 7  # no error, final or recheck
    assert counts.delta("ota_task_transitions_total", state="to_be_pushed") == 4  # created
    assert counts.delta("ota_task_transitions_total", state="pushed", reason="") == 4
    assert counts.delta("ota_task_transitions_total", state="failed", reason="download_failed") == 1
    # `updated` is the bridge's to record (FakeBridge here), not the worker's.
    assert counts.delta("ota_task_transitions_total", state="updated") == 0
    assert counts.delta("ota_task_retries_total") == 2
    assert counts.delta("ota_task_timeouts_total") == 0
    assert counts.delta("ota_batch_transitions_total", state="completed") == 1

    # The SDK's metrics, read from its exporter when REGISTRY is collected.
    text = generate_latest(REGISTRY).decode()
    queue = ctx.settings.task_queue
    latency = [
        line
        for line in text.splitlines()
        if line.startswith("temporal_workflow_task_execution_latency_seconds_count{")
        and f'task_queue="{queue}"' in line
    ]
    assert latency, "no workflow task latency for our task queue among the SDK's metrics"
    assert sum(float(line.rsplit(" ", 1)[1]) for line in latency) >= 4
    assert "temporal_workflow_task_schedule_to_start_latency_seconds_bucket{" in text
    assert "temporal_worker_task_slots_available{" in text
    # Served as Prometheus expects: each family's HELP and TYPE before its samples.
    assert "# TYPE temporal_workflow_task_execution_latency_seconds histogram" in text


async def test_timeouts_are_counted_by_kind(time_skipping_env, mqtt_url, tmp_path):
    """One device silent past the pickup timeout (kind pickup), one that reported progress and
    then nothing past the upgrade timeout, asked once more first (kind upgrade, a recheck)."""
    env = time_skipping_env
    ctx = make_context(tmp_path, mqtt_url, env.client, batch_poll_seconds=0.5)
    pk, (silent, stuck) = make_fleet(ctx.engine, 2)
    fw = make_firmware(ctx.engine, pk)
    bridge = FakeBridge(ctx.engine, env.client, pk)
    counts = Counts()
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(env.client, ctx):
        with env.with_time_skipping_disabled():
            batch = await create_batch(
                ctx,
                BatchInput(
                    "", fw, src_versions=["1.0.0"], timeout_minutes=30, pickup_timeout_minutes=10
                ),
            )
        await eventually(lambda: len(pushes) == 2)
        await eventually(lambda: set(states_of(ctx.engine, batch["id"]).values()) == {"pushed"})
        bridge.progress(stuck)
        assert await env.fast_forward(bridge.handle(silent), timedelta(minutes=11)) is False
        assert await env.fast_forward(bridge.handle(stuck), timedelta(minutes=31))  # last look
        await eventually(lambda: len(pushes) == 3)
        assert await env.fast_forward(bridge.handle(stuck), timedelta(minutes=3)) is False
        states = await eventually(
            lambda: (s := states_of(ctx.engine, batch["id"])) and "pushed" not in s.values() and s
        )
    assert states == {silent: "failed", stuck: "failed"}
    assert counts.delta("ota_task_timeouts_total", kind="pickup") == 1
    assert counts.delta("ota_task_timeouts_total", kind="upgrade") == 1
    assert counts.delta("ota_task_transitions_total", state="failed", reason="no_response") == 1
    assert counts.delta("ota_task_transitions_total", state="failed", reason="timeout") == 1
    assert counts.delta("ota_pushes_total", product=pk, outcome="recheck") == 1
    assert counts.delta("ota_pushes_total", product=pk, outcome="pushed") == 2
    assert counts.delta("ota_task_retries_total") == 0  # neither is retried


async def test_a_cancel_counts_started_and_unstarted_tasks(temporal_env, mqtt_url, tmp_path):
    """Capped at one device in flight: one task pushed, two waiting. The cancel records the
    waiting ones itself and signals the pushed one's workflow, which records its own."""
    client = temporal_env.client
    ctx = make_context(tmp_path, mqtt_url, client, batch_poll_seconds=0.5)
    pk, names = make_fleet(ctx.engine, 3)
    fw = make_firmware(ctx.engine, pk)
    counts = Counts()
    async with upgrade_listener(mqtt_url, pk) as pushes, running_worker(client, ctx):
        batch = await create_batch(ctx, BatchInput("", fw, src_versions=["1.0.0"], max_in_flight=1))
        await eventually(lambda: len(pushes) == 1)
        await cancel_batch(ctx, batch["id"], all_tasks=True)
        await client.get_workflow_handle(batch_workflow_id(batch["id"])).result()
        await eventually(lambda: set(states_of(ctx.engine, batch["id"]).values()) == {"canceled"})
    assert len(pushes) == 1
    assert counts.delta("ota_task_transitions_total", state="canceled", reason="canceled") == 3
    assert counts.delta("ota_task_transitions_total", state="to_be_pushed") == 3
    assert counts.delta("ota_task_transitions_total", state="pushed") == 1
    assert counts.delta("ota_batch_transitions_total", state="canceled") == 1


async def test_a_lost_broker_counts_push_errors_and_the_reconnect(
    temporal_env, forgetful_broker, tmp_path
):
    """The broker dies between two batches: the second batch's push fails (error) and is
    retried by Temporal until the broker is back, on a new connection (a reconnect)."""
    client = temporal_env.client
    ctx = make_context(tmp_path, forgetful_broker.url, client, batch_poll_seconds=0.5)
    pk, (one, two) = make_fleet(ctx.engine, 2)
    fw = make_firmware(ctx.engine, pk)
    counts = Counts()
    async with running_worker(client, ctx):
        await create_batch(ctx, BatchInput("", fw, target="selected", device_names=[one]))
        # Published, not only recorded (the record comes first): the connection is open.
        await eventually(lambda: counts.delta("ota_pushes_total", product=pk) == 1)
        forgetful_broker.kill()
        b2 = await create_batch(ctx, BatchInput("", fw, target="selected", device_names=[two]))
        await eventually(lambda: counts.delta("ota_pushes_total", product=pk, outcome="error") >= 1)
        assert counts.delta("ota_broker_reconnects_total", component="worker") == 0
        forgetful_broker.start()
        await eventually(
            lambda: counts.delta("ota_pushes_total", product=pk, outcome="pushed") == 2,
            timeout=60,
        )
    assert states_of(ctx.engine, b2["id"])[two] == "pushed"
    assert counts.delta("ota_broker_reconnects_total", component="worker") == 1
    assert counts.delta("ota_task_transitions_total", state="pushed") == 2  # not per attempt


def test_a_transition_counts_once_its_transaction_commits(tmp_path, mqtt_url):
    """Rolled back, nothing happened and nothing is counted (the activity's retry counts it);
    a reason none of ours (a report signalled by hand) is `other`, not a new label."""
    ctx = make_context(tmp_path, mqtt_url, None)  # type: ignore[arg-type]  # no Temporal here
    pk, (dn,) = make_fleet(ctx.engine, 1)
    (task,) = tasks_of(ctx.engine, make_task(ctx.engine, pk, dn)).values()
    assert task.id is not None
    counts = Counts()
    with pytest.raises(RuntimeError), session_scope(ctx.engine) as session:
        assert finish_tasks(session, [task.id], TaskState.FAILED, "made up by hand") == 1
        raise RuntimeError("the transaction fails after the update")
    assert counts.delta("ota_task_transitions_total") == 0
    with session_scope(ctx.engine) as session:
        assert finish_tasks(session, [task.id], TaskState.FAILED, "made up by hand") == 1
        assert counts.delta("ota_task_transitions_total") == 0  # not yet committed
    assert counts.delta("ota_task_transitions_total", state="failed", reason="other") == 1
    with session_scope(ctx.engine) as session:  # already final: no transition
        assert finish_tasks(session, [task.id], TaskState.CANCELED, "canceled") == 0
    assert counts.delta("ota_task_transitions_total") == 1


# --- the SDK metrics collector on its own -------------------------------------------------------


def scrape_with(collector: SdkMetricsCollector) -> tuple[str, float]:
    """(what a registry with the collector and one counter of ours serves, the seconds it took)."""
    registry = CollectorRegistry()
    registry.register(collector)
    ours = Counter("ota_example", "A counter of ours beside the SDK's.", registry=registry)
    ours.inc()
    began = time.monotonic()
    text = generate_latest(registry).decode()
    return text, time.monotonic() - began


def test_an_unreachable_sdk_exporter_leaves_the_scrape_working():
    errors = Counts()
    text, _ = scrape_with(SdkMetricsCollector(f"http://127.0.0.1:{free_port()}/metrics"))
    assert "ota_example_total 1.0" in text
    assert "temporal_" not in text
    assert errors.delta("ota_temporal_sdk_scrape_errors_total") == 1


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for s in [*held, listener]:
        s.close()


def test_a_silent_sdk_exporter_costs_the_scrape_its_timeout_only(silent_server):
    errors = Counts()
    url = f"http://127.0.0.1:{silent_server}/metrics"
    text, took = scrape_with(SdkMetricsCollector(url, timeout=0.3))
    assert "ota_example_total 1.0" in text
    assert took < 2
    assert errors.delta("ota_temporal_sdk_scrape_errors_total") == 1


async def test_the_collector_passes_an_exporters_text_on():
    """A stand-in exporter's text comes out with its names, labels, help and type."""
    body = (
        b"# HELP temporal_request_total Client requests\n"
        b"# TYPE temporal_request_total counter\n"
        b'temporal_request_total{operation="PollWorkflowTaskQueue"} 7\n'
    )

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        collector = SdkMetricsCollector(f"http://127.0.0.1:{port}/metrics")
        text, _ = await asyncio.to_thread(scrape_with, collector)
    assert "# TYPE temporal_request_total counter" in text
    assert 'temporal_request_total{operation="PollWorkflowTaskQueue"} 7.0' in text
