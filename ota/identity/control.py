"""A broker plugin's control topic: commands in, responses out, matched by a correlation id.

Both plugins we drive (Mosquitto's dynamic-security, and our own ota_auth) take
`{"commands": [...]}` on `$CONTROL/<feature>/v1` and answer each message with one
`{"responses": [...]}` on `.../response`, in order, saving their users once per message
(ota_auth: once per sync, DEFER_SAVE). So commands travel many to a message, in messages small
enough for any broker's packet limit.
Every admin connection may see every response, so ours carry a correlation id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import aiomqtt

from ota.errors import Unavailable
from ota.mqtt import MqttEndpoint

if TYPE_CHECKING:
    from ota.identity.accounts import Account
    from ota.identity.sync import SyncReport

log = logging.getLogger(__name__)

MESSAGE_BYTES = 192 * 1024  # per control message: well under any broker's max_packet_size
# ota_auth: "this message's changes are saved with a later one" (a sync's messages but its last).
# The changes are live at once; a broker that stops before the last saves them on its way out.
DEFER_SAVE = "deferSave"

Command = dict[str, Any]


class ControlError(Exception):
    """The plugin refused a command that had to succeed."""


class ControlClient:
    """An admin connection to a plugin: `async with ControlClient(...) as c: await c.run(...)`."""

    def __init__(
        self,
        endpoint: MqttEndpoint,
        topic: str,
        timeout: float = 30.0,
        hint: str = "",
        defer_saves: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.topic = topic
        self.timeout = timeout
        self.hint = hint  # what to check when the plugin does not answer
        self.defer_saves = defer_saves  # the plugin understands DEFER_SAVE (ota_auth does)
        self._client: aiomqtt.Client | None = None
        self._prefix = uuid.uuid4().hex[:12]
        self._sent = 0

    async def __aenter__(self) -> ControlClient:
        client = self.endpoint.client(f"ota-admin-{self._prefix}", timeout=self.timeout)
        try:
            await asyncio.wait_for(client.__aenter__(), self.timeout)
            await client.subscribe(f"{self.topic}/response", qos=1)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            raise Unavailable(
                f"cannot manage the broker's users at {self.endpoint.url} as "
                f"{self.endpoint.username!r}: {exc} ({self.hint} docs/security.md)"
            ) from None
        self._client = client
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
            self._client = None

    async def run(self, commands: list[Command]) -> list[dict[str, Any]]:
        """Every command's response, in order (an `error` key where the plugin refused one).
        With `defer_saves`, every message but the last asks the plugin to save later: it saves
        its whole table once for the lot, not once a message (quadratic in a registration's
        size)."""
        responses: list[dict[str, Any]] = []
        chunks = list(_chunks(commands))
        for i, chunk in enumerate(chunks):
            responses += await self._send(chunk, defer=self.defer_saves and i < len(chunks) - 1)
        return responses

    async def _send(self, commands: list[str], defer: bool = False) -> list[dict[str, Any]]:
        """One message of commands already encoded (`_chunks`)."""
        assert self._client is not None, "use `async with`"
        self._sent += 1
        tag = f"{self._prefix}:{self._sent}"
        payload = _message(commands, tag, defer)
        await self._client.publish(self.topic, payload, qos=1)
        try:
            async with asyncio.timeout(self.timeout):
                async for message in self._client.messages:
                    responses = _responses(message.payload)
                    if responses and responses[0].get("correlationData") == tag:
                        return responses
        except TimeoutError:
            pass
        raise Unavailable(
            f"the broker at {self.endpoint.url} did not answer on {self.topic} within "
            f"{self.timeout:.0f}s: {self.hint} May {self.endpoint.username!r} use it? "
            "(docs/security.md)"
        )


def _responses(payload: Any) -> list[dict[str, Any]]:
    try:
        data = json.loads(payload)
        found = data.get("responses")
    except (ValueError, AttributeError, TypeError):
        return []
    return found if isinstance(found, list) else []


def _chunks(commands: list[Command]) -> Iterator[list[str]]:
    """The commands JSON-encoded, each once (100,000 of them took seconds encoded twice, to
    measure and then to send), in lists that make messages under MESSAGE_BYTES."""
    chunk: list[str] = []
    size = 0
    for command in commands:
        encoded = json.dumps(command, separators=(",", ":"))
        length = len(encoded) + 40  # the correlation id each gets
        if chunk and size + length > MESSAGE_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(encoded)
        size += length
    if chunk:
        yield chunk


def _message(encoded: list[str], tag: str, defer: bool) -> str:
    """`{"commands": [...]}` of encoded commands, each given the correlation id `tag`."""
    correlation = f'{{"correlationData":{json.dumps(tag)},'
    tagged = ",".join(correlation + c[1:] if c != "{}" else correlation[:-1] + "}" for c in encoded)
    extra = f',"{DEFER_SAVE}":true' if defer else ""
    return f'{{"commands":[{tagged}]{extra}}}'


def check(responses: list[dict[str, Any]], tolerated: tuple[str, ...] = ()) -> None:
    """Raise on the first error not in `tolerated` (e.g. "Client already exists")."""
    for response in responses:
        error = response.get("error")
        if error and error not in tolerated:
            raise ControlError(f"{response.get('command')}: {error}")


class BrokerUsers:
    """What a sync needs of one plugin: its users as they are, and the commands that put them
    right. `ota.identity.sync` drives it; `dynsec` and `ota_auth` are the two kinds."""

    def __init__(self, client: ControlClient) -> None:
        self.client = client

    async def __aenter__(self) -> BrokerUsers:
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.__aexit__(*exc)

    async def run(self, commands: list[Command]) -> list[dict[str, Any]]:
        return await self.client.run(commands)

    def setup(self) -> list[Command]:
        """What a full sync sends first (the plugin's defaults)."""
        return []

    async def existing(self, usernames: list[str] | None) -> dict[str, dict[str, Any]]:
        """The users the broker holds, by username: all of them with `usernames` None."""
        raise NotImplementedError

    def plan(
        self, accounts: list[Account], existing: dict[str, dict[str, Any]], report: SyncReport
    ) -> list[Command]:
        """The commands that make the broker hold `accounts`, counted in `report`."""
        raise NotImplementedError

    def is_device(self, user: dict[str, Any]) -> bool:
        """Whether an existing user is a device's (ours to delete when it is not registered)."""
        raise NotImplementedError

    def delete(self, username: str, product_key: str, device_name: str) -> list[Command]:
        raise NotImplementedError

    def check(self, responses: list[dict[str, Any]]) -> None:
        """Raise ControlError on a refusal that matters."""
        raise NotImplementedError
