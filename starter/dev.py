"""`ota dev`: run the whole platform locally in the foreground; Ctrl-C stops everything."""

from __future__ import annotations

import logging
import time

import typer

from ota.api.auth import TOKEN_FILE
from ota.context import Context
from ota.devstack import DevStack
from ota.errors import OtaError
from ota.identity.control import ControlError
from ota.mqtt import redact
from ota.services.device_identity import sync
from ota.settings import Settings, get_settings, secret_file
from ota.shutdown import stop_on_signals
from starter.common import setup_logging

log = logging.getLogger("ota.dev")


def _api_token(stack: DevStack) -> str:
    """The API token: OTA_API_TOKEN, or one generated once and kept under OTA_HOME."""
    if stack.settings.api_token:
        return stack.settings.api_token
    return secret_file(stack.home / TOKEN_FILE, 24)  # the file `ota api` reads (resolve_token)


def dev(
    demo: bool = typer.Option(
        False, "--demo", help="Also register a demo fleet of 50 simulated devices and update it."
    ),
) -> None:
    """Run Temporal, an MQTT broker, the worker, the bridge and the HTTP server together."""
    setup_logging()
    stop_on_signals()
    settings = get_settings()
    stack = DevStack(settings)
    stack.home.mkdir(parents=True, exist_ok=True)
    token = _api_token(stack)
    stack.child_env["OTA_API_TOKEN"] = token
    try:
        stack.start(stack.temporal())
        broker = stack.broker()
        stack.start(broker)
        _sync_broker(stack, reused=broker.reused)
        metrics = stack.metrics_ports()
        for name in ("worker", "bridge", "api"):
            stack.start(stack.ota_service(name, name))
        _banner(stack, token, metrics)
        if demo:
            from ota.demo import run_demo

            run_demo(stack)
        while (gone := stack.exited()) is None:
            time.sleep(1)
        log.error("%s exited; see %s/%s.log. Stopping.", gone.name, stack.logs, gone.name)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        stack.stop()


def _sync_broker(stack: DevStack, reused: bool) -> None:
    """Give the broker the services' and every registered device's users (a broker that lost
    its state is rebuilt). A broker we did not start may not enforce device identity at all."""
    settings = stack.settings
    if settings.broker_auth == "none":
        return
    if reused:  # an anonymous broker never answers the plugin's topic: don't wait long
        settings = Settings(**{**settings.model_dump(), "broker_timeout_seconds": 5})
    try:
        report = sync(Context(settings).engine, settings)
    except (OtaError, ControlError) as exc:
        if not reused:
            raise
        stack.without_device_identity(
            f"the broker already running at {redact(settings.mqtt_url)} {exc}"
        )
        return
    log.info("broker: %d device users checked, %d changed", report.devices, report.changed)


def _banner(stack: DevStack, token: str, metrics: dict[str, int]) -> None:
    s = stack.settings
    scrape = ", ".join(f"http://{s.metrics_host}:{p}/metrics ({n})" for n, p in metrics.items())
    typer.echo(
        "\nota is running.\n"
        f"  console and API   http://{s.http_host}:{s.http_port}/   (API token: {token})\n"
        f"  Temporal Web UI   {stack.temporal_ui()}/namespaces/{s.temporal_namespace}\n"
        f"  MQTT broker       {redact(s.mqtt_url)}\n"
        f"  metrics           {scrape}\n"
        f"  data and logs     {stack.home}\n"
        "Press Ctrl-C to stop.\n"
    )


def register(app: typer.Typer) -> None:
    app.command("dev")(dev)
