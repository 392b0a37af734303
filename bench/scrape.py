"""Reading a process's /metrics as Prometheus would: one metric's samples, summed."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Reading:
    """A metric's sum at one URL, or why there is none (`missing`)."""

    url: str
    metric: str
    value: float | None = None
    missing: str | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"url": self.url, "metric": self.metric}
        out |= {"value": self.value} if self.missing is None else {"missing": self.missing}
        return out


def scrape(url: str, timeout: float = 5.0) -> str | None:
    """The exposition text at `url`; None when nothing answers there."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode()
    except OSError:
        return None


def metric_sum(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The sum of `name`'s samples whose labels include `labels`; None if no sample has that name.

    A counter may be named with or without its `_total`: its samples carry the suffix (and a
    `_created` each, which is not summed)."""
    wanted = {name, f"{name}_total"}
    found, total = False, 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in wanted:
                continue
            found = True
            if all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total if found else None


def read_metric(url: str, names: list[str], labels: dict[str, str] | None = None) -> Reading:
    """The first of `names` the process exports at `url`, summed; else a Reading that says what
    is missing: the endpoint, or the metric."""
    text = scrape(url)
    if text is None:
        return Reading(url, names[0], missing=f"metric missing: nothing serves {url}")
    for name in names:
        if (value := metric_sum(text, name, labels)) is not None:
            return Reading(url, name, value=value)
    return Reading(url, names[0], missing=f"metric missing: {' or '.join(names)} not at {url}")
