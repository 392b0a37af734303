"""`ota batch create`'s options, made from ota.batch_options: one typer option per batch option,
named by its flag (`--rate`), with its help; a message names it as the flag does ("rate")."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Annotated, Any, get_type_hints

import typer

from ota.batch_options import (
    API_TO_CLI,
    DEFAULTS,
    OPTIONS,
    TYPES,
    Option,
    read_options,
)
from ota.errors import renamed

PANELS = {"targeting": "Targeting", "pacing": "Pacing", "retry": "Retry", "timeout": "Timeout"}


def _cli_type(opt: Option) -> Any:
    """What typer parses: a list for a repeatable option, text where there are spellings
    ("10m"), else the option's own type (typer refuses `--rate fast` itself)."""
    if opt.many:
        return list[str] | None
    if opt.spellings or opt.cloud_type is not None:
        return str | None
    return TYPES[opt.name] | None


def _parameter(opt: Option) -> inspect.Parameter:
    default = DEFAULTS[opt.name]
    shown = "none" if opt.spellings and default is None else default  # --retry-interval none
    return inspect.Parameter(
        opt.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            _cli_type(opt),
            typer.Option(
                opt.flag,
                help=opt.help,
                show_default=str(shown) if shown not in (None, []) else False,
                rich_help_panel=PANELS.get(opt.group, opt.group.title()),
            ),
        ],
    )


def with_batch_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give `command` every batch option as a CLI option; it receives them read (their stored
    spelling, defaults filled) as `options`, a dict of BatchOptions' fields."""
    own = [p for p in inspect.signature(command).parameters.values() if p.name != "options"]
    added = [_parameter(opt) for opt in OPTIONS]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        sent = {opt.name: kwargs.pop(opt.name, None) for opt in OPTIONS}
        with cli_names():
            options = read_options(sent)
        return command(*args, options=options, **kwargs)

    hints = get_type_hints(command, include_extras=True)
    # The command's own options resolved too: under `from __future__ import annotations` the
    # signature holds strings, and typer took `--wait` for a bare bool (no help, a --no-wait).
    own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in own]
    params = [*own, *added]
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {
        **{p.name: hints[p.name] for p in own if p.name in hints},
        **{p.name: p.annotation for p in added},
    }
    return wrapper


def cli_names() -> AbstractContextManager[None]:
    """The services name an option as the API does (rate_per_minute): the CLI says `rate`."""
    return renamed(API_TO_CLI)
