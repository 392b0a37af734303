"""Mosquitto's dynamic-security plugin, driven over its control topic.

Commands go to `$CONTROL/dynamic-security/v1` as `{"commands": [...]}`; the plugin answers each
message with one `{"responses": [...]}` on the response topic, in order, and saves its whole
configuration once per message. So commands travel many to a message (a thousand devices cost a
few saves, not thousands), and in messages small enough for any broker's packet limit.
Every admin connection sees every response, so ours carry a correlation id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import aiomqtt

from ota.errors import Unavailable
from ota.mqtt import MqttEndpoint

log = logging.getLogger(__name__)

REQUEST_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{REQUEST_TOPIC}/response"
MESSAGE_BYTES = 192 * 1024  # per control message: well under any broker's max_packet_size

Command = dict[str, Any]


class DynsecError(Exception):
    """The plugin refused a command that had to succeed."""


class Dynsec:
    """An admin connection to the plugin: `async with Dynsec(endpoint) as d: await d.run(...)`."""

    def __init__(self, endpoint: MqttEndpoint, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._client: aiomqtt.Client | None = None
        self._prefix = uuid.uuid4().hex[:12]
        self._sent = 0

    async def __aenter__(self) -> Dynsec:
        client = self.endpoint.client(f"ota-admin-{self._prefix}", timeout=self.timeout)
        try:
            await asyncio.wait_for(client.__aenter__(), self.timeout)
            await client.subscribe(RESPONSE_TOPIC, qos=1)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            raise Unavailable(
                f"cannot manage the broker's users at {self.endpoint.url} as "
                f"{self.endpoint.username!r}: {exc} (is Mosquitto's dynamic-security plugin "
                "enabled, and OTA_MQTT_SERVICE_SECRET the one `ota broker config` used? "
                "docs/security.md)"
            ) from None
        self._client = client
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
            self._client = None

    async def run(self, commands: list[Command]) -> list[dict[str, Any]]:
        """Every command's response, in order (an `error` key where the plugin refused one)."""
        responses: list[dict[str, Any]] = []
        for chunk in _chunks(commands):
            responses += await self._send(chunk)
        return responses

    async def _send(self, commands: list[Command]) -> list[dict[str, Any]]:
        assert self._client is not None, "use `async with`"
        self._sent += 1
        tag = f"{self._prefix}:{self._sent}"
        tagged = [{**c, "correlationData": tag} for c in commands]
        payload = json.dumps({"commands": tagged}, separators=(",", ":"))
        await self._client.publish(REQUEST_TOPIC, payload, qos=1)
        try:
            async with asyncio.timeout(self.timeout):
                async for message in self._client.messages:
                    responses = _responses(message.payload)
                    if responses and responses[0].get("correlationData") == tag:
                        return responses
        except TimeoutError:
            pass
        raise Unavailable(
            f"the broker at {self.endpoint.url} did not answer on {REQUEST_TOPIC} within "
            f"{self.timeout:.0f}s: is Mosquitto's dynamic-security plugin enabled, and may "
            f"{self.endpoint.username!r} use it? (docs/security.md)"
        )


def _responses(payload: Any) -> list[dict[str, Any]]:
    try:
        data = json.loads(payload)
        found = data.get("responses")
    except (ValueError, AttributeError, TypeError):
        return []
    return found if isinstance(found, list) else []


def _chunks(commands: list[Command]) -> Iterator[list[Command]]:
    chunk: list[Command] = []
    size = 0
    for command in commands:
        length = len(json.dumps(command)) + 40
        if chunk and size + length > MESSAGE_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(command)
        size += length
    if chunk:
        yield chunk


def check(responses: list[dict[str, Any]], tolerated: tuple[str, ...] = ()) -> None:
    """Raise on the first error not in `tolerated` (e.g. "Client already exists")."""
    for response in responses:
        error = response.get("error")
        if error and error not in tolerated:
            raise DynsecError(f"{response.get('command')}: {error}")
