"""`ota temporal setup`: prepare a Temporal namespace for ota (its search attributes).

`ota dev` passes our search attributes to the dev server it starts. A Temporal cluster or
Temporal Cloud holds none until someone registers them, and the first workflow that upserts one
fails its workflow task. This registers them through the operator service, idempotently; it is
named `setup` rather than after search attributes so that whatever else a namespace comes to
need is added in the same step, which an operator runs once per namespace.
"""

from __future__ import annotations

from typing import Annotated

import typer
from temporalio.service import RPCError, RPCStatusCode

from ota.contracts import SEARCH_ATTRIBUTES
from ota.errors import Unavailable
from ota.temporal import ensure_search_attributes, search_attribute_state
from starter.common import console, context, handle_errors, print_json

temporal_app = typer.Typer(help="The Temporal namespace ota runs in.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@temporal_app.command("setup")
@handle_errors
async def setup(json: JsonOpt = False) -> None:
    """Register ota's search attributes (OtaBatchId, OtaProductKey, OtaState) in
    OTA_TEMPORAL_NAMESPACE. Idempotent: run it once per namespace, before the first batch."""
    ctx = context()
    client = await ctx.temporal()
    namespace = ctx.settings.temporal_namespace
    try:
        registered = await ensure_search_attributes(client)
        state = await search_attribute_state(client)
    except RPCError as exc:
        raise Unavailable(_refused(exc, namespace)) from None
    if json:
        print_json({"namespace": namespace, "registered": registered, **state.__dict__})
    elif registered:
        console.print(f"registered {', '.join(registered)} in namespace {namespace}")
    else:
        names = ", ".join(k.name for k in SEARCH_ATTRIBUTES)
        console.print(f"all there: {names} in namespace {namespace}")
    if state.wrong_type:
        clash = ", ".join(f"{n} is {t}" for n, t in state.wrong_type.items())
        raise Unavailable(
            f"namespace {namespace}: {clash}, ota needs Keyword: remove them "
            "(`temporal operator search-attribute remove --name ...`) and run this again"
        )


def _refused(exc: RPCError, namespace: str) -> str:
    """Why the operator service said no, and what to do instead."""
    if exc.status == RPCStatusCode.NOT_FOUND:
        return (
            f"namespace {namespace} does not exist: create it (`temporal operator namespace "
            f"create --namespace {namespace}`) or set OTA_TEMPORAL_NAMESPACE"
        )
    if exc.status in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED):
        args = " ".join(f"--search-attribute {k.name}=Keyword" for k in SEARCH_ATTRIBUTES)
        return (
            f"the operator service refused to register search attributes ({exc.message}). "
            f"On Temporal Cloud: `tcld namespace search-attributes add --namespace {namespace} "
            f"{args}`; "
            "elsewhere, use credentials of a namespace admin"
        )
    return f"Temporal refused: {exc.message}"


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `ota` app."""
    app.add_typer(temporal_app, name="temporal")
