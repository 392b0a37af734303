"""`ota device credentials|disable|enable|delete|rotate-secret` and `ota broker sync|config`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from ota.broker_tier import bridge_lines
from ota.errors import InvalidInput
from ota.identity.accounts import ServiceRole, service_password
from ota.identity.broker_setup import broker_security, usable_broker_auth
from ota.services import device_identity
from starter.common import console, context, handle_errors, print_json

broker_app = typer.Typer(help="The MQTT broker's users and ACLs, made from the device registry.")

ProductArg = Annotated[str, typer.Argument(help="Product key.")]
NameArg = Annotated[str, typer.Argument(help="Device name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@handle_errors
def credentials(product: ProductArg, name: NameArg, json: JsonOpt = False) -> None:
    """The device's MQTT connection parameters (host, port, client id, username, password)."""
    ctx = context()
    _show(device_identity.credentials(ctx.engine, ctx.settings, product, name), json)


CREDENTIALS = (
    "product_key", "device_name", "device_secret", "host", "port", "tls",
    "client_id", "username", "password",
)  # fmt: skip


def _show(found: dict, json: bool) -> None:
    if json:
        print_json(found)
        return
    for key in CREDENTIALS:
        console.print(f"{key:14} {found[key]}", highlight=False, markup=False)
    if not found["enabled"]:
        console.print("[yellow]disabled: the broker refuses this device[/yellow]")


@handle_errors
def disable(product: ProductArg, name: NameArg) -> None:
    """Refuse the device on the broker: its live connection is dropped at once."""
    ctx = context()
    device_identity.set_enabled(ctx.engine, ctx.settings, product, name, False)
    console.print(f"disabled {product}/{name}")


@handle_errors
def enable(product: ProductArg, name: NameArg) -> None:
    """Let a disabled device connect again."""
    ctx = context()
    device_identity.set_enabled(ctx.engine, ctx.settings, product, name, True)
    console.print(f"enabled {product}/{name}")


@handle_errors
def delete(product: ProductArg, name: NameArg) -> None:
    """Forget a device (refused while one of its tasks is active); the broker drops it."""
    ctx = context()
    device_identity.delete_device(ctx.engine, ctx.settings, product, name)
    console.print(f"deleted {product}/{name}")


@handle_errors
def rotate_secret(product: ProductArg, name: NameArg, json: JsonOpt = False) -> None:
    """A new DeviceSecret; the old one stops working at once. Prints the new parameters."""
    ctx = context()
    _show(device_identity.rotate_secret(ctx.engine, ctx.settings, product, name), json)


@broker_app.command("sync")
@handle_errors
def sync(json: JsonOpt = False) -> None:
    """Make the broker's users and ACLs agree with the registry (idempotent; rebuilds a broker
    that lost its state; gives devices registered before device identity their secrets)."""
    ctx = context()
    report = device_identity.sync(ctx.engine, ctx.settings)
    if json:
        print_json(report.to_dict())
        return
    console.print(
        f"{report.devices} devices: {report.created} created, {report.updated} updated, "
        f"{report.disabled} disabled, {report.enabled} enabled, {report.deleted} deleted"
        + (f"; {report.secrets_created} new secrets" if report.secrets_created else "")
    )


@broker_app.command("config")
@handle_errors
def config(
    folder: Annotated[Path, typer.Argument(help="Where Mosquitto keeps the plugin and its users.")],
    leaf_of: Annotated[
        str | None,
        typer.Option(
            "--leaf-of",
            help="HOST:PORT of a broker tier's hub (docs/deploy.md): this broker is a leaf, and"
            " gets the bridge to it too.",
        ),
    ] = None,
    leaf_name: Annotated[
        str, typer.Option("--leaf-name", help="With --leaf-of: this leaf's name, one per leaf.")
    ] = "ota-leaf-0",
) -> None:
    """Build the ota_auth plugin into FOLDER (where it cannot be built: create the
    dynamic-security plugin's file there), and print the lines a mosquitto.conf needs. Run
    `ota broker sync` once Mosquitto runs with them."""
    if leaf_of is not None and not re.fullmatch(r"[^\s:]+:\d{1,5}", leaf_of):
        raise InvalidInput("leaf_of", f"{leaf_of!r}: must be HOST:PORT of the hub")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", leaf_name):
        raise InvalidInput("leaf_name", f"{leaf_name!r}: letters, digits, '.', '_', '-' only")
    settings = context().settings
    folder = folder.resolve()
    wanted = "plugin" if settings.broker_auth == "none" else settings.broker_auth
    settings = settings.model_copy(update={"broker_auth": wanted})
    usable = usable_broker_auth(settings, folder)
    security = broker_security(settings.model_copy(update={"broker_auth": usable}), folder)
    files = ", ".join(str(f) for f in security.files)
    console.print(
        f"# {files}: make {folder} writable by the user Mosquitto runs as\n"
        "# add to mosquitto.conf:",
        highlight=False,
    )
    typer.echo(security.lines)
    if leaf_of is not None:
        console.print(
            "# this leaf's bridge to the hub (set OTA_BROKER_LEAF_URLS too):", highlight=False
        )
        password = service_password(settings, ServiceRole.LEAF)
        typer.echo(bridge_lines(leaf_name, leaf_of, password))
    if usable != wanted:
        console.print("# ota_auth cannot be built here (see above)", highlight=False)
    if usable == "dynsec":
        console.print("# set OTA_BROKER_AUTH=dynsec on every ota process", highlight=False)


def register(app: typer.Typer, device_app: typer.Typer) -> None:
    """Add this area's commands: the device ones to `ota device`, and `ota broker`."""
    device_app.command("credentials")(credentials)
    device_app.command("disable")(disable)
    device_app.command("enable")(enable)
    device_app.command("delete")(delete)
    device_app.command("rotate-secret")(rotate_secret)
    app.add_typer(broker_app, name="broker")
