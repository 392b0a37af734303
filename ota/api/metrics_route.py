"""GET /metrics: the API process's Prometheus metrics, and the fleet's gauges.

No bearer token: Prometheus scrapes it as it scrapes the worker and the bridge (bind the API
to a network you trust, or let the proxy in front refuse /metrics from outside). It tells
batch ids and counts, never a secret. Not in the OpenAPI schema: it is not the product's API.

Each app answers from a registry of its own: the process's metrics (prometheus_client's global
REGISTRY: our counters, the process collector) plus a FleetCollector on that app's database.
Registering the collector in the global registry instead would tie every app of a process to
one database: tests make many apps, each on its own database, and a second registration of the
same names would fail.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ota.context import Context
from ota.ops.fleet_metrics import FleetCollector
from ota.ops.http import metrics_response

router = APIRouter()


class _ProcessMetrics(Collector):
    """The global registry's metrics, read at each scrape (no describe: nothing collected at
    registration)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def install(app: FastAPI) -> None:
    """The app's registry and collector (app.state.metrics_registry, app.state.fleet_metrics)."""
    ctx: Context = app.state.ctx
    fleet = FleetCollector(lambda: ctx.engine)
    registry = CollectorRegistry()
    registry.register(_ProcessMetrics())
    registry.register(fleet)
    app.state.fleet_metrics = fleet
    app.state.metrics_registry = registry
    app.include_router(router)


# A plain def: the fleet's queries run in the server's thread pool, not on its event loop.
@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return metrics_response(request.app.state.metrics_registry)
