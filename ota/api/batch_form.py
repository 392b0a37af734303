"""The console's Batch Update form, made from ota.batch_options: an option with a widget of a
kind the form knows (a number, a select) is rendered by _dialog_batch.html's loop, and
firmware.js sends it under its API name. The targeting options and the schedule have markup of
their own (checklists, radios)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ota.batch_options import BY_NAME, DEFAULTS, OPTIONS, TYPES, Option, Widget, grouped

# The options batch_detail.html has its own line for: the seed's.
SEED_OPTIONS = frozenset(
    ("policy", "src_versions", "target", "device_names", "percent", "scheduled_at")
    + ("rate_per_minute", "retry_interval_minutes", "max_retries", "timeout_minutes")
)


@dataclass(frozen=True)
class FormOption:
    api: str
    label: str
    widget: str
    low: float | None
    high: float | None
    suggested: Any
    step: str  # a number's: "any" for a float option
    placeholder: str
    # (the value as JSON, as firmware.js sends it; its label; chosen at first)
    choices: list[tuple[str, str, bool]]


def _form_option(opt: Option) -> FormOption:
    default = DEFAULTS[opt.name]
    return FormOption(
        api=opt.api,
        label=opt.label,
        widget=opt.widget,
        low=opt.low,
        high=opt.high,
        suggested=opt.suggested,
        step="any" if TYPES[opt.name] is float else "1",
        placeholder=opt.example or (f"{opt.low:g} to {opt.high:g}" if opt.low is not None else ""),
        choices=[
            (json.dumps(value), label, value == default and type(value) is type(default))
            for value, label in zip(opt.choices, opt.labels, strict=True)
        ],
    )


def batch_form() -> dict[str, Any]:
    """What _dialog_batch.html renders: the options by group, and the phased range."""
    groups = [
        (group, [_form_option(o) for o in options if o.widget is not Widget.OWN])
        for group, options in grouped()
    ]
    return {"form_groups": [(g, opts) for g, opts in groups if opts], "percent": BY_NAME["percent"]}


def option_facts(batch: dict[str, Any]) -> list[tuple[str, str]]:
    """What the batch page says of the options the seed has no line for (batch_detail.html has
    the seed's own): each one's label and value, as the form words them."""
    facts = []
    for opt in OPTIONS:
        if opt.name in SEED_OPTIONS or opt.name not in batch:
            continue
        value = batch[opt.name]
        if opt.many:
            facts.append((opt.label, ", ".join(map(str, value)) or "None"))
            continue
        words = dict(zip(opt.choices, opt.labels, strict=False))
        facts.append((opt.label, words.get(value, "None" if value is None else str(value))))
    return facts
