"""Log lines (ota/ops/logs.py): JSON fields, the ids a record carries, trace ids, and secrets
masked in text and JSON alike."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from activities.push import log_fields
from ota.contracts import PushRequest
from ota.ops.logs import log_handler, redact
from ota.ops.tracing import span, use_tracer_provider

PASSWORD = "s3cr3t-Pa55"
SIG = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, dict[str, io.StringIO]]]:
    """A logger writing through each format's handler into its own buffer."""
    logger = logging.getLogger(f"ota.test-logs-{id(object())}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    streams = {}
    for log_format in ("json", "text"):
        handler = log_handler(log_format)
        handler.setStream(io.StringIO())  # type: ignore[attr-defined]
        streams[log_format] = handler.stream  # type: ignore[attr-defined]
        logger.addHandler(handler)
    yield logger, streams
    logger.handlers.clear()


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_a_json_line_has_the_fields_and_the_ids_the_record_carries(capture):
    logger, streams = capture
    req = PushRequest(task_id=42, batch_id="b-7", product_key="pk1", device_name="dev-1", attempt=1)
    logger.info("%s asked again", "pk1/dev-1", extra=log_fields(req))
    logger.warning("no ids here")
    first, second = (json.loads(line) for line in lines(streams["json"]))
    assert first["message"] == "pk1/dev-1 asked again"
    assert (first["level"], first["logger"]) == ("INFO", logger.name)
    assert first["timestamp"].endswith("+00:00")  # ISO 8601, UTC
    assert (first["batch_id"], first["task_id"], first["device"]) == ("b-7", 42, "pk1/dev-1")
    assert "trace_id" not in first  # tracing is off
    assert set(second) == {"timestamp", "level", "logger", "message"}


def test_a_json_line_inside_a_span_names_its_trace():
    provider = TracerProvider()
    use_tracer_provider(provider)
    logger = logging.getLogger("ota.test-logs-trace")
    handler = log_handler("json")
    handler.setStream(io.StringIO())  # type: ignore[attr-defined]
    logger.addHandler(handler)
    try:
        with span("mqtt publish", {"ota.product": "pk1"}):
            context = trace.get_current_span().get_span_context()
            logger.warning("publish failed")
    finally:
        logger.removeHandler(handler)
        use_tracer_provider(None)
        provider.shutdown()
    line = json.loads(handler.stream.getvalue())  # type: ignore[attr-defined]
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"


def test_a_connection_error_with_a_password_in_its_url_is_masked(capture):
    logger, streams = capture
    broker = f"mqtts://svc-worker:{PASSWORD}@broker.example:8883"
    database = f"postgresql+psycopg://ota:{PASSWORD}@db.example:5432/ota"
    try:
        raise ConnectionError(f"cannot connect to {database}: connection refused")
    except ConnectionError:
        logger.exception("broker %s unreachable; retrying", broker)
    logger.info("GET /download/3?pk=pk1&dn=dev-1&expires=1&sig=%s 200", SIG)
    for log_format, stream in streams.items():
        text = stream.getvalue()
        assert PASSWORD not in text and SIG not in text, (log_format, text)
    error, download = (json.loads(line) for line in lines(streams["json"]))
    assert (
        error["message"]
        == "broker mqtts://svc-worker:***@broker.example:8883 unreachable; retrying"
    )
    assert "postgresql+psycopg://ota:***@db.example:5432/ota" in error["exc_info"]
    assert download["message"].endswith("sig=*** 200")


def test_redact_leaves_what_is_no_secret_alone():
    plain = "bridge connected to mqtt://127.0.0.1:1883 as user ota@example (progress 50%)"
    assert redact(plain) == plain
    assert redact("see http://user@host/x?a=1") == "see http://user@host/x?a=1"
    assert redact("mqtt://u:p@[::1") == "mqtt://u:***@[::1"  # not a URL urlsplit takes
