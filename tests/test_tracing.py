"""Tracing: one trace from the API's POST .../batches to a device's MQTT publish, on the real dev
server, an in-process worker and the machine's Mosquitto; with tracing on, a device's workflow
records the same history as with it off; and the OTEL_* variables that turn it on."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ota.context import Context
from ota.errors import InvalidInput
from ota.ops.tracing import (
    requested_exporters,
    service_resource,
    tracing_enabled,
    use_tracer_provider,
)
from ota.settings import Settings
from tests.test_api_support import TOKEN, api_client
from tests.test_workflow_support import (
    FakeBridge,
    eventually,
    history_counts,
    make_firmware,
    make_fleet,
    running_worker,
    states_of,
    upgrade_listener,
)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test, its spans kept in memory; off again after."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_tracer_provider(provider)
    yield exporter
    use_tracer_provider(None)
    provider.shutdown()


async def one_device_batch(
    tmp_path: Path, mqtt_url: str, temporal_address: str
) -> tuple[dict[str, Any], tuple[int, int, int], str]:
    """A batch of one online device, created over the API and run by a worker to the end:
    (the batch, its device workflow's (events, workflow tasks, signals), the pushed URL)."""
    settings = Settings(
        home=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'ota.db'}",
        mqtt_url=mqtt_url,
        broker_auth="none",
        temporal_address=temporal_address,
        task_queue=f"tq-{uuid.uuid4()}",
        url_secret="test-secret",
        api_token=TOKEN,
        batch_poll_seconds=0.5,
    )
    ctx = Context(settings)  # its client has the tracing interceptor when tracing is on
    pk, names = make_fleet(ctx.engine, 1)
    fw = make_firmware(ctx.engine, pk)
    client = await ctx.temporal()
    bridge = FakeBridge(ctx.engine, client, pk)
    async with (
        upgrade_listener(mqtt_url, pk) as pushes,
        running_worker(client, ctx),
        api_client(settings) as api,
    ):
        r = await api.post(f"/api/v1/firmware/{fw}/batches", json={"src_versions": ["1.0.0"]})
        assert r.status_code == 201, r.text
        batch = r.json()
        await eventually(lambda: len(pushes) == 1)
        await eventually(lambda: set(states_of(ctx.engine, batch["id"]).values()) == {"pushed"})
        await bridge.updated(names[0])
        assert (await client.get_workflow_handle(batch["workflow_id"]).result())["counts"] == {
            "updated": 1
        }
        url = pushes[0][1]["data"]["url"]
        parts = urlsplit(url)
        await api.get(f"{parts.path}?{parts.query}")  # a device's download: no span, no secret
    ctx.engine.dispose()
    return batch, await history_counts(bridge.handle(names[0])), url


def ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    """The names of a span's ancestors, nearest first."""
    names = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


def only(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, sorted(s.name for s in spans))
    return found[0]


async def test_one_trace_from_the_api_request_to_the_mqtt_publish(
    spans, tmp_path, mqtt_url, temporal_env
):
    address = temporal_env.client.service_client.config.target_host
    batch, traced_history, url = await one_device_batch(tmp_path / "on", mqtt_url, address)
    finished = list(spans.get_finished_spans())
    by_id = {s.context.span_id: s for s in finished}

    request = next(s for s in finished if s.kind is SpanKind.SERVER and s.name.startswith("POST"))
    assert request.name == "POST /api/v1/firmware/{firmware_id:int}/batches"
    assert request.parent is None  # the trace's root: no caller sent a traceparent
    start = only(finished, "StartWorkflow:BatchWorkflow")
    assert start.attributes["temporalWorkflowID"] == batch["workflow_id"]
    chain = [
        "RunWorkflow:BatchWorkflow",
        "StartChildWorkflow:DeviceUpgradeWorkflow",
        "RunWorkflow:DeviceUpgradeWorkflow",
        "StartActivity:push",
        "RunActivity:push",
        "mqtt publish",
    ]
    assert request.name in ancestors(start, by_id)
    for name in chain:
        span = only(finished, name)
        assert span.context.trace_id == request.context.trace_id, name
        assert {start.name, request.name} <= set(ancestors(span, by_id)), (name, ancestors)
    # The device's spans hang under the child's start, the publish under the push activity.
    device = ancestors(only(finished, "mqtt publish"), by_id)
    assert device[:2] == ["RunActivity:push", "StartActivity:push"], device
    assert "StartChildWorkflow:DeviceUpgradeWorkflow" in device
    publish = only(finished, "mqtt publish")
    topic = f"/ota/device/upgrade/{batch['product_key']}/dev00000"
    assert dict(publish.attributes or {}) == {
        "messaging.destination.name": topic,
        "ota.product": batch["product_key"],
    }
    # Secrets stay out: neither the pushed URL's signature nor the download request is a span.
    sig = dict(p.split("=") for p in urlsplit(url).query.split("&"))["sig"]
    assert all(sig not in str(v) for s in finished for v in (s.attributes or {}).values())
    assert not [s for s in finished if "/download/" in s.name]

    # Off: no interceptors, no spans; and on, the device's history was no longer than off.
    use_tracer_provider(None)
    assert not tracing_enabled()
    spans.clear()
    _, plain_history, _ = await one_device_batch(tmp_path / "off", mqtt_url, address)
    assert spans.get_finished_spans() == ()
    assert traced_history == plain_history, (traced_history, plain_history)


def test_the_otel_variables_that_turn_tracing_on():
    assert requested_exporters({}) == []  # the specification says otlp; we say off
    assert requested_exporters({"OTEL_TRACES_EXPORTER": "console"}) == ["console"]
    assert requested_exporters({"OTEL_TRACES_EXPORTER": "otlp, console"}) == ["otlp", "console"]
    assert requested_exporters({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == ["otlp"]
    assert requested_exporters({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318"}) == ["otlp"]
    assert requested_exporters({"OTEL_TRACES_EXPORTER": "none"}) == []
    off = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}
    assert requested_exporters(off) == []
    for env, field in [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ]:
        with pytest.raises(InvalidInput) as caught:
            requested_exporters(env)
        assert caught.value.field == field


def test_the_service_name_is_ours_unless_the_environment_names_it(monkeypatch):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    resource = service_resource("ota-worker").attributes
    assert resource["service.name"] == "ota-worker"
    assert resource["deployment.environment"] == "test"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "fleet-worker-3")
    assert service_resource("ota-worker").attributes["service.name"] == "fleet-worker-3"
