"""What the metrics cost per device: the counters the device path bumps, and the scrapes.

Measured, not assumed: the worker's and the API's counters are bumped in the request path (a
lock and an add each), so their cost is how many bumps a device made (the counters' own rise
over the batch, read from /metrics) times what one bump costs here (timed in this process);
the bridge's tallies and the database gauges are read only when Prometheus scrapes, so their
cost is the scrapes': each process's CPU over a run of scrapes, per scrape, times the scrapes a
15 s interval makes over the batch. Both are set against the CPU every process of the stack
(Temporal, worker, bridge, API, simulator) spent per device in the same batch.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from bench.scrape import scrape
from ota.api.download import CHUNK

SCRAPE_INTERVAL_SECONDS = 15  # Prometheus' default, and docs/deploy.md's
SCRAPES_TIMED = 20


def counter_bumps(texts: Mapping[str, str | None]) -> float:
    """The sum of every `ota_` counter's samples over the given /metrics texts: bumped in the
    request path (the bridge's `ota_bridge_*` are tallies read at scrape time: not counted)."""
    total = 0.0
    for text in texts.values():
        if not text:
            continue
        for family in text_string_to_metric_families(text):
            if family.type != "counter" or not family.name.startswith("ota_"):
                continue
            if family.name.startswith("ota_bridge_"):
                continue
            value = sum(s.value for s in family.samples if s.name.endswith("_total"))
            if family.name == "ota_download_bytes":
                # Bytes are counted a chunk at a time: a bump per CHUNK, and one for each
                # download's last part (a bump per request: ota_download_requests again).
                value /= CHUNK
                value += sum(_samples(text, "ota_download_requests_total"))
            total += value
    return total


def _samples(text: str, name: str) -> list[float]:
    return [
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    ]


def scrape_all(urls: Mapping[str, str]) -> dict[str, str | None]:
    return {name: scrape(url) for name, url in urls.items()}


def bump_seconds() -> float:
    """One labelled counter bump, as the worker's activities make it."""
    counter = Counter("bench_bump", "a bump", ["product", "outcome"], registry=CollectorRegistry())
    runs = 100_000
    return timeit.timeit(lambda: counter.labels("p", "pushed").inc(), number=runs) / runs


def scrape_cpu_seconds(
    urls: Mapping[str, str], cpu_seconds: Callable[[], dict[str, float]]
) -> dict[str, float]:
    """CPU seconds one scrape costs each process (its /proc times over SCRAPES_TIMED scrapes)."""
    before = cpu_seconds()
    for _ in range(SCRAPES_TIMED):
        scrape_all(urls)
    after = cpu_seconds()
    return {name: (after[name] - before[name]) / SCRAPES_TIMED for name in urls}


def instrumentation_cost(
    *,
    devices: int,
    seconds: float,
    bumps: float,
    per_bump: float,
    per_scrape: Mapping[str, float],
    stack_cpu_seconds: float,
) -> dict[str, float]:
    """The cost per device in CPU milliseconds, and its share of the stack's CPU per device."""
    scrapes = max(1.0, seconds / SCRAPE_INTERVAL_SECONDS)
    bump_ms = bumps * per_bump * 1000 / devices
    scrape_ms = scrapes * sum(per_scrape.values()) * 1000 / devices
    stack_ms = stack_cpu_seconds * 1000 / devices
    return {
        "counter_bumps_per_device": round(bumps / devices, 2),
        "bump_us": round(per_bump * 1e6, 3),
        "scrape_ms": {name: round(cpu * 1000, 2) for name, cpu in per_scrape.items()},
        "bumps_ms_per_device": round(bump_ms, 4),
        "scrapes_ms_per_device": round(scrape_ms, 4),
        "stack_cpu_ms_per_device": round(stack_ms, 2),
        "share_of_cpu_per_device": round((bump_ms + scrape_ms) / stack_ms, 5) if stack_ms else 0,
    }
