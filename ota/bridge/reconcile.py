"""After the broker forgot the bridge's session, push every task in flight again.

Why: the bridge's persistent session is what keeps device reports while the bridge is away. A
broker that restarts without its saved sessions (killed, or persistence off) has no subscription
for the bridge until the bridge reconnects and subscribes again, and whatever devices publish in
between is dropped. Devices that finished installing in those seconds reported their 100% and
their new version to nobody, and their tasks stayed `in_upgrade` until the timeout failed them,
although the devices run the new version (seen with 300 simulated devices and a 5 s restart).

The broker says so itself: CONNACK's session-present flag is 0 when it had no session for us.
Then every task in flight (pushed or in_upgrade) is asked again with the push the worker sends.
Our SDK answers a push of the version it already runs by reporting that version again (ota/device/
sdk.py), so a finished device is recorded `updated` by the bridge's normal report path; one still
working ignores it (busy). LinkKit's sample application downloads and flashes again and then
reports progress and the version, within 100 ms for a small image; pushed while still downloading,
it starts a second download beside the first (tests/test_linkkit_repush.py). A device that
reconnects only after the bridge subscribed reports its version on connect, which reaches the
bridge anyway (and a pushed device still on its old version is pushed again by its workflow).
Nothing is written here: no attempt is counted and no timeout restarts.

A session the broker kept is not proof that nothing was lost when the broker itself restarted
(found by the fault harness, bench/faults.py, seed 1): a SIGKILLed Mosquitto comes back from its
last autosave, so what it acknowledged after that save is gone, and Mosquitto 2.0 restores the
bridge's session without its shared subscriptions (session present = 1, yet device reports are
dropped until the bridge subscribes again). So the bridge also reconciles when the broker started
less than `BROKER_RESTART_WINDOW` ago, by its retained `$SYS/broker/uptime` (Mosquitto, EMQX's
differs; a broker that does not say, or an account that may not read it, keeps the rule above).

Bounded: paced at `bridge_reconcile_per_second`, in the background so the bridge keeps serving,
and done once per lost session. A pass cut short (the connection went again) is finished on the
next connection even if the broker kept the session meanwhile. Counted in the bridge's stats:
`reconciles` (passes started), `reconcile_pushes`, `reconcile_unsigned` (secure-update pushes
skipped because the firmware could not be signed, as the bridge's replies skip them).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from sqlalchemy import Engine, select

from ota import protocol
from ota.bridge.inbox import Inbox
from ota.bridge.records import BATCHES, FIRMWARE, PROGRESSING, TASKS
from ota.db.models import Firmware
from ota.mqtt import MqttEndpoint
from ota.push import upgrade_data
from ota.services.security import UNSIGNABLE, Signer
from ota.settings import Settings
from ota.storage import FirmwareStore

log = logging.getLogger(__name__)

UPTIME_TOPIC = "$SYS/broker/uptime"  # "N seconds", retained, refreshed every sys_interval (10 s)
# A broker that started this recently may have restarted under the bridge: the bridge reconnects
# within its backoff (30 s at most) and a supervisor restarts it in seconds, with margin.
BROKER_RESTART_WINDOW = 120.0
UPTIME_WAIT_SECONDS = 2.0


@dataclass(frozen=True)
class InFlight:
    """A task whose device was pushed an update and has not finished it."""

    product_key: str
    device_name: str
    from_version: str | None
    firmware: Firmware


class SessionFlag:
    """The session-present flag of a client's CONNACK (paho hands it to on_connect only)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.present: bool | None = None
        inner: paho.Client = client._client
        aiomqtt_on_connect = inner.on_connect

        def on_connect(c: paho.Client, userdata: Any, flags: Any, *rest: Any) -> None:
            self.present = bool(flags.session_present)
            if aiomqtt_on_connect is not None:  # aiomqtt's, which completes the connect
                aiomqtt_on_connect(c, userdata, flags, *rest)

        inner.on_connect = on_connect


class Reconciler:
    """Decides on each connection whether to reconcile, and runs the pass in the background."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        signer: Signer,
        stats: Counter[str],
        products: Sequence[str] = (),
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.signer = signer
        self.stats = stats
        self.products = list(products)
        self.owed = False  # a lost session not yet reconciled
        # When the last finished pass began (wall clock): a broker that started before it lost
        # nothing since, however often the bridge reconnects (a database outage drops the
        # connection every second).
        self._covered_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._msg_ids = itertools.count(int(time.time() * 1000))

    def connected(
        self,
        client: aiomqtt.Client,
        inbox: Inbox,
        session: SessionFlag,
        endpoint: MqttEndpoint | None = None,
    ) -> None:
        """Call once subscribed: the devices' answers to the pushes must reach the bridge.
        `endpoint`: where to ask the broker's uptime (a kept session after a broker restart)."""
        if self.settings.bridge_reconcile_per_second == 0:  # switched off
            return
        if session.present is False:
            log.warning("the broker had no session for the bridge: reports may have been lost")
            self.owed = True
        if self.owed or endpoint is not None:
            self._task = asyncio.create_task(self._run(client, inbox, endpoint))

    async def stop(self) -> None:
        """The connection is going: a pass in progress ends (and stays owed)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(
        self, client: aiomqtt.Client, inbox: Inbox, endpoint: MqttEndpoint | None
    ) -> None:
        if not self.owed and endpoint is not None:
            uptime = await broker_uptime(endpoint, self.settings.bridge_client_id)
            if uptime is None or uptime >= BROKER_RESTART_WINDOW:
                return
            if self._covered_at is not None and self._covered_at > time.time() - uptime:
                return  # a pass since this broker started has asked every device already
            log.warning(
                "the broker started %.0f s ago: it may have lost reports it had acknowledged, "
                "and the bridge's subscriptions with them",
                uptime,
            )
            self.stats["broker_restarts"] += 1
            self.owed = True
        began = time.time()
        self.stats["reconciles"] += 1
        try:
            tasks = await asyncio.to_thread(in_flight, self.engine, self.products)
            log.warning("pushing %d tasks in flight again", len(tasks))
            await self._push_all(client, inbox, tasks)
        except aiomqtt.MqttError as exc:  # the connection went: the next one finishes the pass
            log.warning("reconciliation interrupted: %s", exc)
            return
        except Exception:
            log.exception("reconciliation failed; it is tried again on the next connection")
            return
        self.owed = False
        self._covered_at = began
        log.info("reconciliation done: %d pushes", self.stats["reconcile_pushes"])

    async def _push_all(self, client: aiomqtt.Client, inbox: Inbox, tasks: list[InFlight]) -> None:
        store = FirmwareStore(self.settings) if self.settings.s3_direct_urls and tasks else None
        signed: dict[tuple[str, int | None], str | None] = {}
        interval = 1.0 / self.settings.bridge_reconcile_per_second
        started = time.monotonic()
        for i, t in enumerate(tasks):
            if (delay := started + i * interval - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            key = (t.product_key, t.firmware.id)
            if key not in signed:
                signed[key] = await asyncio.to_thread(
                    self.signer.digestsign_or_unsignable, t.product_key, t.firmware
                )
            digestsign = signed[key]
            if digestsign == UNSIGNABLE:
                self.stats["reconcile_unsigned"] += 1
                continue
            data = upgrade_data(
                self.settings,
                t.firmware,
                t.product_key,
                t.device_name,
                digestsign=digestsign,
                store=store,
                from_version=t.from_version,
            )
            payload = protocol.encode_upgrade(data, next(self._msg_ids))
            async with inbox.reading():  # the broker's ack arrives on the socket being read
                await client.publish(
                    protocol.upgrade_topic(t.product_key, t.device_name), payload, qos=1
                )
            self.stats["reconcile_pushes"] += 1


async def broker_uptime(endpoint: MqttEndpoint, client_id: str) -> float | None:
    """Seconds the broker has been up, from its retained $SYS/broker/uptime, on a connection of
    its own (the bridge's carries device messages only); None if the broker does not say."""
    try:
        async with endpoint.client(f"{client_id}-uptime", timeout=UPTIME_WAIT_SECONDS) as c:
            await c.subscribe(UPTIME_TOPIC, qos=0)
            async with asyncio.timeout(UPTIME_WAIT_SECONDS):
                async for message in c.messages:
                    payload = message.payload
                    text = payload.decode() if isinstance(payload, bytes) else str(payload)
                    return float(text.split()[0])
    except (aiomqtt.MqttError, TimeoutError, ValueError, IndexError, UnicodeDecodeError) as exc:
        log.debug("the broker's uptime is unknown: %r", exc)
    return None


def in_flight(engine: Engine, products: Sequence[str] = ()) -> list[InFlight]:
    """Tasks pushed or in_upgrade (of `products` only, when given), with their firmware."""
    query = (
        select(
            TASKS.c.product_key,
            TASKS.c.device_name,
            TASKS.c.from_version,
            BATCHES.c.firmware_id,
        )
        .join(BATCHES, BATCHES.c.id == TASKS.c.batch_id)
        .where(TASKS.c.state.in_(PROGRESSING))
        .order_by(TASKS.c.id)
    )
    if products:
        query = query.where(TASKS.c.product_key.in_(list(products)))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        ids = sorted({r.firmware_id for r in rows})
        firmware = {
            row["id"]: Firmware.model_validate(dict(row))
            for row in conn.execute(select(FIRMWARE).where(FIRMWARE.c.id.in_(ids))).mappings()
        }
    return [
        InFlight(r.product_key, r.device_name, r.from_version, firmware[r.firmware_id])
        for r in rows
        if r.firmware_id in firmware
    ]
