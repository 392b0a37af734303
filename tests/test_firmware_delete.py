"""Deleting firmware: refused while a batch of it is active; else record, history and file go."""

from __future__ import annotations

import io

import pytest
from sqlmodel import Session, func, select

from ota.db.models import Batch, Firmware, Task
from ota.errors import Conflict, NotFound
from ota.services import devices, products
from ota.services.firmware import add_firmware, delete_firmware, get_firmware
from ota.settings import Settings
from ota.storage import FirmwareStore

# Registration without a broker to put the devices' users on (tests/test_device_identity.py does).
NO_BROKER = Settings(broker_auth="none", key_encryption_secret="test-key")


@pytest.fixture
def store(tmp_path) -> FirmwareStore:
    return FirmwareStore(Settings(home=tmp_path, storage_url=str(tmp_path / "firmware")))


@pytest.fixture
def fw(engine, store, tmp_path) -> Firmware:
    products.add_product(engine, "pk1", "Thermostat")
    devices.add_device(engine, NO_BROKER, "pk1", "dev-0001", version="1.0.0")
    return add_firmware(
        engine, store, Settings(home=tmp_path), src=io.BytesIO(b"image" * 100),
        file_name="fw.bin", product_key="pk1", name="thermo_fw", version="2.0.0",
    )  # fmt: skip


def add_batch(engine, fw: Firmware, batch_id: str, state: str) -> None:
    """A batch with one task, as the batch workflow records them."""
    with Session(engine) as session:
        device_id = devices.list_devices(engine, "pk1")[0].id
        session.add(
            Batch(
                id=batch_id, firmware_id=fw.id, product_key="pk1", module="default",
                target_version=fw.version, state=state,
            )
        )  # fmt: skip
        session.flush()
        session.add(
            Task(
                batch_id=batch_id, device_id=device_id, product_key="pk1", device_name="dev-0001",
                module="default", target_version=fw.version,
                state="to_be_pushed" if state != "completed" else "updated",
            )
        )  # fmt: skip
        session.commit()


def rows(engine, table) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(table)).one()


def test_delete_removes_record_and_file(engine, store, fw):
    assert store.keys() == [fw.storage_key]
    delete_firmware(engine, store, fw.id)
    with pytest.raises(NotFound):
        get_firmware(engine, fw.id)
    assert store.keys() == []
    with pytest.raises(NotFound, match=f"firmware {fw.id} not found"):
        delete_firmware(engine, store, fw.id)


@pytest.mark.parametrize("state", ["scheduled", "in_progress"])
def test_delete_refused_while_a_batch_is_active(engine, store, fw, state):
    add_batch(engine, fw, "b-old", "completed")
    add_batch(engine, fw, "b-live", state)
    with pytest.raises(Conflict, match="active batches \\(b-live\\)"):
        delete_firmware(engine, store, fw.id)
    assert get_firmware(engine, fw.id).id == fw.id
    assert store.keys() == [fw.storage_key]
    assert rows(engine, Batch) == 2 and rows(engine, Task) == 2


@pytest.mark.parametrize("state", ["completed", "canceled"])
def test_delete_takes_finished_batches_with_it(engine, store, fw, state):
    add_batch(engine, fw, "b-done", state)
    delete_firmware(engine, store, fw.id)
    assert rows(engine, Firmware) == 0 and rows(engine, Batch) == 0 and rows(engine, Task) == 0
    assert store.keys() == []
