"""`ota device`: register devices one by one or from CSV, and list them with their versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ota.domain import DEFAULT_MODULE
from ota.errors import InvalidInput
from ota.services import devices
from starter.common import console, context, handle_errors, print_json

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
    """Register a device."""
    view = devices.add_device(context().engine, product, name, version=version, module=module)
    if json:
        print_json(view.to_dict())
    else:
        console.print(f"added device [bold]{view.name}[/bold] to {view.product_key}")


@device_app.command("import")
@handle_errors
def import_(
    file: Annotated[
        Path, typer.Argument(help="CSV file, one device a line: name[,version[,module]]")
    ],
    product: ProductOpt,
) -> None:
    """Register every device of a CSV file, or none if any line is bad."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput("file", f"cannot read {file}: {exc}") from None
    count = devices.import_devices(context().engine, product, text)
    console.print(f"imported {count} devices into {product}")


@device_app.command("list")
@handle_errors
def list_(
    product: Annotated[
        str | None, typer.Option("--product", "-p", help="Only this product.")
    ] = None,
    json: JsonOpt = False,
) -> None:
    """List devices with each module's version and whether they are online."""
    found = devices.list_devices(context().engine, product)
    if json:
        print_json([d.to_dict() for d in found])
        return
    table = Table("product", "device", "versions", "online", "last seen")
    for d in found:
        versions = ", ".join(f"{m}={v}" for m, v in d.versions.items()) or "-"
        seen = f"{d.last_seen:%Y-%m-%d %H:%M:%S}" if d.last_seen else "-"
        table.add_row(d.product_key, d.name, versions, "yes" if d.online else "no", seen)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `ota` app."""
    app.add_typer(device_app, name="device")
