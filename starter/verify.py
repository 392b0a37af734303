"""`ota verify`: validate a firmware on a few devices before any batch may use it."""

from __future__ import annotations

from typing import Annotated

import typer

from ota.contracts import verify_workflow_id
from ota.services import verify as verify_service
from starter.common import console, context, handle_errors, print_json
from starter.waiting import wait_showing_progress


@handle_errors
async def verify(
    firmware: Annotated[str, typer.Argument(help="Firmware id (or unique name).")],
    device: Annotated[list[str], typer.Option("--device", help="Device to verify on; repeatable.")],
    timeout: Annotated[
        int | None, typer.Option(help="Minutes from the first progress report, 1-1440.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the verdict.")] = False,
    json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Update the chosen devices: the firmware becomes verified if all of them update."""
    ctx = context()
    shown = await verify_service.start_verify(ctx, firmware, list(device), timeout)
    if wait:
        await wait_showing_progress(ctx, verify_workflow_id(shown["id"]), shown["id"])
        shown = await verify_service.wait_verify(ctx, shown["id"])
    if json:
        print_json(shown)
    elif wait:
        console.print(f"firmware {shown['firmware_id']}: {shown['firmware_state']}")
    else:
        console.print(
            f"verifying firmware {shown['firmware_id']} on {len(device)} device(s): "
            f"batch {shown['id']} (ota batch show {shown['id']})"
        )


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
