"""`ota` subcommands: bridge."""

from __future__ import annotations

import asyncio
import logging

import typer
from temporalio.client import Client

from ota.bridge import Bridge
from ota.context import Context
from starter.common import context, setup_logging

log = logging.getLogger("ota.bridge")


async def _temporal(ctx: Context) -> Client:
    """Wait for Temporal: the bridge is useless to workflows without it, but must not crash."""
    delay = 1.0
    while True:
        try:
            return await ctx.temporal()
        except Exception as exc:
            log.warning(
                "Temporal at %s not reachable (%s); retrying", ctx.settings.temporal_address, exc
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30)


async def _run() -> None:
    ctx = context()
    temporal = await _temporal(ctx)
    await Bridge(ctx.settings, ctx.engine, temporal).run()


def bridge(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every flush."),
) -> None:
    """Listen to devices over MQTT: record their reports, signal their workflows, answer them."""
    setup_logging(verbose)
    try:
        asyncio.run(_run())
    except KeyboardInterrupt:
        log.info("bridge stopped")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `ota` app."""
    app.command("bridge")(bridge)
