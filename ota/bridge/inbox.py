"""The bridge's inbox: device messages kept small, and a bound on how many wait in memory.

Why a bound of our own: the bridge asks the broker for at most `max_batch` unacked messages
(MQTT v5 Receive Maximum), but Mosquitto 2.0 sends more when many devices publish at once
(measured with 20 publishers and a Receive Maximum of 50: 1,100 to 1,400 unacked). When 10,000
devices connected, their 20,000 reports all waited in the bridge, 2.5 KB each as aiomqtt messages
(paho gives every v5 message its own tables of property names), and the bridge grew by 65 MB.

So a message is kept as a `Received` record of what the bridge reads (a few hundred bytes), and
while `limit` records wait the inbox stops reading the socket: TCP stops the broker, which holds
the rest. The broker's acks of the bridge's own publishes come in on the same socket, so a flush
that waits for them holds reading open (`reading()`), or it would wait forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import aiomqtt
import paho.mqtt.client as paho

log = logging.getLogger(__name__)


class Received(NamedTuple):
    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool


class Inbox:
    """Collects one connection's messages (made before it connects); `watch` once connected,
    then `next_batch` hands them out."""

    def __init__(self, client: aiomqtt.Client, limit: int, stats: Counter[str]) -> None:
        self.limit = limit
        self.stats = stats
        self._client = client
        self._paho: paho.Client = client._client
        self._loop = asyncio.get_running_loop()
        self._messages: deque[Received] = deque()
        self._wanted = 1  # how many waiting messages wake `next_batch`
        self._enough = asyncio.Event()
        self._paused = False
        self._held_open = 0
        self._failure: BaseException | None = None
        self._watch: asyncio.Task[None] | None = None
        # Instead of aiomqtt's conversion and queue.
        self._paho.on_message = self._on_message

    def watch(self) -> None:
        """Notice the connection's loss: aiomqtt's `messages`, which no message reaches now,
        ends with an error then."""
        self._watch = asyncio.create_task(self._watch_connection())
        self._watch.add_done_callback(lambda _: self._enough.set())

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()

    async def next_batch(self, size: int, linger: float) -> list[Received]:
        """The first message, and whatever else arrives within `linger` seconds, up to `size`.
        Raises aiomqtt.MqttError when the connection is lost."""
        await self._wait_for(1, None)
        if len(self._messages) < size:
            await self._wait_for(size, linger)
        batch = [self._messages.popleft() for _ in range(min(size, len(self._messages)))]
        if self._paused and len(self._messages) < self.limit:
            self._resume()
        return batch

    def waiting(self) -> int:
        """Messages received and not yet handed to a flush (read by the metrics, any thread)."""
        return len(self._messages)

    def ack(self, batch: list[Received]) -> None:
        """The batch's effects are committed: the broker may forget its messages."""
        for m in batch:
            if m.qos > 0:
                self._paho.ack(m.mid, m.qos)

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        """Read the socket throughout, even when full: the block waits for the broker's acks."""
        self._held_open += 1
        if self._paused:
            self._resume()
        try:
            yield
        finally:
            self._held_open -= 1
            if self._held_open == 0 and len(self._messages) >= self.limit:
                self._pause()

    async def _wait_for(self, count: int, timeout: float | None) -> None:
        assert self._watch is not None, "watch() first"
        self._wanted = count
        self._enough.clear()
        if len(self._messages) < count and not self._watch.done() and self._failure is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._enough.wait(), timeout)
        if self._failure is not None:
            raise aiomqtt.MqttError(f"reading from the broker failed: {self._failure}")
        if self._watch.done() and not self._messages:
            self._watch.result()  # raises what ended the connection
            raise aiomqtt.MqttError("the message stream ended")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:  # a broker should refuse such a topic; ack it and go on
            self.stats["rejected"] += 1
            self._paho.ack(message.mid, message.qos)  # no-op for QoS 0
            return
        log.debug("received %s", topic)
        self._messages.append(
            Received(topic, bytes(message.payload), message.mid, message.qos, message.retain)
        )
        waiting = len(self._messages)
        if waiting >= self._wanted:
            self._enough.set()
        if waiting > self.stats["inbox_most"]:
            self.stats["inbox_most"] = waiting
        if waiting >= self.limit and not self._paused and self._held_open == 0:
            self._pause()

    def _pause(self) -> None:
        sock = self._paho.socket()
        if sock is None:
            return
        self._loop.remove_reader(sock.fileno())
        self._paused = True
        self.stats["reading_paused"] += 1

    def _resume(self) -> None:
        self._paused = False
        sock = self._paho.socket()
        if sock is not None:
            self._loop.add_reader(sock.fileno(), self._read)

    def _read(self) -> None:
        """What aiomqtt's reader does: read, and drain what a TLS socket has already decoded."""
        try:
            while True:
                self._paho.loop_read()
                sock = self._paho.socket()
                if not (sock is not None and hasattr(sock, "pending") and sock.pending() > 0):
                    break
        except Exception as exc:  # a broken connection: the bridge reconnects
            self._failure = exc
            self._enough.set()

    async def _watch_connection(self) -> None:
        async for _ in self._client.messages:
            pass
