"""The `ota` command: each area registers its own subcommands."""

from __future__ import annotations

import typer

from starter import (
    api,
    batches,
    bridge,
    dev,
    devices,
    doctor,
    firmware,
    products,
    simulate,
    temporal,
    verify,
    worker,
)

app = typer.Typer(
    help="Over-the-air firmware updates for MQTT device fleets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

for area in (
    products,
    devices,
    firmware,
    verify,
    batches,
    bridge,
    api,
    simulate,
    worker,
    dev,
    temporal,
    doctor,
):
    area.register(app)


def main() -> None:
    app()
