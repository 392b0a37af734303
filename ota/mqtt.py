"""The one MQTT connection factory: URL, credentials, TLS, client id and protocol version.

The device SDK, the simulator, the bridge and the worker's publisher all connect through
`MqttEndpoint.client`, so a TLS setting or a credential means the same thing everywhere.

    mqtt://[user:password@]host[:port]     plain TCP (1883)
    mqtts://[user:password@]host[:port]    TLS (8883), checked against `ca_file` or the system's CAs

A client certificate (`cert_file`, `key_file`) is sent when set, for brokers that require one.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TLS_SCHEMES = ("mqtts", "ssl", "tls")
PLAIN_SCHEMES = ("mqtt", "tcp")
V5, V311 = "5", "3.1.1"


@dataclass(frozen=True)
class MqttEndpoint:
    """Where and as whom to connect; `client` makes a connection from it."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    protocol: str = V5

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        protocol: str = V5,
        ca_file: Path | str | None = None,
        cert_file: Path | str | None = None,
        key_file: Path | str | None = None,
    ) -> MqttEndpoint:
        parts = urlsplit(url)
        if parts.scheme not in TLS_SCHEMES + PLAIN_SCHEMES:
            raise ValueError(f"MQTT URL {redact(url)!r}: the scheme must be mqtt:// or mqtts://")
        if protocol not in (V5, V311):
            raise ValueError(f"MQTT protocol {protocol!r}: must be {V5} or {V311}")
        tls = parts.scheme in TLS_SCHEMES
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            ca_file=Path(ca_file) if ca_file else None,
            cert_file=Path(cert_file) if cert_file else None,
            key_file=Path(key_file) if key_file else None,
            protocol=protocol,
        )

    def with_credentials(self, username: str | None, password: str | None) -> MqttEndpoint:
        return replace(self, username=username, password=password)

    @property
    def v5(self) -> bool:
        return self.protocol == V5

    @property
    def url(self) -> str:
        """The address without credentials: safe to log."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file:
            context.load_cert_chain(str(self.cert_file), str(self.key_file or self.cert_file))
        return context

    def client(
        self,
        identifier: str | None,
        *,
        persistent: bool = False,
        session_expiry: int | None = None,
        properties: Any = None,
        **options: Any,
    ) -> aiomqtt.Client:
        """An aiomqtt client for this endpoint. `persistent`: keep the session across
        connections (clean start off; on v5 for `session_expiry` seconds). `properties`: v5
        CONNECT properties to send (session expiry is added to them)."""
        if self.v5:
            if persistent or properties is not None:
                properties = properties or Properties(PacketTypes.CONNECT)
                if persistent and session_expiry is not None:
                    properties.SessionExpiryInterval = session_expiry
                options["properties"] = properties
            options["clean_start"] = not persistent
        else:
            options["clean_session"] = not persistent
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=identifier,
            protocol=aiomqtt.ProtocolVersion.V5 if self.v5 else aiomqtt.ProtocolVersion.V311,
            tls_context=self.tls_context(),
            **options,
        )


def redact(url: str) -> str:
    """A URL with its password replaced, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()
