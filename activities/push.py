"""The push: a local activity that publishes the upgrade notification and records it."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from datetime import datetime
from functools import cached_property

import aiomqtt
from sqlalchemy import Connection, Engine, case, select, update
from sqlmodel import Session, col
from temporalio import activity
from temporalio.exceptions import ApplicationError

from ota.contracts import PushRequest, PushResult
from ota.db.models import Batch, Device, Firmware, Task, utcnow
from ota.domain import ACTIVE_TASK_STATES, FINAL_TASK_STATES, PushOutcome, TaskReason, TaskState
from ota.metrics import BROKER_RECONNECTS, PUSHES, TASK_RETRIES, TASK_TRANSITIONS
from ota.mqtt import MqttEndpoint
from ota.ops.tracing import span
from ota.protocol import encode_upgrade, upgrade_topic
from ota.push import upgrade_data
from ota.services.security import Signer
from ota.settings import Settings
from ota.storage import FirmwareStore

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_SECONDS = 10.0
ASKED_AGAIN = "pushed again, recorded nowhere"
# ota_pushes' outcomes beyond PushOutcome's: the publish raised; a re-check's publish.
PUSH_ERROR, PUSH_RECHECK = "error", "recheck"


class MqttPublisher:
    """One long-lived MQTT connection for every push of this worker, reopened after a loss."""

    def __init__(self, endpoint: MqttEndpoint) -> None:
        self.endpoint = endpoint
        self._client: aiomqtt.Client | None = None
        self._lock = asyncio.Lock()
        self._lost = False  # a connection was dropped: the next one opened is a reconnect

    async def _connected(self) -> aiomqtt.Client:
        async with self._lock:
            if self._client is None:
                client = self.endpoint.client(
                    f"ota-worker-{uuid.uuid4().hex[:12]}", timeout=PUBLISH_TIMEOUT_SECONDS
                )
                await client.__aenter__()
                self._client = client
                if self._lost:
                    BROKER_RECONNECTS.labels(component="worker").inc()
                    self._lost = False
            return self._client

    async def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1: returns once the broker has the message. On a connection error the client is
        dropped and the error raised, so the activity retries on a fresh connection."""
        client = await self._connected()
        try:
            await client.publish(topic, payload, qos=1, timeout=PUBLISH_TIMEOUT_SECONDS)
        except aiomqtt.MqttError:
            self._lost = True
            await self._drop(client)
            raise

    async def _drop(self, client: aiomqtt.Client) -> None:
        async with self._lock:
            if self._client is client:
                self._client = None
        try:
            await client.__aexit__(None, None, None)
        except Exception:  # already broken; nothing more to release
            log.debug("closing a broken MQTT client", exc_info=True)

    async def close(self) -> None:
        if self._client is not None:
            await self._drop(self._client)


def log_fields(req: PushRequest) -> dict[str, object]:
    """The ids a JSON log line carries (OTA_LOG_FORMAT=json), to find a device's lines."""
    return {
        "batch_id": req.batch_id,
        "task_id": req.task_id,
        "device": f"{req.product_key}/{req.device_name}",
    }


class PushActivities:
    def __init__(self, engine: Engine, settings: Settings, mqtt: MqttPublisher) -> None:
        self.engine = engine
        self.settings = settings
        self.mqtt = mqtt
        self._firmware_rows: dict[int, Firmware] = {}
        self._msg_ids = itertools.count(int(time.time() * 1000))

    @activity.defn
    async def push(self, req: PushRequest) -> PushResult:
        """Offline device: record to_be_pushed/offline. Online: record pushed, then publish.
        A retry after a lost result publishes again, which QoS 1 allows anyway."""
        # Record the push before publishing it: a device can answer with its new version
        # within milliseconds, and the bridge judges that report against the task's state.
        # A crash in between re-runs this local activity, so the publish still happens.
        result, firmware_id, from_version = await asyncio.to_thread(self._record_push, req)
        if firmware_id is None:  # not pushed: final, or the device is offline
            PUSHES.labels(product=req.product_key, outcome=result.outcome).inc()
        else:
            await self._publish(req, firmware_id, from_version, str(result.outcome))
        self._count_push(req, result)  # once the publish worked: a failed one is retried
        return result

    @activity.defn
    async def recheck(self, req: PushRequest) -> PushResult:
        """Before a timeout fails a device: the same push once more, recorded nowhere (no
        attempt is counted, the timeout does not start again). A device that finished but whose
        report was lost (a broker restart, a dropped QoS 0 message) answers a push of the
        version it runs by reporting it again; one still working ignores it. Offline: nothing to
        ask, and no report can come."""
        result, firmware_id, from_version = await asyncio.to_thread(self._recheck_target, req)
        if firmware_id is not None:
            await self._publish(req, firmware_id, from_version, PUSH_RECHECK)
            # Rare (a reconnect on the old version, a timeout): worth a line, and the fault
            # harness counts these as the pushes that reconcile (bench/fault_checks.py).
            log.info(
                "%s: %s/%s asked again",
                ASKED_AGAIN,
                req.product_key,
                req.device_name,
                extra=log_fields(req),
            )
        return result

    async def _publish(
        self, req: PushRequest, firmware_id: int, from_version: str | None, outcome: str
    ) -> None:
        """Publish the upgrade; `ota_pushes` counts it under `outcome`, or `error` if it fails."""
        try:
            await self._send(req, firmware_id, from_version)
        except Exception:
            PUSHES.labels(product=req.product_key, outcome=PUSH_ERROR).inc()
            raise
        PUSHES.labels(product=req.product_key, outcome=outcome).inc()

    async def _send(self, req: PushRequest, firmware_id: int, from_version: str | None) -> None:
        firmware = self._firmware_rows.get(firmware_id)
        if firmware is None:
            firmware = await asyncio.to_thread(self._load_firmware, firmware_id)
        data = upgrade_data(
            self.settings,
            firmware,
            req.product_key,
            req.device_name,
            digestsign=self.digestsign(req.product_key, firmware),
            store=self.store,
            from_version=from_version,
        )
        topic = upgrade_topic(req.product_key, req.device_name)
        payload = encode_upgrade(data, next(self._msg_ids))
        # The topic names the device; the payload (a signed URL) stays out of the trace.
        attributes = {"messaging.destination.name": topic, "ota.product": req.product_key}
        with span("mqtt publish", attributes):
            await self.mqtt.publish(topic, payload)

    @staticmethod
    def _count_push(req: PushRequest, result: PushResult) -> None:
        """A task's first push moves it to `pushed` (a retry's leaves its state as it was). A push
        with a later attempt is a retry the device workflow waited for: counted here, where an
        activity sees it, not by a new activity or event at the workflow's retry. A device
        offline at its retry is pushed again when it connects, and counted then."""
        if result.outcome == PushOutcome.OFFLINE:
            return
        if req.attempt > 1:
            TASK_RETRIES.inc()
        elif result.outcome == PushOutcome.PUSHED and result.state == TaskState.PUSHED:
            TASK_TRANSITIONS.labels(state=TaskState.PUSHED.value, reason="").inc()

    def digestsign(self, product_key: str, firmware: Firmware) -> str | None:
        """Secure update (AliOS Things) signs each push here, for products that enable it.
        Signatures are cached per firmware and key, so a large batch signs once."""
        return self.signer.digestsign(product_key, firmware)

    @cached_property
    def store(self) -> FirmwareStore | None:
        """For presigned S3 URLs (s3_direct_urls): one client for every push. Without it each
        push built its own, 0.3 s of CPU apiece. Presigning is local: S3 may be down."""
        return FirmwareStore(self.settings) if self.settings.s3_direct_urls else None

    @cached_property
    def signer(self) -> Signer:
        return Signer(self.engine, self.settings)

    def _record_push(self, req: PushRequest) -> tuple[PushResult, int | None, str | None]:
        """The push's record, in one transaction: the result, the firmware to publish and the
        task's source version (a firmware that is not newer is pushed as a downgrade).

        The common case, an online device with an active task, is one conditional UPDATE.
        The seed: a retry leaves the state as it was (pushed or in_upgrade); the timeout counts
        again from the new attempt's first progress report."""
        now = utcnow()
        online = select(col(Device.id)).where(col(Device.id) == Task.device_id, col(Device.online))
        with self.engine.begin() as conn:
            pushed = conn.execute(
                update(Task)
                .where(
                    col(Task.id) == req.task_id,
                    col(Task.state).in_(ACTIVE_TASK_STATES),
                    online.exists(),
                )
                .values(
                    state=case(
                        (col(Task.state) == TaskState.TO_BE_PUSHED, TaskState.PUSHED),
                        else_=col(Task.state),
                    ),
                    reason=None,
                    attempts=req.attempt,
                    started=True,
                    pushed_at=now,
                    first_progress_at=None,
                    progress=None,
                    updated_at=now,
                )
                .returning(col(Task.state), col(Task.batch_id), col(Task.from_version))
            ).first()
            if pushed is not None:
                firmware_id = self._firmware_id(conn, req, pushed.batch_id)
                result = PushResult(PushOutcome.PUSHED, TaskState(pushed.state))
                return result, firmware_id, pushed.from_version
            return self._not_pushed(conn, req, now), None, None

    def _recheck_target(self, req: PushRequest) -> tuple[PushResult, int | None, str | None]:
        """(what the re-check finds, the firmware to push again, the task's source version)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(
                    col(Task.state),
                    col(Task.reason),
                    col(Task.batch_id),
                    col(Task.from_version),
                    col(Device.online),
                )
                .join(Device, col(Device.id) == col(Task.device_id))
                .where(col(Task.id) == req.task_id)
            ).first()
            if row is None:
                raise ApplicationError(f"task {req.task_id} not found", non_retryable=True)
            if row.state in FINAL_TASK_STATES:
                return PushResult(PushOutcome.FINAL, TaskState(row.state), row.reason), None, None
            if not row.online:
                result = PushResult(PushOutcome.OFFLINE, TaskState(row.state), TaskReason.OFFLINE)
                return result, None, None
            firmware_id = self._firmware_id(conn, req, row.batch_id)
            result = PushResult(PushOutcome.PUSHED, TaskState(row.state))
            return result, firmware_id, row.from_version

    @staticmethod
    def _not_pushed(conn: Connection, req: PushRequest, now: datetime) -> PushResult:
        """Why the push did not happen: the task is final (canceled or finished before this
        push), or the device is offline. An offline device's task keeps its state (a retry keeps
        pushed/in_upgrade, as the seed says); the reason tells the bridge to signal `online`
        when the device connects."""
        task = conn.execute(
            select(col(Task.state), col(Task.reason)).where(col(Task.id) == req.task_id)
        ).first()
        if task is None:
            raise ApplicationError(f"task {req.task_id} not found", non_retryable=True)
        if task.state in FINAL_TASK_STATES:
            return PushResult(PushOutcome.FINAL, TaskState(task.state), task.reason)
        conn.execute(
            update(Task)
            .where(col(Task.id) == req.task_id)
            .values(reason=TaskReason.OFFLINE, started=True, updated_at=now)
        )
        return PushResult(PushOutcome.OFFLINE, TaskState(task.state), TaskReason.OFFLINE)

    @staticmethod
    def _firmware_id(conn: Connection, req: PushRequest, batch_id: str) -> int:
        if req.firmware_id is not None:  # batches and verifications pass it
            return req.firmware_id
        firmware_id = conn.execute(
            select(col(Batch.firmware_id)).where(col(Batch.id) == batch_id)
        ).scalar()
        if firmware_id is None:
            raise ApplicationError(f"task {req.task_id}: no firmware", non_retryable=True)
        return firmware_id

    def _load_firmware(self, firmware_id: int) -> Firmware:
        """A firmware row never changes what is pushed, so each is read once per worker."""
        with Session(self.engine) as session:
            firmware = session.get(Firmware, firmware_id)
            if firmware is None:
                raise ApplicationError(f"firmware {firmware_id} not found", non_retryable=True)
            session.expunge(firmware)
        self._firmware_rows[firmware_id] = firmware
        return firmware
