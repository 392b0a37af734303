"""`ota product`: register products and list them."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ota.services import products
from starter.common import console, context, handle_errors, print_json

product_app = typer.Typer(help="Products: every device and firmware file belongs to one.")

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


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `ota` app."""
    app.add_typer(product_app, name="product")
