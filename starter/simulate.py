"""`ota` subcommands: simulate (a fleet of simulated devices)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from ota import signing
from ota.device.simulator import (
    IMAGE_MIN,
    SEEN,
    FleetConfig,
    device_name,
    processes_for,
    run_fleet_processes,
    synth_image,
)
from ota.domain import DEFAULT_MODULE
from ota.errors import InvalidInput
from ota.mqtt import MqttEndpoint
from ota.services import device_identity
from ota.services.devices import register_fleet
from ota.settings import Settings
from starter.common import context, handle_errors, setup_logging

log = logging.getLogger("ota.simulate")


@handle_errors
def simulate(
    product: str = typer.Option(..., "--product", help="Product key of the devices."),
    devices: int = typer.Option(10, "--devices", min=1, help="How many devices."),
    version: str = typer.Option(..., "--version", help="The version every device starts on."),
    module: str = typer.Option(DEFAULT_MODULE, "--module", help="The module that version is of."),
    prefix: str = typer.Option("sim-", "--prefix", help="Device names: PREFIX00000, ..."),
    register: bool = typer.Option(False, "--register", help="Create the product and devices."),
    fail_rate: float = typer.Option(0.0, "--fail-rate", min=0, max=1, help="Report -1."),
    download_fail_rate: float = typer.Option(0.0, "--download-fail-rate", min=0, max=1),
    verify_fail_rate: float = typer.Option(0.0, "--verify-fail-rate", min=0, max=1),
    install_fail_rate: float = typer.Option(0.0, "--install-fail-rate", min=0, max=1),
    offline: int = typer.Option(0, "--offline", min=0, help="Devices that connect late."),
    offline_delay: float = typer.Option(
        30.0, "--offline-delay", help="Seconds they wait (or until SIGUSR1)."
    ),
    install_seconds: float = typer.Option(1.0, "--install-seconds", min=0),
    duration: float | None = typer.Option(None, "--duration", help="Seconds; default: Ctrl-C."),
    processes: int = typer.Option(1, "--processes", min=1, help="Spread over this many."),
    seed: int | None = typer.Option(None, "--seed", help="Make the failures repeatable."),
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="PEM file (`ota product public-key`): devices verify digestsign (secure update).",
        ),
    ] = None,
    image_size: int = typer.Option(
        256 * 1024, "--image-size", min=IMAGE_MIN, help="Bytes of each synthesized image."
    ),
    export_image: Annotated[
        Path | None,
        typer.Option(
            "--export-image",
            help="Write the image devices on --version run to this file and exit (to upload "
            "it, or to build a differential package from two of them).",
        ),
    ] = None,
    mqtt_protocol: str | None = typer.Option(
        None,
        "--mqtt-protocol",
        help="5 or 3.1.1 (what Alibaba's device SDKs speak); default: OTA_MQTT_PROTOCOL.",
    ),
    state_file: Annotated[
        Path | None,
        typer.Option(
            "--state-file",
            help="On stopping, write the versions each device runs (JSON) to this file.",
        ),
    ] = None,
    report_file: Annotated[
        Path | None,
        typer.Option(
            "--report-file",
            help="On stopping, write what the devices saw (the summary, JSON) to this file.",
        ),
    ] = None,
    connect_rate: float | None = typer.Option(
        None,
        "--connect-rate",
        min=1,
        help="Connections opened per second by the whole fleet, reconnects included"
        " (jittered); default: 500 a process.",
    ),
    flapping: int = typer.Option(
        0, "--flapping", min=0, help="Devices whose network flaps (they drop and reconnect)."
    ),
    flap_seconds: float = typer.Option(
        60.0, "--flap-seconds", min=1, help="How often each flapping device drops, about."
    ),
    mqtt_urls: Annotated[
        list[str] | None,
        typer.Option(
            "--mqtt-url",
            help="A broker the devices connect to; repeat it to spread them over several (a"
            " broker tier's leaves, docs/deploy.md). Default: OTA_DEVICE_MQTT_URL, else"
            " OTA_BROKER_LEAF_URLS, else OTA_MQTT_URL.",
        ),
    ] = None,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run simulated devices that take updates like real ones; prints a summary at the end."""
    if export_image is not None:
        export_image.write_bytes(synth_image(module, version, image_size))
        typer.echo(f"wrote {export_image} ({image_size} bytes, {module} {version})")
        return
    pem = None
    if public_key is not None:
        try:
            pem = public_key.read_text()
            signing.load_public_key(pem)
        except (OSError, UnicodeDecodeError, signing.SigningError) as exc:
            raise InvalidInput("public_key", f"{public_key}: {exc}") from None
    if mqtt_protocol not in (None, "5", "3.1.1"):
        raise InvalidInput("mqtt_protocol", f"{mqtt_protocol!r}: must be 5 or 3.1.1")
    setup_logging(verbose)
    if not verbose:
        logging.getLogger("ota.device").setLevel(logging.ERROR)
        logging.getLogger("httpx").setLevel(logging.WARNING)
    ctx = context()
    names = [device_name(prefix, i) for i in range(devices)]
    if register:
        registered = register_fleet(ctx.engine, ctx.settings, product, names)
        log.info("registered %d new devices in %s", len(registered), product)
    secrets = None
    if ctx.settings.broker_auth != "none":
        secrets = device_identity.secrets_of(ctx.engine, ctx.settings, product, names)
    urls = _broker_urls(mqtt_urls, ctx.settings)
    needed = processes_for(devices)
    if needed > processes:  # each device is a socket; a process may open only so many
        log.info("%d devices: %d processes (the open-file limit)", devices, needed)
        processes = needed
    cfg = FleetConfig(
        product_key=product,
        devices=devices,
        version=version,
        module=module,
        prefix=prefix,
        mqtt_url=urls[0],
        mqtt_urls=tuple(urls) if len(urls) > 1 else (),
        mqtt_protocol=mqtt_protocol or ctx.settings.mqtt_protocol,
        secrets=secrets,
        ca_file=_path(ctx.settings.mqtt_ca_file),
        cert_file=_path(ctx.settings.mqtt_cert_file),
        key_file=_path(ctx.settings.mqtt_key_file),
        fail_rate=fail_rate,
        download_fail_rate=download_fail_rate,
        verify_fail_rate=verify_fail_rate,
        install_fail_rate=install_fail_rate,
        offline=min(offline, devices),
        offline_delay=offline_delay,
        install_seconds=install_seconds,
        duration=duration,
        seed=seed,
        public_key=pem,
        image_size=image_size,
        state_file=_path(state_file),
        connect_rate=connect_rate,
        flapping=min(flapping, devices),
        flap_seconds=flap_seconds,
    )
    summary = run_fleet_processes(cfg, min(processes, devices))
    failed = sum(v for k, v in summary.items() if k.startswith("failed_"))
    typer.echo(
        f"devices {summary.get('devices', 0)}, connected {summary.get('connected_once', 0)}, "
        f"updated {summary.get('updated', 0)}, failed {failed}"
        + "".join(f", {k} {v}" for k, v in sorted(summary.items()) if k.startswith("failed_"))
    )
    typer.echo(_seen(summary))
    if report_file is not None:
        report_file.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def _seen(summary: dict[str, float]) -> str:
    """What the devices saw: pushes, duplicates, downloads, connections, push-to-install."""
    line = ", ".join(f"{name} {summary.get(name, 0)}" for name in SEEN)
    if "install_p50_s" in summary:
        line += (
            f"; push to install p50 {summary['install_p50_s']:.2f} s,"
            f" p99 {summary['install_p99_s']:.2f} s"
        )
    return line


def _broker_urls(given: list[str] | None, settings: Settings) -> list[str]:
    if given:
        for url in given:
            try:
                MqttEndpoint.from_url(url)
            except ValueError as exc:
                raise InvalidInput("mqtt_url", str(exc)) from None
        return given
    if settings.device_mqtt_url:
        return [settings.device_mqtt_url]
    return settings.leaf_urls or [settings.mqtt_url]


def _path(path: Path | None) -> str | None:
    """FleetConfig travels to worker processes: plain strings."""
    return str(path) if path else None


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `ota` app."""
    app.command("simulate")(simulate)
