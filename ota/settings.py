"""The one settings object, read from OTA_* environment variables."""

from __future__ import annotations

import contextlib
import os
import secrets
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OTA_", extra="ignore")

    home: Path = Path(".ota")
    database_url: str | None = None  # default: SQLite file under home
    storage_url: str | None = None  # default: folder under home; or s3://bucket/prefix
    s3_endpoint_url: str | None = None
    s3_key: str | None = None
    s3_secret: str | None = None
    # Hand devices presigned S3 URLs instead of streaming S3 through our own download route.
    s3_direct_urls: bool = False

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    task_queue: str = "ota"
    # A Temporal cluster or Temporal Cloud: TLS (with the cluster's CA unless it is a public one),
    # a client certificate for mTLS, or an API key (Temporal Cloud; implies TLS).
    temporal_tls: bool = False
    temporal_ca_file: Path | None = None
    temporal_cert_file: Path | None = None
    temporal_key_file: Path | None = None
    temporal_server_name: str | None = None  # TLS server name, when it differs from the address
    temporal_api_key: str | None = None

    mqtt_url: str = "mqtt://127.0.0.1:1883"
    # mqtts:// URLs: the broker's CA (default: the system's), and a client certificate if the
    # broker asks for one. Used by every MQTT client we run: bridge, worker, SDK, simulator.
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    # Device identity on the broker (docs/security.md): "plugin" keeps the users of our Mosquitto
    # plugin ota_auth in step with the device registry, "dynsec" those of Mosquitto's
    # dynamic-security plugin (where ota_auth cannot be built); "none" leaves the broker alone
    # (one that authenticates devices by other means, or a throwaway development broker).
    broker_auth: str = Field(default="plugin", pattern=r"^(plugin|dynsec|none)$")
    # The services' broker passwords are derived from it; generated under home if unset.
    mqtt_service_secret: str | None = None
    broker_timeout_seconds: float = Field(default=30.0, gt=0)
    # What devices are told to connect to (`ota device credentials`); default: mqtt_url's.
    device_mqtt_url: str | None = None
    # Which broker `ota dev` starts when none answers: mosquitto if installed, else embedded.
    dev_broker: str = Field(default="auto", pattern=r"^(auto|mosquitto|embedded)$")
    # "5" for Mosquitto/EMQX (shared subscriptions); "3.1.1" for the embedded amqtt broker.
    mqtt_protocol: str = Field(default="5", pattern=r"^(5|3\.1\.1)$")
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # What devices put in front of /download: the address they reach the HTTP server at.
    public_url: str | None = None

    url_secret: str | None = None  # HMAC key for download URLs; generated under home if unset
    url_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    api_token: str | None = None
    # How long a console login lasts; the server refuses the cookie after that (and after logout).
    console_session_hours: float = Field(default=12, gt=0)
    # Where the console links batches and tasks to their workflows (the dev server's Web UI).
    temporal_ui_url: str = "http://127.0.0.1:8233"
    key_encryption_secret: str | None = None  # encrypts secure-update private keys at rest

    # Operations (docs/metrics.md): the worker and the bridge serve /metrics, /healthz and
    # /readyz on these ports (off when unset; `ota dev` turns them on); the API serves them on
    # its own port. OTA_LOG_FORMAT=json writes one JSON object a line, with batch, task and
    # device fields where a line has them.
    metrics_host: str = "127.0.0.1"
    worker_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    bridge_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    log_format: str = Field(default="text", pattern=r"^(text|json)$")

    max_firmware: int = Field(default=500, ge=1)
    max_firmware_bytes: int = Field(default=1000 * 1024 * 1024, ge=1)

    # Batch pacing: how many device workflows one pacer turn starts, and after how many
    # starts the batch workflow continues as new (keeps each run's history small).
    start_burst: int = Field(default=50, ge=1, le=1000)
    # Starts per pacer run. Short runs keep the children's completions out of the pacer's history
    # (a completion in a closed run costs nothing): 200 was ~8% faster than 1,500 (bench, 2,000).
    continue_as_new_every: int = Field(default=200, ge=1)
    batch_poll_seconds: float = Field(default=5.0, gt=0)
    # A dynamic batch's safety net: the bridge nudges it when devices report a version it
    # updates from (ota/bridge/arrivals.py); the poll finds what no report announced (a device
    # freed by another batch, one imported with its version) and any nudge lost.
    dynamic_poll_seconds: float = Field(default=60.0, gt=0)
    # The in-flight cap of a batch without a rate and without its own --max-in-flight: the pacer
    # starts no device workflow while this many devices are pushed or upgrading (0: no cap).
    # Unthrottled, it started every device workflow within seconds however slow the devices,
    # and the Temporal server held them all (429 -> 617 MB from 1,000 to 10,000 devices).
    max_in_flight: int = Field(default=1000, ge=0, le=100_000)

    # Bridge: how long reports are gathered before one database transaction writes them.
    bridge_flush_seconds: float = Field(default=0.2, gt=0)
    bridge_client_id: str = "ota-bridge"
    bridge_share_group: str = "ota"
    # How long the broker keeps the bridge's session (and queues device reports for it) while no
    # bridge is connected. Tests and the benchmark shorten it: every session they leave behind
    # would otherwise collect a copy of every device message on a shared broker for a day.
    bridge_session_expiry_seconds: int = Field(default=24 * 3600, ge=10)
    # After the broker lost the bridge's session, tasks in flight are pushed again at this pace
    # (ota/bridge/reconcile.py): a fleet's worth spread over seconds, not one burst.
    bridge_reconcile_per_second: float = Field(default=50.0, ge=0)  # 0: never reconcile

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'ota.db').resolve()}"

    @cached_property
    def resolved_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return str((self.home / "firmware").resolve())

    @cached_property
    def resolved_public_url(self) -> str:
        return (self.public_url or f"http://{self.http_host}:{self.http_port}").rstrip("/")

    @cached_property
    def resolved_url_secret(self) -> bytes:
        if self.url_secret:
            return self.url_secret.encode()
        return secret_file(self.home / "url-secret").encode()

    @cached_property
    def resolved_mqtt_service_secret(self) -> bytes:
        if self.mqtt_service_secret:
            return self.mqtt_service_secret.encode()
        return secret_file(self.home / "mqtt-secret").encode()

    @cached_property
    def resolved_key_encryption_secret(self) -> bytes:
        if self.key_encryption_secret:
            return self.key_encryption_secret.encode()
        return secret_file(self.home / "key-secret").encode()


def secret_file(path: Path, nbytes: int = 32) -> str:
    """A random secret kept in a file, so every process of one installation shares it.

    Created 0600 by open() itself: written first and chmod-ed after, it was readable by others
    for a moment, and a file opened then stays readable. Written under a temporary name and
    linked into place, so no process reads it half written.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(nbytes))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # atomic: the first process to create it wins
        finally:
            tmp.unlink()
    return path.read_text().strip()


def get_settings() -> Settings:
    return Settings()
