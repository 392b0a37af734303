"""Rows the device-side tests start from: a product, devices, a firmware, a batch and its tasks."""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass

from sqlalchemy import Engine, insert, select
from sqlmodel import Session

from ota.db.engine import session_scope
from ota.db.models import Batch, Device, DeviceModule, Firmware, Product, Task
from ota.domain import DEFAULT_MODULE
from ota.storage import FirmwareStore


@dataclass
class Fleet:
    product_key: str
    names: list[str]
    device_ids: dict[str, int]
    firmware: Firmware
    batch_id: str


def new_pk() -> str:
    """A product key no other test uses: the broker is shared."""
    return "pk" + uuid.uuid4().hex[:10]


def seed_fleet(
    engine: Engine,
    n: int,
    *,
    pk: str | None = None,
    version: str = "1.0.0",
    target: str = "2.0.0",
    module: str = DEFAULT_MODULE,
    task_state: str | None = "pushed",
    attempts: int = 1,
    sign_method: str = "MD5",
    content: bytes = b"firmware image " * 100,
    store: FirmwareStore | None = None,
) -> Fleet:
    """n devices on `version`, a firmware to `target`, and a task each unless task_state is None."""
    pk = pk or new_pk()
    names = [f"dev-{i:05d}" for i in range(n)]
    key = f"{pk}/{uuid.uuid4().hex}.bin"
    if store is not None:
        store.put_stream(key, io.BytesIO(content), max_bytes=len(content) + 1)
    with session_scope(engine) as s:
        s.add(Product(product_key=pk, name=pk))
        s.flush()
        ids = s.scalars(
            insert(Device).returning(Device.id, sort_by_parameter_order=True),
            [{"product_key": pk, "name": name} for name in names],
        ).all()
        s.execute(
            insert(DeviceModule),
            [{"device_id": i, "module": module, "version": version} for i in ids],
        )
        fw = Firmware(
            product_key=pk,
            name="fw_" + target.replace(".", "_"),
            module=module,
            version=target,
            sign_method=sign_method,
            file_name="fw.bin",
            size=len(content),
            md5=hashlib.md5(content).hexdigest(),
            sha256=hashlib.sha256(content).hexdigest(),
            storage_key=key,
        )
        s.add(fw)
        s.flush()
        batch_id = uuid.uuid4().hex[:12]
        s.add(
            Batch(
                id=batch_id, firmware_id=fw.id, product_key=pk, module=module, target_version=target
            )
        )
        s.flush()
        if task_state is not None:
            s.execute(
                insert(Task),
                [
                    {
                        "batch_id": batch_id,
                        "device_id": i,
                        "product_key": pk,
                        "device_name": name,
                        "module": module,
                        "from_version": version,
                        "target_version": target,
                        "state": task_state,
                        "attempts": attempts,
                        "started": True,
                    }
                    for i, name in zip(ids, names, strict=True)
                ],
            )
    return Fleet(pk, names, dict(zip(names, ids, strict=True)), fw, batch_id)


def tasks(engine: Engine, batch_id: str) -> dict[str, Task]:
    with Session(engine) as s:
        return {t.device_name: t for t in s.scalars(select(Task).where(Task.batch_id == batch_id))}


def versions(engine: Engine, pk: str, module: str = DEFAULT_MODULE) -> dict[str, str]:
    with Session(engine) as s:
        rows = s.execute(
            select(Device.name, DeviceModule.version)
            .join(DeviceModule, DeviceModule.device_id == Device.id)
            .where(Device.product_key == pk, DeviceModule.module == module)
        )
        return dict(rows.all())


def devices(engine: Engine, pk: str) -> dict[str, Device]:
    with Session(engine) as s:
        return {d.name: d for d in s.scalars(select(Device).where(Device.product_key == pk))}
