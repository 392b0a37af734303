"""`ota batch`: create update batches, list, show, cancel, pause, resume and promote them, and
list their tasks."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from ota.batch_options import DEFAULTS, OPTIONS
from ota.contracts import BatchInput, batch_workflow_id
from ota.db.engine import session_scope
from ota.errors import InvalidInput
from ota.services import batch_preview, batch_signals, batches
from ota.services.batch_preview import BatchPreview
from ota.services.paging import PAGE_MAX
from starter.batch_flags import cli_names, with_batch_options
from starter.common import (
    console,
    context,
    err_console,
    handle_errors,
    print_json,
    table_or_lines,
)
from starter.waiting import wait_showing_progress

batch_app = typer.Typer(
    help="Update batches: create, list, show, tasks, cancel, pause, resume, promote."
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@batch_app.command("create")
@handle_errors
@with_batch_options
async def create(
    firmware: Annotated[str, typer.Argument(help="Firmware id (or unique name).")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the batch to finish.")] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Create nothing: check the options and count the devices it would target "
            "(per source version and phase, offline, busy in another batch) and when the last "
            "push is due (rate, ramp, windows; time at phase gates not counted).",
        ),
    ] = False,
    json: JsonOpt = False,
    *,
    options: dict[str, Any],
) -> None:
    """Push a verified firmware to a fleet: static (devices matching now) or dynamic (later too)."""
    if wait and options["policy"] == "dynamic":
        raise InvalidInput("wait", "a dynamic batch runs until canceled: do not --wait for it")
    ctx = context()
    with session_scope(ctx.engine) as session:
        fw = batches.find_firmware(session, firmware)
    assert fw.id is not None
    inp = BatchInput(batch_id="", firmware_id=fw.id, **options)
    if dry_run:
        with cli_names():
            preview = batch_preview.preview_batch(ctx.engine, inp)
        if json:
            print_json(preview.to_dict())
        else:
            _print_preview(preview)
        return
    with cli_names():
        shown = await batches.create_batch(ctx, inp)
    if wait:
        await wait_showing_progress(ctx, batch_workflow_id(shown["id"]), shown["id"])
        shown = batches.show_batch(ctx.engine, shown["id"])
    if json:
        print_json(shown)
    else:
        _print_batch(shown)


@batch_app.command("list")
@handle_errors
def list_(
    firmware: Annotated[int | None, typer.Option(help="Only this firmware's batches.")] = None,
    state: Annotated[
        str | None,
        typer.Option(help="scheduled, in_progress, paused, completed, canceled or failed."),
    ] = None,
    limit: Annotated[int, typer.Option(help=f"At most this many (up to {PAGE_MAX}).")] = PAGE_MAX,
    after_id: Annotated[
        str | None, typer.Option(help="Those after this batch: the previous list's next page.")
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Batches, newest first, with their task counts, a page at a time."""
    page = batches.batch_page(context().engine, firmware, state, limit, after_id)
    rows = page.items
    if page.next_after_id is not None:  # on stderr: the JSON on stdout stays the list
        err_console.print(f"more: --after-id {page.next_after_id}", markup=False)
    if json:
        print_json(rows)
        return
    table = Table("id", "firmware", "kind", "state", "target", "tasks", "counts", "created")
    for b in rows:
        table.add_row(
            b["id"],
            str(b["firmware_id"]),
            b["kind"],
            b["state"],
            b["target_version"],
            str(b["total"]),
            _counts(b["counts"]),
            b["created_at"][:19],
        )
    table_or_lines(
        table,
        (
            f"{b['id']} {b['kind']} {b['state']}: firmware {b['firmware_id']} -> "
            f"{b['target_version']}, {b['total']} tasks ({_counts(b['counts']) or 'none yet'}), "
            f"created {b['created_at'][:19]}"
            for b in rows
        ),
    )


@batch_app.command("show")
@handle_errors
def show(batch: Annotated[str, typer.Argument(help="Batch id.")], json: JsonOpt = False) -> None:
    """One batch: its settings and how many tasks are in each state."""
    shown = batches.show_batch(context().engine, batch)
    if json:
        print_json(shown)
    else:
        _print_batch(shown)


@batch_app.command("tasks")
@handle_errors
def tasks(
    batch: Annotated[str, typer.Argument(help="Batch id.")],
    state: Annotated[
        str | None,
        typer.Option(help="to_be_pushed, pushed, in_upgrade, updated, failed or canceled."),
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option(help="Only tasks there for this reason: offline, timeout, busy, ..."),
    ] = None,
    limit: Annotated[int, typer.Option(help=f"At most this many (up to {PAGE_MAX}).")] = PAGE_MAX,
    after_id: Annotated[
        int, typer.Option(help="Those after this id: the previous list's next page.")
    ] = 0,
    json: JsonOpt = False,
) -> None:
    """The batch's devices and their states (with the reason: offline, timing, busy, ...), a
    page at a time."""
    page = batches.task_page(context().engine, batch, state, reason, limit, after_id)
    rows = page.items
    if page.next_after_id is not None:  # on stderr: the JSON on stdout stays the list
        err_console.print(f"more: --after-id {page.next_after_id}", markup=False)
    if json:
        print_json(rows)
        return
    table = Table("device", "state", "progress", "attempts", "from", "pushed at")
    for t in rows:
        table.add_row(
            t["device_name"],
            t["label"] + (f" [yellow]({t['note']})[/]" if t["note"] else ""),
            "" if t["progress"] is None else f"{t['progress']}%",
            str(t["attempts"]),
            t["from_version"] or "",
            (t["pushed_at"] or "")[:19],
        )
    table_or_lines(table, map(_task_line, rows))


def _task_line(t: dict[str, Any]) -> str:
    said = [t["label"] + (f" ({t['note']})" if t["note"] else "")]
    if t["progress"] is not None:
        said.append(f"{t['progress']}%")
    said.append(f"{t['attempts']} attempt{'' if t['attempts'] == 1 else 's'}")
    if t["from_version"]:
        said.append(f"from {t['from_version']}")
    if t["pushed_at"]:
        said.append(f"pushed at {t['pushed_at'][:19]}")
    return f"{t['device_name']}: " + ", ".join(said)


@batch_app.command("cancel")
@handle_errors
async def cancel(
    batch: Annotated[str, typer.Argument(help="Batch id.")],
    all_: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Also cancel to_be_pushed, pushed and in_upgrade tasks (not only "
            "scheduled ones; for a dynamic batch, not only the policy).",
        ),
    ] = False,
    json: JsonOpt = False,
) -> None:
    """Static: cancel the scheduled tasks. Dynamic: cancel the policy. --all: every ongoing task."""
    result = await batch_signals.cancel_batch(context(), batch, all_)
    if json:
        print_json(result)
    else:
        console.print(f"cancel ({result['scope']}) sent to batch {batch}")


@batch_app.command("pause")
@handle_errors
async def pause(
    batch: Annotated[str, typer.Argument(help="Batch id.")], json: JsonOpt = False
) -> None:
    """Push nothing new until `ota batch resume`; devices already pushed finish."""
    _said("pause", batch, await batch_signals.pause_batch(context(), batch), json)


@batch_app.command("resume")
@handle_errors
async def resume(
    batch: Annotated[str, typer.Argument(help="Batch id.")], json: JsonOpt = False
) -> None:
    """Go on pushing a paused batch at its rate (also one its stop rule paused)."""
    _said("resume", batch, await batch_signals.resume_batch(context(), batch), json)


@batch_app.command("promote")
@handle_errors
async def promote(
    batch: Annotated[str, typer.Argument(help="Batch id.")], json: JsonOpt = False
) -> None:
    """Open the phase gate the batch waits at: its next phase is pushed (--promote manual, or
    ahead of --promote-at)."""
    result = await batch_signals.promote_batch(context(), batch)
    _said("promote", batch, result, json)
    if not json and not result["at_gate"]:
        console.print(
            "  no worker answered whether it waits at a phase gate: it opens the gate if it "
            "does and ignores the promote otherwise"
        )


def _said(signal: str, batch: str, result: dict[str, Any], json: bool) -> None:
    if json:
        print_json(result)
    else:
        console.print(f"{signal} sent to batch {batch}")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def _print_batch(b: dict[str, Any]) -> None:
    console.print(
        f"batch [bold]{b['id']}[/bold]: {b['kind']} {b['state']}, firmware {b['firmware_id']} "
        f"-> {b['target_version']} on {b['product_key']}/{b['module']}"
    )
    if b.get("state_note"):
        console.print(f"  [yellow]{b['state_note']}[/yellow]", highlight=False)
    for line in _rollback_lines(b):
        console.print(f"  [yellow]{line}[/yellow]", highlight=False)
    # Skipped devices already run the target: say so, as the console does.
    skipped = f", {b['skipped']} already on {b['target_version']}" if b["skipped"] else ""
    console.print(f"  {b['total']} tasks ({_counts(b['counts']) or 'none yet'}){skipped}")
    chosen = [
        f"{o.flag} {_shown(b[o.name])}"
        for o in OPTIONS
        if o.name in b and b[o.name] not in (None, [], DEFAULTS[o.name])
    ]
    if chosen:
        console.print("  " + " ".join(chosen), markup=False, highlight=False)


def _rollback_lines(b: dict[str, Any]) -> list[str]:
    """The rollback policy's links (ota/services/rollback.py): the batch it started, the one
    it rolls back, or why it started none."""
    lines = []
    if b.get("rollback_batch_id"):
        rb = b["rollback_batch_id"]
        lines.append(f"failed devices rolled back by batch {rb} (ota batch show {rb})")
    if b.get("rollback_problem"):
        lines.append(b["rollback_problem"])
    if b.get("rollback_of"):
        lines.append(f"rolls back the failed devices of batch {b['rollback_of']}")
    return lines


def _print_preview(p: BatchPreview) -> None:
    console.print(
        f"dry run, nothing created: a {p.kind} batch of firmware {p.firmware_id} "
        f"-> {p.target_version} on {p.product_key}/{p.module}"
    )
    versions = ", ".join(f"from {v}: {n}" for v, n in p.by_source_version.items())
    phased = f", {p.percent}% of {p.matching} matching" if p.percent else ""
    console.print(f"  {p.targets} devices targeted{phased}" + (f"; {versions}" if versions else ""))
    console.print(
        f"  {p.skipped} skipped (already on {p.target_version}), {p.offline} offline (pushed "
        f"when they come online), {p.busy} busy in another batch (they would fail busy)"
    )
    if p.phases:
        shown = ", ".join(f"{ph['percent']}%: {ph['devices']} (+{ph['added']})" for ph in p.phases)
        console.print(f"  phases (devices started by each, cumulative): {shown}")
    if p.rate_per_minute is None:
        first = f"; the first when the window opens, {p.first_push_at}" if p.windows else ""
        console.print(
            f"  no rate: pushed as fast as they can be started, from {p.starts_at}{first}"
        )
    else:
        console.print(f"  at {p.rate_per_minute} devices per minute from {p.starts_at}: {p.eta}")
    # Without an ETA the first note says why: said already (unthrottled, or in the line).
    for note in p.eta_notes[1:] if p.last_push_at is None else p.eta_notes:
        console.print(f"  note: {note}")


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def register(app: typer.Typer) -> None:
    app.add_typer(batch_app, name="batch")
