"""`ota firmware`: add firmware files, make differential packages, list, show, delete."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ota.db.models import Firmware
from ota.errors import InvalidInput
from ota.services import diff, firmware
from ota.services.paging import PAGE_MAX
from ota.services.security import SIGN_WITH, SIGN_WITH_CHOICES
from starter.common import (
    console,
    context,
    err_console,
    handle_errors,
    print_json,
    table_or_lines,
)

firmware_app = typer.Typer(help="Firmware files: add, diff, list, show, delete.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the record(s) as JSON.")]


@firmware_app.command("add")
@handle_errors
def add(
    file: Annotated[
        Path, typer.Argument(help=".bin, .tar, .gz, .tar.gz, .zip or .gzip, <= 1,000 MB")
    ],
    product: Annotated[str, typer.Option("--product", "-p", help="Product key.")],
    name: Annotated[str, typer.Option(help="4-32 letters, digits and _, not starting with _.")],
    version: Annotated[
        str | None, typer.Option(help="Firmware version (required for full).")
    ] = None,
    module: Annotated[str | None, typer.Option(help="Firmware module [default: default].")] = None,
    type: Annotated[str, typer.Option("--type", help="full or diff.")] = "full",
    src_version: Annotated[
        list[str] | None,
        typer.Option("--src-version", help="Version a diff applies to; repeatable."),
    ] = None,
    dest_version: Annotated[
        str | None, typer.Option(help="Version after a diff is applied.")
    ] = None,
    sign_method: Annotated[str, typer.Option(help="MD5 or SHA256.")] = "MD5",
    description: Annotated[str | None, typer.Option(help="Up to 100 characters.")] = None,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Mark it verified at once (NeedToVerify=false).")
    ] = False,
    ext: Annotated[
        list[str] | None,
        typer.Option("--ext", help="extData for devices, KEY=VALUE; repeatable."),
    ] = None,
    sign_with: Annotated[
        str | None,
        typer.Option(
            "--sign-with",
            help="Secure update: `previous` signs this firmware with the key before the last "
            "rotation (the firmware that carries the new public key; docs/security.md).",
        ),
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Upload a firmware file: every rule is checked before the file is stored."""
    if not file.is_file():
        raise InvalidInput("file", f"{file} is not a readable file")
    ext_data = _ext_pairs(ext or [])
    if sign_with is not None:
        if sign_with not in SIGN_WITH_CHOICES:
            raise InvalidInput("sign_with", f"must be one of {', '.join(SIGN_WITH_CHOICES)}")
        ext_data[SIGN_WITH] = sign_with
    ctx = context()
    with file.open("rb") as src:
        fw = firmware.add_firmware(
            ctx.engine,
            ctx.store,
            ctx.settings,
            src=src,
            file_name=file.name,
            product_key=product,
            name=name,
            version=version,
            module=module,
            type=type,
            src_versions=src_version or (),
            dest_version=dest_version,
            sign_method=sign_method,
            description=description,
            need_verify=not no_verify,
            ext_data=ext_data,
        )
    if json:
        print_json(firmware.firmware_public(fw))
    else:
        console.print(
            f"added firmware [bold]{fw.id}[/bold]: {fw.name} {fw.version} "
            f"({human_size(fw.size)}, {fw.sign_method} {fw.sign}, {fw.state})"
        )


def _ext_pairs(pairs: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or key.startswith("_"):
            raise InvalidInput("ext", f"{pair!r}: use KEY=VALUE, KEY not starting with _")
        found[key] = value
    return found


@firmware_app.command("diff")
@handle_errors
def make_diff(
    from_id: Annotated[int, typer.Option("--from", help="Firmware id of the installed image.")],
    to_id: Annotated[int, typer.Option("--to", help="Firmware id of the image to update to.")],
    name: Annotated[
        str | None, typer.Option("--name", help="Firmware name [default: <to's name>_diff].")
    ] = None,
    description: Annotated[str | None, typer.Option(help="Up to 100 characters.")] = None,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Mark it verified at once (NeedToVerify=false).")
    ] = False,
    json: JsonOpt = False,
) -> None:
    """Make a differential package (bsdiff) from one full firmware to another and add it.

    Devices on --from's version get it with isDiff=1; the SDK patches its installed image and
    checks the result against --to's SHA-256 before installing.
    """
    ctx = context()
    result = diff.create_diff(
        ctx.engine,
        ctx.store,
        ctx.settings,
        from_id,
        to_id,
        name=name,
        description=description,
        need_verify=not no_verify,
    )
    fw = result.firmware
    if json:
        print_json(firmware.firmware_public(fw) | {"seconds": round(result.seconds, 2)})
        return
    console.print(
        f"added firmware [bold]{fw.id}[/bold]: {fw.name} {', '.join(fw.src_versions)} -> "
        f"{fw.version}, {human_size(fw.size)} for a {human_size(result.target_size)} image "
        f"(saves {human_size(result.saved_bytes)}, "
        f"{100 * result.saved_bytes / result.target_size:.1f}%; {result.seconds:.1f}s), "
        f"{fw.state}"
    )


@firmware_app.command("list")
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
    """List firmware files, a page at a time."""
    page = firmware.firmware_page(context().engine, product, limit, after_id)
    found = page.items
    if page.next_after_id is not None:  # on stderr: the JSON on stdout stays the list
        err_console.print(f"more: --after-id {page.next_after_id}", markup=False)
    if json:
        print_json([firmware.firmware_public(fw) for fw in found])
        return
    table = Table("id", "product", "name", "module", "version", "type")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for fw in found:
        table.add_row(
            str(fw.id),
            fw.product_key,
            fw.name,
            fw.module,
            _version(fw),
            fw.type,
            human_size(fw.size),
            fw.state,
        )
    table_or_lines(
        table,
        (
            f"{fw.id} {fw.product_key}/{fw.module} {fw.name} {_version(fw)} ({fw.type}, "
            f"{human_size(fw.size)}): {fw.state}"
            for fw in found
        ),
    )


def _version(fw: Firmware) -> str:
    """A full firmware's version; a diff's sources and target."""
    return fw.version if fw.type == "full" else f"{','.join(fw.src_versions)} -> {fw.version}"


@firmware_app.command("show")
@handle_errors
def show(id: Annotated[int, typer.Argument(help="Firmware id.")], json: JsonOpt = False) -> None:
    """Show one firmware file's record."""
    data = firmware.firmware_public(firmware.get_firmware(context().engine, id))
    if json:
        print_json(data)
        return
    table = Table("field", "value", show_header=False)
    for key, value in data.items():
        if isinstance(value, list):
            shown = ", ".join(value)
        elif isinstance(value, dict):
            shown = jsonlib.dumps(value)
        else:
            shown = str(value)
        table.add_row(key, shown)
    console.print(table)


@firmware_app.command("delete")
@handle_errors
def delete(id: Annotated[int, typer.Argument(help="Firmware id.")]) -> None:
    """Delete a firmware file and its finished batches; refused while a batch is active."""
    ctx = context()
    firmware.delete_firmware(ctx.engine, ctx.store, id)
    console.print(f"deleted firmware {id}")


def human_size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `ota` app."""
    app.add_typer(firmware_app, name="firmware")
