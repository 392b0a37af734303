"""What every `ota` subcommand shares: settings, error handling, JSON output."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from ota.context import Context
from ota.errors import InvalidInput, OtaError

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True, soft_wrap=True)  # a message is one line, also in a pipe
console = Console()


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
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
