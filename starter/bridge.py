"""`ota` subcommands: bridge."""

from __future__ import annotations

import logging

import typer

from ota import aio
from ota.bridge import Bridge
from ota.context import Context, open_database
from ota.ops.checks import CheckFn
from ota.ops.http import serving_ops
from ota.ops.probes import Probes, connection_check
from ota.shutdown import stop_on_signals
from starter.common import context, setup_logging, setup_tracing

log = logging.getLogger("ota.bridge")


async def _run() -> None:
    ctx = context()
    engine = await open_database(ctx)  # PostgreSQL may be restarting too
    assert engine is not None  # no stop event: waits until the database answers
    # Temporal is connected to when the first signal is due, so reports are recorded even
    # while it is still starting.
    bridge = Bridge(ctx.settings, engine, ctx.temporal)
    s = ctx.settings
    async with serving_ops(s.metrics_host, s.bridge_metrics_port, _checks(ctx, bridge)):
        await bridge.run()


def _checks(ctx: Context, bridge: Bridge) -> list[tuple[str, CheckFn]]:
    """/readyz: the database and Temporal, and the bridge's own broker session (whether it is
    connected and subscribed: a new connection would prove less)."""
    probes = Probes(ctx, engine=ctx.engine_if_open)
    broker = connection_check("broker", bridge.ready, bridge.endpoint.url)
    return [*probes.checks("database", "temporal"), ("broker", broker)]


def bridge(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every flush."),
) -> None:
    """Listen to devices over MQTT: record their reports, signal their workflows, answer them."""
    setup_logging(verbose)
    setup_tracing("ota-bridge")
    stop_on_signals()
    try:
        aio.run(_run())
    except KeyboardInterrupt:
        log.info("bridge stopped")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `ota` app."""
    app.command("bridge")(bridge)
