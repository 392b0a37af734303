"""`ota product`: register products, list them, and manage their secure-update keys."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ota.services import products, security
from starter.common import console, context, handle_errors, print_json

product_app = typer.Typer(help="Products: every device and firmware file belongs to one.")
KeyArg = Annotated[str, typer.Argument(help="Product key.")]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the record(s) as JSON.")]


@product_app.command("add")
@handle_errors
def add(
    product_key: Annotated[str, typer.Argument(help="Product key: 1-64 letters, digits, _ or -.")],
    name: Annotated[str, typer.Option("--name", help="Display name.")],
    json: JsonOpt = False,
) -> None:
    """Register a product."""
    product = products.add_product(context().engine, product_key, name)
    if json:
        print_json(products.product_public(product))
    else:
        console.print(f"added product [bold]{product.product_key}[/bold] ({product.name})")


@product_app.command("list")
@handle_errors
def list_(json: JsonOpt = False) -> None:
    """List products."""
    found = products.list_products(context().engine)
    if json:
        print_json([products.product_public(p) for p in found])
        return
    table = Table("product key", "name", "secure update", "created")
    for p in found:
        table.add_row(
            p.product_key,
            p.name,
            "yes" if p.secure_update else "no",
            f"{p.created_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)


@product_app.command("secure-update")
@handle_errors
def secure_update(
    product_key: KeyArg,
    on: Annotated[
        bool,
        typer.Option("--on/--off", help="Sign every push (digestsign), or stop signing."),
    ],
    json: JsonOpt = False,
) -> None:
    """Secure update (AliOS Things): --on creates the product's RSA-2048 key pair if needed."""
    ctx = context()
    shown = security.set_secure_update(ctx.engine, ctx.settings, product_key, on)
    if json:
        print_json(shown)
        return
    state = "activated" if on else "deactivated"
    console.print(f"secure update {state} for [bold]{product_key}[/bold]")
    if on:
        console.print(f"public key: `ota product public-key {product_key}` (for device makers)")


@product_app.command("public-key")
@handle_errors
def public_key(
    product_key: KeyArg,
    previous: Annotated[
        bool, typer.Option("--previous", help="The key before the last rotation.")
    ] = False,
) -> None:
    """Print the public key PEM devices verify digestsign with (the private key never leaves)."""
    typer.echo(security.public_key(context().engine, product_key, previous).strip())


@product_app.command("rotate-key")
@handle_errors
def rotate_key(product_key: KeyArg, json: JsonOpt = False) -> None:
    """Start a key rotation: a new key pair signs from now on, except firmware added with
    --sign-with previous (the update that gives devices the new public key)."""
    ctx = context()
    status = security.rotate_key(ctx.engine, ctx.settings, product_key)
    if json:
        print_json(status)
        return
    console.print(
        f"new key {status['key'][:16]} for [bold]{product_key}[/bold] (previous "
        f"{status['previous_key'][:16]}). Next: build firmware that embeds "
        f"`ota product public-key {product_key}`, add it with --sign-with previous, roll it "
        f"out, then `ota product retire-key {product_key}`."
    )


@product_app.command("retire-key")
@handle_errors
def retire_key(
    product_key: KeyArg,
    force: Annotated[
        bool, typer.Option("--force", help="Even while a carrier batch is active.")
    ] = False,
    json: JsonOpt = False,
) -> None:
    """End a key rotation: forget the previous key (devices still on it can no longer verify)."""
    status = security.retire_previous_key(context().engine, product_key, force)
    if json:
        print_json(status)
        return
    console.print(f"previous key of [bold]{product_key}[/bold] retired; key {status['key'][:16]}")


@product_app.command("keys")
@handle_errors
def keys(product_key: KeyArg, json: JsonOpt = False) -> None:
    """Key fingerprints (SHA-256 of the public key) and whether a rotation is under way."""
    status = security.key_status(context().engine, product_key)
    if json:
        print_json(status)
        return
    table = Table("field", "value", show_header=False)
    for key, value in status.items():
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `ota` app."""
    app.add_typer(product_app, name="product")
