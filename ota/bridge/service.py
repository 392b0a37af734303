"""The Bridge: MQTT in, batched database writes, then signals and replies, then the acks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from ota import protocol
from ota.bridge import metrics
from ota.bridge.arrivals import DynamicBatches
from ota.bridge.inbox import Inbox, Received
from ota.bridge.reconcile import Reconciler, SessionFlag
from ota.bridge.records import FlushResult, Reply, apply_reports, nudge
from ota.bridge.signals import Connect, SignalClient, Signaller
from ota.contracts import SIGNAL_DEVICES_ARRIVED
from ota.identity.accounts import ServiceRole, service_endpoint
from ota.metrics import BRIDGE_FLUSH_SECONDS
from ota.push import upgrade_data
from ota.services.security import UNSIGNABLE, Signer
from ota.settings import Settings
from ota.storage import FirmwareStore

log = logging.getLogger(__name__)

MAX_PACKET_BYTES = 64 * 1024  # the largest device message the bridge accepts
MAX_BATCH = 1000  # messages per transaction; also the Receive Maximum the broker should honour
INBOX_LIMIT_BATCHES = 2  # stop reading from the broker while this many batches wait (inbox.py)
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0


class Bridge:
    """Listens to every device over MQTT; see the package docstring for the rules."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        temporal: SignalClient | Connect | None,
        *,
        max_batch: int = MAX_BATCH,
        session_expiry: int | None = None,
        products: Sequence[str] | None = None,
    ) -> None:
        """`products`: listen only to these products' devices (default: every device)."""
        self.settings = settings
        self.engine = engine
        self.max_batch = max_batch
        self.session_expiry = session_expiry or settings.bridge_session_expiry_seconds
        self.products = list(products or [])
        self.stats: Counter[str] = Counter()
        self.signaller = Signaller(temporal, self.stats)
        self.ready = asyncio.Event()  # set while connected and subscribed
        self._store: FirmwareStore | None = None  # for presigned S3 URLs (s3_direct_urls)
        self.signer = Signer(engine, settings)  # digestsign of replies (secure update)
        self.dynamic = DynamicBatches()  # which dynamic batches to nudge (arrivals.py)
        self.endpoint = service_endpoint(settings, ServiceRole.BRIDGE)
        self._v5 = self.endpoint.v5
        self.reconciler = Reconciler(settings, engine, self.signer, self.stats, self.products)
        self._database_failing = False  # since the last flush that committed
        self.inbox: Inbox | None = None  # the current connection's (its depth is a metric)
        metrics.track(self)

    async def run(self) -> None:
        """Serve until cancelled, reconnecting with backoff when the broker or database goes."""
        nudger = asyncio.create_task(self._waiting_nudges())
        try:
            await self._connections()
        finally:  # cancelled: the metrics must not show a stopped bridge connected
            nudger.cancel()
            self.ready.clear()
            self.inbox = None

    async def _waiting_nudges(self) -> None:
        """Nudges a flush held back (a batch is nudged at most once a second: arrivals.py) go
        out when their second comes, whether or not another flush does."""
        while True:
            await asyncio.sleep(self.dynamic.nudge_every / 4)
            if due := self.dynamic.waiting_due():
                self.stats["nudges"] += len(due)
                await self.signaller.send([nudge(batch_id) for batch_id in due])

    async def _connections(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            client = self._client()
            # Before connecting: a persistent session's queued messages follow the CONNACK.
            inbox = self.inbox = Inbox(client, INBOX_LIMIT_BATCHES * self.max_batch, self.stats)
            session = SessionFlag(client)
            try:
                async with client:
                    await client.subscribe(self._subscriptions())
                    log.info("bridge connected to %s", self.endpoint.url)
                    self.ready.set()
                    # A connection proves the broker is back, not the database: while the
                    # database fails, keep backing off (else: a reconnect and a redelivery of
                    # every waiting message each 0.5 s for the whole outage).
                    if not self._database_failing:
                        backoff = BACKOFF_MIN
                    # No session on the broker: device reports may have been dropped.
                    self.reconciler.connected(client, inbox, session, self.endpoint)
                    try:
                        await self._serve(client, inbox)
                    finally:
                        await self.reconciler.stop()
            except aiomqtt.MqttError as exc:
                log.warning("broker connection lost: %s; retrying in %.1fs", exc, backoff)
            except (OperationalError, DBAPIError) as exc:
                # Nothing of the batch was acked: after reconnecting the broker sends it again.
                log.error("database unavailable: %s; retrying in %.1fs", exc, backoff)
                self._database_failing = True
            self.ready.clear()
            self.inbox = None  # what it held is redelivered by the broker
            self.stats["reconnects"] += 1
            metrics.RECONNECTS.inc()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _subscriptions(self) -> list[tuple[str, SubscribeOptions]] | list[tuple[str, int]]:
        filters = list(protocol.DEVICE_TOPIC_FILTERS.values())
        if self.products:  # the product key is each filter's first wildcard
            filters = [f.replace("+", pk, 1) for pk in self.products for f in filters]
        if not self._v5:  # MQTT 3.1.1 (the embedded broker) has no shared subscriptions
            return [(f, 1) for f in filters]
        # Mosquitto sends retained messages to shared subscriptions too: not news, skip them.
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        # The filter follows the group whole: "$share/g//ota/..." (the topics start with "/").
        group = self.settings.bridge_share_group
        return [(f"$share/{group}/{f}", options) for f in filters]

    def _client(self) -> aiomqtt.Client:
        props = None
        if self.endpoint.v5:
            props = Properties(PacketTypes.CONNECT)
            # Unacked messages the broker may send at once; Mosquitto's default is only 20.
            props.ReceiveMaximum = min(self.max_batch, 65535)
            # A device message is a few hundred bytes: the broker drops bigger ones for us
            # instead of handing the bridge a 200 MB publish to hold in memory.
            props.MaximumPacketSize = MAX_PACKET_BYTES
        client = self.endpoint.client(
            self.settings.bridge_client_id,
            persistent=True,
            session_expiry=self.session_expiry,
            properties=props,
            keepalive=30,
        )
        # Ack only after a message's effects are committed (aiomqtt itself acks on receipt).
        client._client.manual_ack_set(True)
        return client

    async def _serve(self, client: aiomqtt.Client, inbox: Inbox) -> None:
        inbox.watch()
        try:
            while True:
                batch = await inbox.next_batch(self.max_batch, self.settings.bridge_flush_seconds)
                await self._flush(client, inbox, batch)
        finally:
            inbox.close()

    async def _flush(self, client: aiomqtt.Client, inbox: Inbox, batch: list[Received]) -> None:
        started = time.monotonic()
        self.stats["received"] += len(batch)
        # Off the event loop: a hostile device's 64 KB of JSON takes ~12 ms to parse, and a
        # thousand of them would stall pings and acks for seconds.
        parsed, counts, kinds = await asyncio.to_thread(self._parse, batch)
        self.stats.update(counts)
        metrics.count_reports(kinds)
        if parsed:
            result = await asyncio.to_thread(self._apply, parsed)
            self._database_failing = False
            metrics.count_moves(result.moved)  # committed: apply_reports returned
            if result.unknown:
                self.stats["unknown_device"] += len(result.unknown)
                pk, dn = result.unknown[0]
                log.warning(
                    "%d messages from unregistered devices (e.g. %s/%s)",
                    len(result.unknown),
                    pk,
                    dn,
                )
            # Replies first: a device asking for its firmware need not wait for Temporal.
            async with inbox.reading():  # the broker's acks of the replies
                await self._reply(client, result.replies)
            # Waits while Temporal is away (signals.py): the acks below wait with it, so a
            # bridge that dies meanwhile gets these messages again.
            self.stats["nudges"] += sum(s.name == SIGNAL_DEVICES_ARRIVED for s in result.signals)
            await self.signaller.send(result.signals)
        inbox.ack(batch)
        self.stats["flushes"] += 1
        if parsed:
            self.stats["transactions"] += 1
        took = time.monotonic() - started
        BRIDGE_FLUSH_SECONDS.observe(took)
        log.debug(
            "flushed %d messages (%d applied) in %.0f ms", len(batch), len(parsed), took * 1000
        )

    @staticmethod
    def _parse(
        batch: list[Received],
    ) -> tuple[list[protocol.Message], Counter[str], Counter[type]]:
        """The messages to apply, the stats of those dropped, and the parsed ones by class."""
        parsed: list[protocol.Message] = []
        counts: Counter[str] = Counter()
        kinds: Counter[type] = Counter()
        for m in batch:
            if m.retain:  # replayed on subscribe, not news
                counts["retained_ignored"] += 1
                continue
            msg = protocol.parse(m.topic, m.payload)
            if isinstance(msg, protocol.Rejected):
                counts["rejected"] += 1
            else:
                parsed.append(msg)
                kinds[type(msg)] += 1
        return parsed, counts, kinds

    def _apply(self, messages: list[protocol.Message]) -> FlushResult:
        """One transaction; if it fails on a bad message, isolate it and keep the others."""
        try:
            return apply_reports(self.engine, messages, dynamic=self.dynamic)
        except OperationalError:
            raise  # the database is away: reconnect, and the broker redelivers
        except Exception:
            self.stats["errors"] += 1
            if len(messages) == 1:
                log.exception("dropping a message the database refused: %s", messages[0])
                self.stats["database_refused"] += 1
                return FlushResult()
            log.exception("a batch of %d failed; retrying its messages one by one", len(messages))
            result = FlushResult()
            for m in messages:
                result.extend(self._apply([m]))
            return result

    async def _reply(self, client: aiomqtt.Client, replies: list[Reply]) -> None:
        if replies and self.settings.s3_direct_urls and self._store is None:
            self._store = FirmwareStore(self.settings)

        signed = await asyncio.to_thread(self._digestsigns, replies) if replies else {}

        async def send(r: Reply) -> None:
            data = None
            if r.firmware is not None:
                digestsign = signed.get((r.product_key, r.firmware_id))
                if digestsign == UNSIGNABLE:
                    self.stats["replies_unsigned"] += 1
                    return
                data = upgrade_data(
                    self.settings,
                    r.firmware,
                    r.product_key,
                    r.device_name,
                    digestsign=digestsign,
                    store=self._store,
                    from_version=r.from_version,
                )
            topic = protocol.firmware_get_reply_topic(r.product_key, r.device_name)
            payload = protocol.encode_firmware_get_reply(r.msg_id, data)
            await client.publish(topic, payload, qos=1)
            self.stats["replies"] += 1

        await asyncio.gather(*(send(r) for r in replies))

    def _digestsigns(self, replies: list[Reply]) -> dict[tuple[str, int | None], str | None]:
        """Secure update: the same digestsign a push carries (cached, so one RSA operation per
        firmware and key), computed off the event loop since it may read the product."""
        signed: dict[tuple[str, int | None], str | None] = {}
        for r in replies:
            key = (r.product_key, r.firmware_id)
            if r.firmware is None or key in signed:
                continue
            signed[key] = self.signer.digestsign_or_unsignable(r.product_key, r.firmware)
        return signed
