"""OpenTelemetry tracing: off unless the standard OTEL_* variables ask for it.

One trace runs from an API request (`POST /api/v1/firmware/{id}/batches`) through the Temporal
client's StartWorkflow, the batch workflow, each device's child workflow and push activity, to
the MQTT publish. `ota api`, `ota worker` and `ota bridge` call `setup_tracing` at start.

    OTEL_TRACES_EXPORTER=otlp|console   turns tracing on (both: "otlp,console"; "none": off)
    OTEL_EXPORTER_OTLP_ENDPOINT         also turns it on, exporting over OTLP/HTTP; or
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT  the traces endpoint itself (default localhost:4318)
    OTEL_EXPORTER_OTLP_PROTOCOL         http/protobuf, the one exporter installed
    OTEL_SERVICE_NAME                   default ota-api, ota-worker or ota-bridge
    OTEL_SDK_DISABLED=true              off, whatever else is set

The SDK reads the rest itself, as the specification says: OTEL_RESOURCE_ATTRIBUTES,
OTEL_TRACES_SAMPLER(_ARG), OTEL_EXPORTER_OTLP_HEADERS and _TIMEOUT, OTEL_BSP_*.

Unlike the specification's default (otlp), nothing set means off: a fleet that collects no
traces pays nothing, not even Temporal's interceptors, which add work to every workflow task.
Tests install an in-memory provider with `use_tracer_provider` instead of the global one, which
a process can set only once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from ota.errors import InvalidInput

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from temporalio.client import Client

EXPORTERS = ("otlp", "console")
OTLP_PROTOCOLS = ("http/protobuf",)
TRACER_NAME = "ota"
# Device downloads carry a signature in their query string and no trace context (devices send
# none): their spans would be unconnected roots, one per device, and a place a secret could leak.
EXCLUDED_URLS = ("/download/", "/static/")

_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None


def requested_exporters(env: Mapping[str, str] = os.environ) -> list[str]:
    """The exporters the environment asks for; [] when tracing is off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n]
    if not names:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    if "none" in names:
        return []
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise InvalidInput(
            "OTEL_TRACES_EXPORTER",
            f"{', '.join(unknown)} is not supported: use otlp, console or none",
        )
    if "otlp" in names:
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", OTLP_PROTOCOLS[0]
        )
        if protocol.strip() not in OTLP_PROTOCOLS:
            raise InvalidInput(
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                f"{protocol} is not supported: the OTLP exporter installed speaks http/protobuf",
            )
    return names


def setup_tracing(service_name: str, env: Mapping[str, str] = os.environ) -> bool:
    """Install the tracer provider the environment asks for, as the global one too; False
    (and nothing installed) when tracing is off. `service_name` unless OTEL_SERVICE_NAME."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporters = requested_exporters(env)
    if not exporters:
        return False
    provider = TracerProvider(resource=service_resource(service_name))  # flushed at exit
    for name in exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    trace.set_tracer_provider(provider)
    use_tracer_provider(provider)
    return True


def service_resource(service_name: str) -> Resource:
    """The resource every span carries: OTEL_RESOURCE_ATTRIBUTES, and service.name from
    OTEL_SERVICE_NAME (or those attributes), else `service_name`."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    resource = Resource.create()  # reads the environment; "unknown_service:..." if unnamed
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    return resource


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout: from OTEL_EXPORTER_OTLP_*


def use_tracer_provider(provider: TracerProvider | None) -> None:
    """Trace this process's API app, Temporal clients and workers, and pushes with `provider`
    (made from then on); None turns tracing off again. Tests pass an in-memory one."""
    global _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer(TRACER_NAME) if provider is not None else None


def tracing_enabled() -> bool:
    return _provider is not None


def span(name: str, attributes: dict[str, Any]) -> AbstractContextManager[Any]:
    """A span around a block, child of the current one; nothing at all when tracing is off."""
    if _tracer is None:
        return nullcontext()
    return _tracer.start_as_current_span(name, attributes=attributes)


def temporal_interceptors() -> list[Any]:
    """For `Client.connect(interceptors=)`: Temporal's tracing interceptor when on. Workers
    made with such a client take it from the client."""
    if _provider is None:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor(_provider.get_tracer("temporalio"))]


def worker_interceptors(client: Client) -> list[Any]:
    """For `Worker(interceptors=)`: the tracing interceptor when on and `client` (made
    elsewhere, e.g. by a test) lacks it. Never both: each span would be made twice."""
    if _provider is None:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    if any(isinstance(i, TracingInterceptor) for i in client.config()["interceptors"]):
        return []
    return temporal_interceptors()


def instrument_app(app: FastAPI) -> None:
    """A span per HTTP request, continuing a caller's `traceparent`, when tracing is on."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    theirs = os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS") or os.environ.get(
        "OTEL_PYTHON_EXCLUDED_URLS", ""
    )
    excluded = ",".join(u for u in (theirs, *EXCLUDED_URLS) if u)
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=_provider,
        excluded_urls=excluded,
        exclude_spans=["receive", "send"],  # a span per ASGI message: noise, and work per request
    )
