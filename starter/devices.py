"""`ota device`: register devices one by one or from CSV, and list them with their versions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ota.domain import DEFAULT_MODULE
from ota.errors import InvalidInput
from ota.identity.registry import OFF, SYNCED
from ota.services import devices
from ota.services.paging import PAGE_MAX
from starter import identity
from starter.common import console, context, err_console, handle_errors, print_json

device_app = typer.Typer(help="Devices: registration and the versions they reported.")

ProductOpt = Annotated[str, typer.Option("--product", "-p", help="Product key.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the record(s) as JSON.")]


@device_app.command("add")
@handle_errors
def add(
    name: Annotated[str, typer.Argument(help="Device name: 4-32 letters, digits, - _ @ . :")],
    product: ProductOpt,
    version: Annotated[str | None, typer.Option(help="Its current firmware version.")] = None,
    module: Annotated[
        str, typer.Option(help="The module that version belongs to.")
    ] = DEFAULT_MODULE,
    json: JsonOpt = False,
) -> None:
    """Register a device; its DeviceSecret is shown once (`ota device credentials` again)."""
    ctx = context()
    view = devices.add_device(
        ctx.engine, ctx.settings, product, name, version=version, module=module
    )
    if json:
        print_json(view.to_dict())
        return
    console.print(f"added device [bold]{view.name}[/bold] to {view.product_key}")
    console.print(f"DeviceSecret: {view.secret}   (shown once; keep it on the device)")
    _say_broker(view.broker)


@device_app.command("import")
@handle_errors
def import_(
    file: Annotated[
        Path, typer.Argument(help="CSV file, one device a line: name[,version[,module]]")
    ],
    product: ProductOpt,
    secrets: Annotated[
        Path | None,
        typer.Option(
            "--secrets",
            help="Write name,DeviceSecret of each new device to this file (created 0600).",
        ),
    ] = None,
) -> None:
    """Register every device of a CSV file, or none if any line is bad."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput("file", f"cannot read {file}: {exc}") from None
    if secrets is not None and secrets.exists():
        raise InvalidInput("secrets", f"{secrets} exists: name a new file")
    ctx = context()
    registered = devices.import_devices(ctx.engine, ctx.settings, product, text)
    console.print(f"imported {len(registered)} devices into {product}")
    if secrets is not None:
        write_private(secrets, "".join(f"{n},{s}\n" for n, s in registered.secrets.items()))
        console.print(f"their secrets are in {secrets}")
    else:
        console.print("their secrets: `ota device credentials PRODUCT NAME` (or --secrets FILE)")
    _say_broker(registered.broker)


@device_app.command("list")
@handle_errors
def list_(
    product: Annotated[
        str | None, typer.Option("--product", "-p", help="Only this product.")
    ] = None,
    limit: Annotated[int, typer.Option(help=f"At most this many (up to {PAGE_MAX}).")] = PAGE_MAX,
    after_id: Annotated[
        int, typer.Option(help="Those after this id: the previous list's next page.")
    ] = 0,
    json: JsonOpt = False,
) -> None:
    """List devices with each module's version and whether they are online, a page at a time."""
    page = devices.device_page(context().engine, product, limit=limit, after_id=after_id)
    found = page.items
    if page.next_after_id is not None:  # on stderr: the JSON on stdout stays the list
        err_console.print(f"more: --after-id {page.next_after_id}", markup=False)
    if json:
        print_json([d.to_dict() for d in found])
        return
    table = Table("product", "device", "versions", "online", "last seen")
    for d in found:
        versions = ", ".join(f"{m}={v}" for m, v in d.versions.items()) or "-"
        seen = f"{d.last_seen:%Y-%m-%d %H:%M:%S}" if d.last_seen else "-"
        online = "yes" if d.online else "no"
        if not d.enabled:
            online = "disabled"
        table.add_row(d.product_key, d.name, versions, online, seen)
    console.print(table)


def _say_broker(state: str | None) -> None:
    if state and state not in (SYNCED, OFF):
        console.print(f"[yellow]broker: {state}[/yellow]")


def write_private(path: Path, text: str) -> None:
    """A file only its owner may read, from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `ota` app."""
    app.add_typer(device_app, name="device")
    identity.register(app, device_app)
