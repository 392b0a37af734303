"""Log lines as text or, with OTA_LOG_FORMAT=json, one JSON object a line; never a secret.

A JSON line carries timestamp, level, logger and message; batch_id, task_id and device when
the record has them (`log.info(..., extra={"device": "pk/dn"})`); trace_id and span_id when
tracing is on (ota/ops/tracing.py), so a log search jumps to the trace. Either way a password
in a URL (mqtt://user:***@host) and a signature in a query string (?sig=***) are masked on
the finished line, whichever field or traceback they came in.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from ota.api.access_log import redact as redact_query
from ota.mqtt import redact as redact_url
from ota.ops.tracing import tracing_enabled

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# A URL with credentials: scheme://user:password@...; redact_url masks the password.
_URL_WITH_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/@\"']*:[^\s/\"']*@[^\s\"']*")
_PASSWORD = re.compile(r"(://[^\s/@\"':]*):[^\s/\"']*@")


def redact(text: str) -> str:
    """`text` with every URL's password and every query-string secret masked."""
    if "://" in text:
        text = _URL_WITH_PASSWORD.sub(_redact_one, text)
    if "=" in text:
        text = redact_query(text)
    return text


def _redact_one(match: re.Match[str]) -> str:
    try:
        return redact_url(match.group(0))
    except ValueError:  # not a URL urlsplit accepts (a bad port): mask it all the same
        return _PASSWORD.sub(r"\1:***@", match.group(0))


class RedactingFormatter(logging.Formatter):
    """The text format, secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonLineFormatter(JsonFormatter):
    """One JSON object a line; the record's extras (batch_id, task_id, device) are fields."""

    def __init__(self) -> None:
        super().__init__(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            # uvicorn's extra: its message again, with terminal colour codes
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
            timestamp=True,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        timestamp = log_data.pop("timestamp")
        fields = {"timestamp": timestamp, **log_data}  # the time first, as a reader scans
        log_data.clear()
        log_data.update(fields)
        if tracing_enabled():
            context = trace.get_current_span().get_span_context()
            if context.is_valid:
                log_data["trace_id"] = trace.format_trace_id(context.trace_id)
                log_data["span_id"] = trace.format_span_id(context.span_id)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def log_handler(log_format: str) -> logging.Handler:
    """A stderr handler writing `log_format` (text or json) lines."""
    handler = logging.StreamHandler()
    formatter = JsonLineFormatter() if log_format == "json" else RedactingFormatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    return handler
