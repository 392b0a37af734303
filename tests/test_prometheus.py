"""Issue 14: a real Prometheus scrapes a running stack (worker, bridge and API, each a process
serving /metrics), and PromQL over its HTTP API tells what `ota batch show` tells of a batch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.fixtures.prometheus import needs_prometheus, running_prometheus
from tests.fixtures.stack import OtaProcesses
from tests.test_e2e import start_fleet_batch, task_states, wait_for

pytestmark = [pytest.mark.slow, needs_prometheus]

DEPLOY = Path(__file__).parent.parent / "deploy"
METRIC_NAME = re.compile(r"\b(?:ota|temporal)_[a-z_]+\b")
DEVICES = 12
FINAL = ("updated", "failed", "canceled")


def dashboard_and_alert_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "ota.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    queries += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return queries


def check_dashboards_and_alerts(prom) -> None:  # type: ignore[no-untyped-def]
    """Every query of the dashboard and the alerts runs on the live stack's series, and every
    metric they name is one the stack serves; every `ota_` metric served is documented."""
    served = set(prom.values('count by (__name__) ({__name__=~"(ota|temporal)_.+"})', "__name__"))
    for query in dashboard_and_alert_queries():
        prom.query(query)  # raises on a query Prometheus refuses
        named = set(METRIC_NAME.findall(query))
        assert named <= served, f"{query!r} names metrics nobody serves: {named - served}"
    documented = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()
    for name in sorted(n for n in served if n.startswith("ota_")):
        family = re.sub(r"_(bucket|sum|count|created|total)$", "", name)
        assert f"`{family}`" in documented or f"`{family}_total`" in documented, (
            f"{name} is served but not in docs/metrics.md"
        )


def batch_show(stack: OtaProcesses, batch_id: str) -> dict:
    """What an operator reads: `ota batch show --json`, run as a command."""
    out = subprocess.run(
        [sys.executable, "-m", "starter", "batch", "show", batch_id, "--json"],
        env={**os.environ, **stack.env},
        capture_output=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)


async def test_prometheus_sees_what_batch_show_says(
    ota_processes: OtaProcesses, mqtt_url, tmp_path
):
    stack = ota_processes
    worker_port = stack.env["OTA_WORKER_METRICS_PORT"]
    bridge_port = stack.env["OTA_BRIDGE_METRICS_PORT"]
    for name in ("worker", "bridge", "api"):
        stack.start(name)
    jobs = {
        "ota-worker": [f"127.0.0.1:{worker_port}"],
        "ota-bridge": [f"127.0.0.1:{bridge_port}"],
        "ota-api": [f"127.0.0.1:{stack.env['OTA_HTTP_PORT']}"],
    }
    with running_prometheus(tmp_path / "prometheus", jobs) as prom:
        prom.wait_scraped(jobs=len(jobs))
        pk = f"prm{uuid.uuid4().hex[:8]}"
        # Some devices fail their install: the batch ends with two final states, not one.
        run = await start_fleet_batch(
            stack,
            mqtt_url,
            pk,
            DEVICES,
            ["--install-seconds", "0.2", "--install-fail-rate", "0.4", "--seed", "7"],
            timeout_minutes=10,
            # Never trips (40% fail): there so the stop-rule gauge exists, as the rate's does.
            stop_at=90,
            rate_per_minute=60,  # 12 s of pushes: the open batch outlives the 5 s cache
        )
        # While it runs, the API's gauge of active batches holds its tasks.
        await wait_for(
            lambda: prom.query(f'ota_batch_tasks{{batch_id="{run.batch_id}"}}'),
            30,
            "the running batch's tasks in Prometheus",
        )
        check_dashboards_and_alerts(prom)
        # The batch's own stop rule and rate, which the alert and the dashboard compare with.
        of_batch = f'{{batch_id="{run.batch_id}"}}'
        assert prom.values(f"max(ota_batch_stop_at_percent{of_batch})", "") == {"": 90.0}
        assert prom.values(f"max(ota_batch_rate_per_minute{of_batch})", "") == {"": 60.0}
        await wait_for(
            lambda: sum(task_states(run.ctx.engine, run.batch_id)[s] for s in FINAL) == DEVICES,
            120,
            "every task final",
        )
        await wait_for(
            lambda: batch_show(stack, run.batch_id)["state"] == "completed", 60, "batch completed"
        )
        run.listening.cancel()
        shown = batch_show(stack, run.batch_id)["counts"]
        assert shown.get("failed", 0) > 0 and shown.get("updated", 0) > 0, shown

        prom.wait_scraped(jobs=len(jobs))
        # Each process counts the moves it wrote (the bridge: updates; the worker: failures),
        # so the fleet's figure is their sum; this stack ran this one batch.
        moved = prom.values(
            'sum by (state) (ota_task_transitions_total{state=~"updated|failed|canceled"})', "state"
        )
        assert {s: int(v) for s, v in moved.items() if v} == shown
        pushed = prom.values('sum(ota_pushes_total{outcome="pushed"})', "")
        assert pushed == {"": DEVICES}
        # The API's gauges: the batch is no longer active, and counted among completed ones.
        assert prom.query(f'ota_batch_tasks{{batch_id="{run.batch_id}"}}') == []
        completed = prom.values('max(ota_batches{state="completed"})', "")
        assert completed == {"": 1.0}
        # The worker also exports the Temporal SDK's own metrics on the same port.
        assert prom.query('{job="ota-worker", __name__=~"temporal_.*"}')
