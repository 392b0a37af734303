"""What every `ota` subcommand shares: settings, error handling, JSON output."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from ota.context import Context
from ota.errors import InvalidInput, OtaError

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True, soft_wrap=True)  # a message is one line, also in a pipe
console = Console()
UNBOUNDED_WIDTH = 10_000  # wider than any row of a table


def context() -> Context:
    return Context()


def handle_errors(fn: F) -> F:
    """Turn domain errors into a clear message and the documented exit code (2 input, 1 other)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
            if asyncio.iscoroutine(result):
                result = asyncio.run(result)
            return result
        except InvalidInput as exc:
            err_console.print(f"[red]error:[/red] {exc.field}: {exc.message}")
            raise typer.Exit(exc.exit_code) from None
        except OtaError as exc:
            err_console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def setup_logging(verbose: bool = False) -> None:
    """Text lines, or JSON ones with OTA_LOG_FORMAT=json (ota/ops/logs.py); secrets masked."""
    from ota.ops.logs import log_handler
    from ota.settings import get_settings

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        handlers=[log_handler(get_settings().log_format)],
    )


def setup_tracing(service_name: str) -> None:
    """Tracing for `ota api`, `ota worker` and `ota bridge`, when OTEL_* ask for it."""
    from ota.ops.tracing import setup_tracing as setup

    try:
        on = setup(service_name)
    except InvalidInput as exc:  # an OTEL_* variable we cannot honour
        err_console.print(f"[red]error:[/red] {exc.field}: {exc.message}")
        raise typer.Exit(exc.exit_code) from None
    if on:
        logging.getLogger("ota").info(
            "tracing on (OTEL_* variables), default service %s", service_name
        )


def table_or_lines(table: Table, lines: Iterable[str]) -> None:
    """The table when it fits the terminal. Too narrow (80 columns, a pipe), rich would cut
    "in_progress" to "in_pro…": one whole record a line instead, wrapped by the terminal rather
    than truncated."""
    if natural_width(table) <= console.width:
        console.print(table)
        return
    for line in lines:
        console.print(line, soft_wrap=True, markup=False, highlight=False)


def natural_width(table: Table) -> int:
    """The width the table needs with no cell cut or wrapped (console.measure stops at the
    terminal's width)."""
    unbounded = console.options.update_width(UNBOUNDED_WIDTH)
    return Measurement.get(console, unbounded, table).maximum
