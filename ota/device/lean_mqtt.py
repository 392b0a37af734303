"""A minimal MQTT client for simulated fleets: one small asyncio Protocol per connection.

aiomqtt (on paho) costs about 55 KB a connection, which caps a simulator at a few thousand
devices a process. A simulated device needs only a sliver of MQTT: CONNECT (with a will, a
persistent session and username/password), SUBSCRIBE and PUBLISH at QoS 1, keepalive pings and
DISCONNECT, on 3.1.1 or 5. That sliver, bytes in and bytes out, is this module; what the devices
say stays ota.protocol's. Real devices use the SDK (ota.device.sdk), not this.

    options = LeanOptions.from_endpoint(MqttEndpoint.from_url(url), keepalive=60)
    conn = await connect(options, "client-id", on_message, username=..., password=...,
                         will=("status/topic", b"offline"))
    await conn.subscribe(["a/topic"]); await conn.publish("a/topic", b"hi")
    await conn.closed          # until the connection ends
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ota.mqtt import MqttEndpoint

OnMessage = Callable[[str, bytes], None]  # (topic, payload)

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x82, 0x90, 0xC0, 0xD0, 0xE0
PROP_SESSION_EXPIRY, PROP_SERVER_KEEPALIVE, PROP_REASON_STRING = 0x11, 0x13, 0x1F

# Why a broker refused a CONNECT, worded for whoever runs the fleet.
_V311_REFUSALS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad username or password",
    5: "not authorized",
}
_V5_REASONS = {
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad username or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8C: "bad authentication method",
    0x8F: "topic filter invalid",
    0x97: "quota exceeded",
    0x9F: "connection rate exceeded",
}
# v5 property id -> how its value is encoded: fixed width in bytes, or a kind.
_PROPERTY_WIDTH: dict[int, int | str] = {
    **dict.fromkeys((0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A), 1),
    **dict.fromkeys((0x13, 0x21, 0x22, 0x23), 2),
    **dict.fromkeys((0x02, 0x11, 0x18, 0x27), 4),
    0x0B: "varint",
    **dict.fromkeys((0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F, 0x09, 0x16), "bytes"),
    0x26: "pair",
}


class MqttError(Exception):
    """The connection failed or broke; a device reconnects after a pause."""


class ConnectRefused(MqttError):
    """The broker answered CONNECT with a refusal (wrong credentials, not authorized...)."""

    def __init__(self, code: int, reason: str, auth: bool) -> None:
        super().__init__(f"the broker refused the connection: {reason} (code {code:#04x})")
        # `auth`: the credentials were refused (the device's secret or the broker's users).
        self.code, self.reason, self.auth = code, reason, auth


@dataclass(frozen=True)
class LeanOptions:
    """What every connection of a fleet shares: broker, protocol, TLS, session and keepalive."""

    host: str
    port: int
    v5: bool = True
    tls: ssl.SSLContext | None = None  # one context for the whole fleet
    keepalive: int = 60
    persistent: bool = True  # clean start/session off: queued pushes survive a reconnect
    session_expiry: int = 600  # v5: how long the broker keeps the session
    timeout: float = 30.0  # for the TCP/TLS connect and the CONNACK

    @classmethod
    def from_endpoint(cls, endpoint: MqttEndpoint, **options: Any) -> LeanOptions:
        return cls(endpoint.host, endpoint.port, endpoint.v5, endpoint.tls_context(), **options)


async def connect(
    options: LeanOptions,
    client_id: str,
    on_message: OnMessage,
    *,
    username: str | None = None,
    password: str | None = None,
    will: tuple[str, bytes] | None = None,
) -> LeanConnection:
    """Open a session; raises ConnectRefused, MqttError, OSError or TimeoutError. The will is
    sent at QoS 1, retained (our devices' "offline")."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(options.timeout):
        _, conn = await loop.create_connection(
            lambda: LeanConnection(options.v5, options.keepalive, on_message),
            options.host,
            options.port,
            ssl=options.tls,
        )
        conn.send(encode_connect(options, client_id, username, password, will))
        try:
            await conn.connack
        except BaseException:
            conn.abort()
            raise
    return conn


class LeanConnection(asyncio.Protocol):
    """One MQTT connection: parses what arrives, matches acks to the requests awaiting them,
    and pings when idle. `closed` resolves (to the reason, or None) when the connection ends."""

    __slots__ = (
        "v5",
        "keepalive",
        "on_message",
        "connack",
        "closed",
        "_transport",
        "_buffer",
        "_acks",
        "_next_id",
        "_last_sent",
        "_ping_sent",
        "_timer",
    )

    def __init__(self, v5: bool, keepalive: int, on_message: OnMessage) -> None:
        loop = asyncio.get_running_loop()
        self.v5, self.keepalive, self.on_message = v5, keepalive, on_message
        self.connack: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[Exception | None] = loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._acks: dict[int, asyncio.Future[None]] | None = None  # packet id -> its waiter
        self._next_id = 0
        self._last_sent = 0.0
        self._ping_sent = 0.0  # when a PINGREQ went unanswered so far; 0: none
        self._timer: asyncio.TimerHandle | None = None

    # -- what callers do --------------------------------------------------------------------------

    async def subscribe(self, filters: list[str], qos: int = 1) -> None:
        packet_id = self._new_id()
        self.send(encode_subscribe(packet_id, filters, qos, self.v5))
        await self._acked(packet_id)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """At QoS 1, returns once the broker acknowledged (MqttError if it refused)."""
        packet_id = self._new_id() if qos else 0
        self.send(encode_publish(topic, payload, qos, retain, packet_id, self.v5))
        if qos:
            await self._acked(packet_id)

    def disconnect(self) -> None:
        """A clean goodbye: the broker drops the will."""
        if self._transport is not None and not self._transport.is_closing():
            self.send(bytes((DISCONNECT, 0)))
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection without a goodbye (the will fires), as a lost network does."""
        if self._transport is not None:
            self._transport.abort()

    def send(self, packet: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise MqttError("not connected")
        self._transport.write(packet)
        self._last_sent = time.monotonic()

    def _new_id(self) -> int:
        self._next_id = self._next_id % 0xFFFF + 1
        return self._next_id

    async def _acked(self, packet_id: int) -> None:
        if self._acks is None:
            self._acks = {}
        waiter = self._acks[packet_id] = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            if self._acks is not None:
                self._acks.pop(packet_id, None)

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's: no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        error = MqttError(f"connection lost: {exc}" if exc else "connection closed")
        for waiter in (self.connack, *(self._acks or {}).values()):
            if not waiter.done():
                waiter.set_exception(error)
        self._acks = None
        if not self.closed.done():
            self.closed.set_result(exc)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        at = 0
        try:
            while True:
                header = _packet_header(buffer, at)
                if header is None:
                    break
                start, end = header
                self._on_packet(buffer[at], memoryview(buffer)[start:end])
                at = end
        except (MqttError, IndexError, ValueError, struct.error, UnicodeDecodeError) as exc:
            self._fail(MqttError(f"malformed packet from the broker: {exc}"))
            return
        self._buffer = buffer[at:]

    # -- packets ------------------------------------------------------------------------------

    def _on_packet(self, first: int, body: memoryview) -> None:
        kind = first & 0xF0
        if kind == PUBLISH:
            self._on_publish(first, body)
        elif kind in (PUBACK, SUBACK):
            self._on_ack(kind, body)
        elif kind == PINGRESP:
            self._ping_sent = 0.0
        elif kind == CONNACK:
            self._on_connack(body)
        elif kind == DISCONNECT:  # v5: the broker says why it leaves
            reason = body[0] if body else 0
            self._fail(MqttError(f"the broker disconnected: {_reason(reason)}"))

    def _on_connack(self, body: memoryview) -> None:
        code = body[1]
        if code:
            reason = (_V5_REASONS if self.v5 else _V311_REFUSALS).get(code, "unknown reason")
            said = _properties(body, 2).get(PROP_REASON_STRING) if self.v5 else None
            if said:
                reason += f" ({said})"
            auth = code in ((0x86, 0x87) if self.v5 else (4, 5))
            self.connack.set_exception(ConnectRefused(code, reason, auth))
            return
        if self.v5 and len(body) > 2:
            server_keepalive = _properties(body, 2).get(PROP_SERVER_KEEPALIVE)
            if isinstance(server_keepalive, int):  # the broker's word overrides ours
                self.keepalive = server_keepalive
        if self.keepalive:
            self._timer = asyncio.get_running_loop().call_later(
                self.keepalive / 2, self._keepalive_tick
            )
        if not self.connack.done():
            self.connack.set_result(None)

    def _on_publish(self, first: int, body: memoryview) -> None:
        qos = (first >> 1) & 3
        size = int.from_bytes(body[:2])
        topic = bytes(body[2 : 2 + size]).decode()
        at = 2 + size
        packet_id = 0
        if qos:
            packet_id = int.from_bytes(body[at : at + 2])
            at += 2
        if self.v5:
            length, at = _varint(body, at)
            at += length
        payload = bytes(body[at:])
        if qos == 1:  # we subscribe at QoS 1, so no QoS 2 arrives
            self.send(bytes((PUBACK, 2)) + packet_id.to_bytes(2))
        self.on_message(topic, payload)

    def _on_ack(self, kind: int, body: memoryview) -> None:
        packet_id = int.from_bytes(body[:2])
        waiter = (self._acks or {}).get(packet_id)
        if waiter is None or waiter.done():
            return
        if kind == PUBACK:
            code = body[2] if self.v5 and len(body) > 2 else 0
        else:  # SUBACK: one code per filter, after v5's properties
            at = 2
            if self.v5:
                length, at = _varint(body, at)
                at += length
            code = max(body[at:], default=0)
        if code >= 0x80:
            what = "publish" if kind == PUBACK else "subscribe"
            waiter.set_exception(MqttError(f"the broker refused a {what}: {_reason(code)}"))
        else:
            waiter.set_result(None)

    def _keepalive_tick(self) -> None:
        """Every half keepalive: ping when nothing went out for that long; a ping unanswered
        for a whole keepalive means a dead broker or network, so the connection is dropped."""
        if self._transport is None or self._transport.is_closing():
            return
        now = time.monotonic()
        if self._ping_sent and now - self._ping_sent >= self.keepalive:
            self._fail(MqttError(f"no answer to a ping for {self.keepalive} s"))
            return
        if not self._ping_sent and now - self._last_sent >= self.keepalive / 2:
            self.send(bytes((PINGREQ, 0)))
            self._ping_sent = now
        self._timer = asyncio.get_running_loop().call_later(
            self.keepalive / 2, self._keepalive_tick
        )

    def _fail(self, error: MqttError) -> None:
        if not self.connack.done():
            self.connack.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(error)
        self.abort()


# -- encoding ---------------------------------------------------------------------------------


def encode_connect(
    options: LeanOptions,
    client_id: str,
    username: str | None,
    password: str | None,
    will: tuple[str, bytes] | None,
) -> bytes:
    flags = 0 if options.persistent else 0x02
    if will is not None:
        flags |= 0x04 | (1 << 3) | 0x20  # will at QoS 1, retained
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = _string("MQTT") + bytes((5 if options.v5 else 4, flags))
    body += options.keepalive.to_bytes(2)
    if options.v5:
        props = b""
        if options.persistent:
            props = bytes((PROP_SESSION_EXPIRY,)) + options.session_expiry.to_bytes(4)
        body += _encode_varint(len(props)) + props
    body += _string(client_id)
    if will is not None:
        if options.v5:
            body += b"\x00"  # no will properties
        body += _string(will[0]) + _binary(will[1])
    if username is not None:
        body += _string(username)
    if password is not None:
        body += _string(password)
    return _packet(CONNECT, body)


def encode_subscribe(packet_id: int, filters: list[str], qos: int, v5: bool) -> bytes:
    body = packet_id.to_bytes(2) + (b"\x00" if v5 else b"")
    for topic_filter in filters:
        body += _string(topic_filter) + bytes((qos,))
    return _packet(SUBSCRIBE, body)


def encode_publish(
    topic: str, payload: bytes, qos: int, retain: bool, packet_id: int, v5: bool
) -> bytes:
    body = _string(topic) + (packet_id.to_bytes(2) if qos else b"") + (b"\x00" if v5 else b"")
    return _packet(PUBLISH | qos << 1 | int(retain), body + payload)


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _encode_varint(len(body)) + body


def _string(text: str) -> bytes:
    return _binary(text.encode())


def _binary(data: bytes) -> bytes:
    return len(data).to_bytes(2) + data


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


# -- decoding ---------------------------------------------------------------------------------


def _packet_header(buffer: bytes, at: int) -> tuple[int, int] | None:
    """(start, end) of the body of the packet at `at`, or None until all of it is here."""
    length, multiplier, i = 0, 1, at + 1
    while True:
        if i >= len(buffer):
            return None
        digit = buffer[i]
        length += (digit & 0x7F) * multiplier
        i += 1
        if not digit & 0x80:
            break
        multiplier *= 128
        if multiplier > 128**3:
            raise MqttError("remaining length over four bytes")
    return (i, i + length) if i + length <= len(buffer) else None


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    value, multiplier = 0, 1
    while True:
        digit = data[at]
        at += 1
        value += (digit & 0x7F) * multiplier
        if not digit & 0x80:
            return value, at
        multiplier *= 128


def _properties(data: memoryview, at: int) -> dict[int, int | str]:
    """v5 properties at `at`: numbers as ints, the rest as text (a pair: its value)."""
    length, at = _varint(data, at)
    end = at + length
    found: dict[int, int | str] = {}
    while at < end:
        prop = data[at]
        at += 1
        width = _PROPERTY_WIDTH.get(prop)
        if isinstance(width, int):
            found[prop] = int.from_bytes(data[at : at + width])
            at += width
        elif width == "varint":
            found[prop], at = _varint(data, at)
        elif width in ("bytes", "pair"):
            for _ in range(2 if width == "pair" else 1):
                size = int.from_bytes(data[at : at + 2])
                found[prop] = bytes(data[at + 2 : at + 2 + size]).decode("utf-8", "replace")
                at += 2 + size
        else:
            raise MqttError(f"unknown property {prop:#04x}")
    return found


def _reason(code: int) -> str:
    return f"{_V5_REASONS.get(code, 'reason')} ({code:#04x})"
