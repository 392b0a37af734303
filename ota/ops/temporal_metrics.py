"""The Temporal SDK's own worker metrics, served on the worker's one /metrics port.

The SDK's core (Rust) keeps its metrics (workflow task latency, schedule-to-start latency,
slots, polls, ...) and can serve them as Prometheus text on an address of its own. It serves
them here on a free loopback port, and a collector in prometheus_client's default REGISTRY
reads that text when Prometheus scrapes ours and passes it on unchanged (names prefixed
`temporal_` by the SDK). One port per process to scrape, and nothing on the device path: the
core aggregates in Rust, and the text is parsed only at scrape time.

Why not `temporalio.runtime.MetricBuffer`: it hands Python every single update (a histogram
record per workflow task, several per device), must be drained on a timer or it drops them,
and the buckets and label sets would have to be rebuilt here. The exporter's text already is
what Prometheus wants.
"""

from __future__ import annotations

import functools
import logging
import socket
import urllib.request
from collections.abc import Iterable

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from ota.metrics import TEMPORAL_SDK_SCRAPE_ERRORS
from ota.settings import Settings

log = logging.getLogger(__name__)

# A scrape waits this long for the SDK's text. The exporter answers from its own thread in
# milliseconds; a longer wait would hold up the whole scrape for nothing.
SDK_SCRAPE_TIMEOUT_SECONDS = 1.0
# The free port is found before the core binds it; another process may take it meanwhile.
BIND_ATTEMPTS = 5
LOOPBACK = "127.0.0.1"


class SdkMetricsCollector(Collector):
    """Reads the SDK exporter's Prometheus text at scrape time and yields its families.

    An exporter that does not answer leaves its metrics out of that scrape (and counts
    `ota_temporal_sdk_scrape_errors`): our own metrics must still be served."""

    def __init__(self, url: str, timeout: float = SDK_SCRAPE_TIMEOUT_SECONDS) -> None:
        self.url = url
        self.timeout = timeout
        self._failing = False

    def describe(self) -> Iterable[Metric]:
        # The SDK's names are known only once it serves them; nothing to check at registration.
        return []

    def collect(self) -> Iterable[Metric]:
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout) as response:
                text = response.read().decode("utf-8")
            families = list(text_string_to_metric_families(text))
        except Exception as exc:  # unreachable, slow, or unparsable: never fail the scrape
            TEMPORAL_SDK_SCRAPE_ERRORS.inc()
            if not self._failing:  # once per outage, not at every scrape
                log.warning("Temporal SDK metrics unavailable at %s: %s", self.url, exc)
            self._failing = True
            return []
        if self._failing:
            log.info("Temporal SDK metrics available again at %s", self.url)
        self._failing = False
        return families


def sdk_metrics_runtime(settings: Settings) -> Runtime | None:
    """The Runtime for the worker's Temporal client: with the SDK's metrics exported and
    collected into REGISTRY when the worker serves /metrics (OTA_WORKER_METRICS_PORT), else
    None (the SDK's default runtime, no exporter)."""
    if settings.worker_metrics_port is None:
        return None
    return _exporting_runtime()


@functools.cache
def _exporting_runtime() -> Runtime:
    """One per process: each Runtime has its own threads and the collector is registered once
    (a worker restarted after a failure reuses its client, and so this runtime)."""
    for attempt in range(1, BIND_ATTEMPTS + 1):
        port = _free_loopback_port()
        config = PrometheusConfig(
            bind_address=f"{LOOPBACK}:{port}",
            # Prometheus' conventions: counters end in _total, durations are seconds and say so.
            counters_total_suffix=True,
            unit_suffix=True,
            durations_as_seconds=True,
        )
        try:
            runtime = Runtime(telemetry=TelemetryConfig(metrics=config))
        except ValueError as exc:  # "Address already in use": taken since we looked
            if attempt == BIND_ATTEMPTS:
                raise
            log.debug("Temporal SDK metrics port %d: %s; trying another", port, exc)
            continue
        REGISTRY.register(SdkMetricsCollector(f"http://{LOOPBACK}:{port}/metrics"))
        log.info("Temporal SDK metrics exported on %s:%d, served on /metrics", LOOPBACK, port)
        return runtime
    raise AssertionError("unreachable")


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])
