"""Helpers for the workflow tests: a fleet in the database, a worker, and a fake bridge.

The fake bridge does what design.md says the real one does: write the database first, then
signal the device workflow. No tests live here.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.service import RPCError

from ota.context import Context
from ota.contracts import (
    SIGNAL_ONLINE,
    SIGNAL_REPORT,
    DeviceReport,
    device_workflow_id,
)
from ota.db.engine import session_scope
from ota.db.models import Batch, Device, DeviceModule, Firmware, Product, Task, utcnow
from ota.domain import ACTIVE_TASK_STATES, ReportOutcome, TaskState
from ota.settings import Settings
from worker import build_worker


def new_key(prefix: str = "pk") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def make_context(tmp_path: Path, mqtt_url: str, client: Client, **settings: Any) -> Context:
    """On the machine's anonymous Mosquitto unless `settings` say otherwise (broker_auth and a
    `secure_broker`'s settings: tests/fixtures/mqtt.py)."""
    settings.setdefault("broker_auth", "none")
    ctx = Context(
        Settings(
            home=tmp_path,
            database_url=f"sqlite:///{tmp_path / 'ota.db'}",
            mqtt_url=mqtt_url,
            task_queue=f"tq-{uuid.uuid4()}",
            url_secret="test-secret",
            **settings,
        )
    )
    ctx._temporal = client  # the test environment's client (time skipping or not)
    return ctx


def make_fleet(
    engine: Engine,
    count: int,
    version: str = "1.0.0",
    module: str = "default",
    online: bool = True,
    product_key: str | None = None,
    prefix: str = "dev",
) -> tuple[str, list[str]]:
    """A product (new unless given) with `count` devices reporting `version` of `module`."""
    pk = product_key or new_key()
    names = [f"{prefix}{i:05d}" for i in range(count)]
    with session_scope(engine) as session:
        if session.get(Product, pk) is None:
            session.add(Product(product_key=pk, name=f"product {pk}"))
            session.flush()
        devices = [Device(product_key=pk, name=n, online=online) for n in names]
        session.add_all(devices)
        session.flush()
        session.add_all(
            [DeviceModule(device_id=d.id, module=module, version=version) for d in devices]
        )
    return pk, names


def make_firmware(
    engine: Engine,
    pk: str,
    version: str = "2.0.0",
    src_versions: list[str] | None = None,
    state: str = "verified",
    module: str = "default",
    need_verify: bool = True,
) -> int:
    with session_scope(engine) as session:
        fw = Firmware(
            product_key=pk,
            name=f"fw_{uuid.uuid4().hex[:8]}",
            module=module,
            version=version,
            type="diff" if src_versions else "full",
            src_versions=src_versions or [],
            file_name="fw.bin",
            size=1234,
            md5="0" * 32,
            sha256="0" * 64,
            storage_key="none",
            state=state,
            need_verify=need_verify,
        )
        session.add(fw)
        session.flush()
        assert fw.id is not None
        return fw.id


def make_task(
    engine: Engine, pk: str, device_name: str, state: str = "pushed", batch_id: str | None = None
) -> str:
    """A batch of a new firmware with one task of the device in `state`, as the batch workflow
    would write it; returns the batch id."""
    firmware_id = make_firmware(engine, pk)
    batch_id = batch_id or f"b-{uuid.uuid4().hex[:8]}"
    with session_scope(engine) as session:
        device = session.exec(
            select(Device).where(Device.product_key == pk, Device.name == device_name)
        ).one()
        session.add(
            Batch(id=batch_id, firmware_id=firmware_id, product_key=pk, module="default",
                  target_version="2.0.0")
        )  # fmt: skip
        session.flush()
        session.add(
            Task(batch_id=batch_id, device_id=device.id, product_key=pk, device_name=device_name,
                 module="default", target_version="2.0.0", state=state)
        )  # fmt: skip
    return batch_id


@asynccontextmanager
async def running_worker(client: Client, ctx: Context) -> AsyncIterator[None]:
    async with build_worker(client, ctx):
        yield


async def eventually(check: Callable[[], Any], timeout: float = 30.0, every: float = 0.1) -> Any:
    """Poll until `check()` (sync or async) is truthy; its value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {check}")
        await asyncio.sleep(every)


def tasks_of(engine: Engine, batch_id: str) -> dict[str, Task]:
    with Session(engine) as session:
        rows = session.exec(select(Task).where(Task.batch_id == batch_id))
        return {t.device_name: t for t in rows}


def attempts_of(engine: Engine, batch_id: str, name: str) -> int | None:
    task = tasks_of(engine, batch_id).get(name)
    return task.attempts if task else None


def states_of(engine: Engine, batch_id: str) -> dict[str, str]:
    return {name: t.state for name, t in tasks_of(engine, batch_id).items()}


def batch_row(engine: Engine, batch_id: str) -> Batch:
    with Session(engine) as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        return batch


@dataclass
class FakeBridge:
    """Writes what the bridge writes, then signals what it signals."""

    engine: Engine
    client: Client
    pk: str
    sent: list[str] = field(default_factory=list)

    def _task(self, session: Session, name: str) -> Task:
        task = session.exec(
            select(Task)
            .join(Device, col(Device.id) == col(Task.device_id))
            .where(
                Device.product_key == self.pk,
                Device.name == name,
                col(Task.state).in_(ACTIVE_TASK_STATES),
            )
        ).first()
        assert task is not None, f"no active task for {name}"
        return task

    def handle(self, name: str) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(device_workflow_id(self.pk, name))

    def progress(self, name: str, step: int = 10) -> None:
        """First progress: in_upgrade, and the timeout clock starts (no signal)."""
        with session_scope(self.engine) as session:
            task = self._task(session, name)
            task.progress = step
            if task.first_progress_at is None:
                task.state, task.first_progress_at = TaskState.IN_UPGRADE, utcnow()

    async def updated(self, name: str) -> None:
        with session_scope(self.engine) as session:
            task = self._task(session, name)
            task.state, task.finished_at, task.reason = TaskState.UPDATED, utcnow(), None
            version = task.target_version
            device_id = task.device_id
            session.exec(  # type: ignore[call-overload]
                update(DeviceModule)
                .where(col(DeviceModule.device_id) == device_id)
                .values(version=version)
            )
        report = DeviceReport(ReportOutcome.UPDATED, version=version)
        await self.handle(name).signal(SIGNAL_REPORT, report)

    async def failed(self, name: str, reason: str = "download_failed") -> None:
        report = DeviceReport(ReportOutcome.FAILED, reason=reason)
        await self.handle(name).signal(SIGNAL_REPORT, report)

    async def online(self, name: str) -> None:
        with session_scope(self.engine) as session:
            session.exec(  # type: ignore[call-overload]
                update(Device)
                .where(col(Device.product_key) == self.pk, col(Device.name) == name)
                .values(online=True)
            )
        await self.handle(name).signal(SIGNAL_ONLINE)


@asynccontextmanager
async def upgrade_listener(mqtt_url: str, pk: str) -> AsyncIterator[list[tuple[str, dict]]]:
    """Collects (device name, push payload) for every upgrade published to product `pk`."""
    host, port = mqtt_url.rsplit("//", 1)[-1].split(":")
    got: list[tuple[str, dict]] = []
    async with aiomqtt.Client(host, int(port)) as sub:
        await sub.subscribe(f"/ota/device/upgrade/{pk}/+", qos=1)

        async def collect() -> None:
            async for msg in sub.messages:
                got.append((str(msg.topic).rsplit("/", 1)[-1], json.loads(msg.payload)))  # type: ignore[arg-type]

        task = asyncio.create_task(collect())
        try:
            yield got
        finally:
            task.cancel()


async def history_counts(handle: WorkflowHandle[Any, Any]) -> tuple[int, int, int]:
    """(events, workflow tasks completed, signals) of one run."""
    events = tasks = signals = 0
    async for event in handle.fetch_history_events():
        events += 1
        name = event.WhichOneof("attributes") or ""
        tasks += name == "workflow_task_completed_event_attributes"
        signals += name == "workflow_execution_signaled_event_attributes"
    return events, tasks, signals


def patch_ids(history: WorkflowHistory) -> list[str]:
    """The `workflow.patched` markers a run recorded, in order."""
    return [
        json.loads(e.marker_recorded_event_attributes.details["patch-data"].payloads[0].data)["id"]
        for e in history.events
        if e.HasField("marker_recorded_event_attributes")
        and e.marker_recorded_event_attributes.marker_name == "core_patch"
    ]


async def describe_or_none(handle: WorkflowHandle[Any, Any]) -> Any:
    try:
        return await handle.describe()
    except RPCError:
        return None
