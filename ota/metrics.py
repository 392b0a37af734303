"""Our Prometheus metrics: every name and label set declared here, and listed in docs/metrics.md.

Labels stay bounded: product, module, state, reason, outcome, kind. Device names and batch ids
are never labels, except on the gauges of active batches (`ota_batch_tasks`), whose number is
bounded by the batches running at once.

Counting costs a lock and an add (about a microsecond), so counters are bumped where the work is
done; what is already counted elsewhere (the bridge's own tallies, the database's rows) is read
when Prometheus scrapes, by collectors, and costs nothing on the device path.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# --- the worker ---------------------------------------------------------------------------------

PUSHES = Counter(
    "ota_pushes",
    "Upgrade notifications the worker published or tried to, by outcome: pushed, offline "
    "(the device was not connected), final (the task ended meanwhile), error (the publish failed), "
    "recheck (a device asked again before a timeout fails it, or after it reconnected on its old "
    "version: recorded nowhere).",
    ["product", "outcome"],
)
TASK_TRANSITIONS = Counter(
    "ota_task_transitions",
    "Tasks moved to a state, by state and reason (the reason is empty where a state has none).",
    ["state", "reason"],
)
TASK_RETRIES = Counter(
    "ota_task_retries",
    "Device workflows that waited for a retry after a failed attempt (the batch's retry policy).",
)
TASK_TIMEOUTS = Counter(
    "ota_task_timeouts",
    "Tasks failed by a timeout, by which: upgrade (the batch's timeout) or pickup (no progress "
    "after a push within the pickup timeout).",
    ["kind"],
)
BATCH_TRANSITIONS = Counter(
    "ota_batch_transitions",
    "Batches moved to a state (scheduled, in_progress, paused, completed, canceled, failed).",
    ["state"],
)
TEMPORAL_SDK_SCRAPE_ERRORS = Counter(
    "ota_temporal_sdk_scrape_errors",
    "Scrapes of the worker's /metrics that left out the Temporal SDK's metrics (temporal_*): "
    "the SDK's exporter did not answer in time (ota/ops/temporal_metrics.py).",
)

# --- the bridge ---------------------------------------------------------------------------------
# Its own tallies (ota_bridge_messages_received_total and the rest) are read when Prometheus
# scrapes, by the collector in ota/bridge/metrics.py.

DEVICE_REPORTS = Counter(
    "ota_device_reports",
    "Device messages the bridge parsed, by kind: progress, inform (the running version), "
    "firmware_get (a device asking for its firmware), status (our SDK's online/offline).",
    ["kind"],
)
BRIDGE_FLUSH_SECONDS = Histogram(
    "ota_bridge_flush_seconds",
    "How long one flush took: parse, one database transaction, replies, signals, acks.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# --- the HTTP server ----------------------------------------------------------------------------

DOWNLOADS = Counter(
    "ota_download_requests",
    "Firmware download requests, by outcome: full, range (a resumed or partial download), "
    "refused (a bad or expired URL), error (storage failed).",
    ["outcome"],
)
DOWNLOAD_BYTES = Counter("ota_download_bytes", "Firmware bytes sent to devices.")
HTTP_REQUESTS = Counter(
    "ota_http_requests",
    "Requests the API answered, by method, route (its template, as /download/{firmware_id}; "
    "unmatched for no route) and status code.",
    ["method", "route", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "ota_http_request_seconds",
    "Time from a request to the end of its answer (a download's last byte), by route template.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SIGNATURE_CACHE = Counter(
    "ota_signature_cache",
    "Secure-update signatures (digestsign) asked for, by result: hit (cached) or miss (signed).",
    ["result"],
)

# --- the fleet, read from the database when Prometheus scrapes the API (ota/ops/fleet_metrics.py):
# ota_batches{state,kind}, ota_active_batches, ota_batch_tasks{batch_id,product,state} and
# ota_batch_tasks_reason{batch_id,state,reason} (the last two for open batches only).

# --- every MQTT client of ours ------------------------------------------------------------------

BROKER_RECONNECTS = Counter(
    "ota_broker_reconnects",
    "Connections to the broker opened again after one was lost, by component: worker, bridge.",
    ["component"],
)
