"""Products and devices on SQLite and PostgreSQL: add, duplicates, CSV import, versions."""

from __future__ import annotations

import io

import pytest
from sqlmodel import Session, func, select

from ota.db.models import Device, DeviceModule
from ota.errors import Conflict, InvalidInput, NotFound
from ota.services import devices, products
from ota.settings import Settings

# Registration without a broker to put the devices' users on (tests/test_device_identity.py does).
NO_BROKER = Settings(broker_auth="none", key_encryption_secret="test-key")


def count(engine, table) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(table)).one()


@pytest.fixture
def pk(engine) -> str:
    products.add_product(engine, "pk1", "Thermostat")
    return "pk1"


# --- products ---------------------------------------------------------------------------------


def test_add_list_get_product(engine):
    products.add_product(engine, "b-2", "Second")
    products.add_product(engine, "A_1", "First")
    assert [p.product_key for p in products.list_products(engine)] == ["A_1", "b-2"]
    assert products.get_product(engine, "A_1").name == "First"
    public = products.product_public(products.get_product(engine, "A_1"))
    assert "private_key_enc" not in public and public["product_key"] == "A_1"


def test_duplicate_product_is_a_conflict(engine, pk):
    with pytest.raises(Conflict, match="already exists"):
        products.add_product(engine, pk, "Again")
    assert [p.name for p in products.list_products(engine)] == ["Thermostat"]


@pytest.mark.parametrize("key", ["", "x" * 65, "has space", "dot.not", "ü", "pk1\n"])
def test_bad_product_key(engine, key):
    with pytest.raises(InvalidInput) as err:
        products.add_product(engine, key, "Name")
    assert err.value.field == "product_key"
    assert products.list_products(engine) == []


@pytest.mark.parametrize("name", ["", "   ", "x" * 65, "tab\there"])
def test_bad_product_name(engine, name):
    with pytest.raises(InvalidInput) as err:
        products.add_product(engine, "pk", name)
    assert err.value.field == "name"


def test_missing_product_is_not_found(engine):
    with pytest.raises(NotFound, match="product nope"):
        products.get_product(engine, "nope")
    with pytest.raises(NotFound, match="product nope"):
        devices.add_device(engine, NO_BROKER, "nope", "dev-0001")


# --- devices ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dev1", "a@b.c:d-e_f", "x" * 32, "AB12"])
def test_device_names_alibaba_accepts(engine, pk, name):
    view = devices.add_device(engine, NO_BROKER, pk, name)
    assert view.name == name and view.versions == {} and view.online is False


@pytest.mark.parametrize("name", ["abc", "x" * 33, "has space", "slash/no", "ü-dev", "", "dev1\n"])
def test_device_names_alibaba_rejects(engine, pk, name):
    with pytest.raises(InvalidInput) as err:
        devices.add_device(engine, NO_BROKER, pk, name)
    assert err.value.field == "name"
    assert count(engine, Device) == 0


def test_add_device_with_version_and_module(engine, pk):
    view = devices.add_device(engine, NO_BROKER, pk, "dev-0001", version="1.0.0", module="wifi")
    assert view.versions == {"wifi": "1.0.0"}
    assert devices.list_devices(engine, pk)[0].versions == {"wifi": "1.0.0"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"version": "1.0 beta"}, "version"), ({"version": "1.0", "module": "Wi-Fi"}, "module")],
)
def test_add_device_bad_version_or_module(engine, pk, kwargs, field):
    with pytest.raises(InvalidInput) as err:
        devices.add_device(engine, NO_BROKER, pk, "dev-0001", **kwargs)
    assert err.value.field == field
    assert count(engine, Device) == 0


def test_duplicate_device_is_a_conflict(engine, pk):
    devices.add_device(engine, NO_BROKER, pk, "dev-0001", version="1.0.0")
    with pytest.raises(Conflict, match="dev-0001 already exists"):
        devices.add_device(engine, NO_BROKER, pk, "dev-0001", version="2.0.0")
    assert devices.list_devices(engine)[0].versions == {"default": "1.0.0"}


def test_same_name_in_two_products(engine, pk):
    products.add_product(engine, "pk2", "Other")
    devices.add_device(engine, NO_BROKER, pk, "dev-0001")
    devices.add_device(engine, NO_BROKER, "pk2", "dev-0001")
    assert [d.product_key for d in devices.list_devices(engine)] == ["pk1", "pk2"]
    assert len(devices.list_devices(engine, "pk2")) == 1


GOOD_CSV = """\ufeffname,version,module
dev-0001,1.0.0
dev-0002,1.0.0,default

# a comment, and a blank line above
dev-0003,1.1.0,wifi
dev-0004
"""


def test_import_csv(engine, pk):
    assert len(devices.import_devices(engine, NO_BROKER, pk, GOOD_CSV)) == 4
    found = {d.name: d.versions for d in devices.list_devices(engine, pk)}
    assert found == {
        "dev-0001": {"default": "1.0.0"},
        "dev-0002": {"default": "1.0.0"},
        "dev-0003": {"wifi": "1.1.0"},
        "dev-0004": {},
    }


def test_import_csv_from_a_file_object_without_header(engine, pk):
    assert (
        len(
            devices.import_devices(
                engine, NO_BROKER, pk, io.StringIO("dev-0001,2.0\ndev-0002,2.1\n")
            )
        )
        == 2
    )
    assert devices.device_versions(engine, pk) == ["2.0", "2.1"]


@pytest.mark.parametrize(
    ("csv_text", "line", "words"),
    [
        ("dev-0001,1.0\nbad name,1.0\n", 2, "name must be 4 to 32"),
        ("name,version\ndev-0001,1.0\ndev-0002,1.0 RC\n", 3, "version must be"),
        ("dev-0001,1.0,WIFI\n", 1, "module must be"),
        ("dev-0001\ndev-0002,1,m,extra\n", 2, "at most 3 columns"),
        ("dev-0001\ndev-0002\ndev-0001\n", 3, "also on line 1"),
    ],
)
def test_import_csv_bad_row_imports_nothing(engine, pk, csv_text, line, words):
    with pytest.raises(InvalidInput) as err:
        devices.import_devices(engine, NO_BROKER, pk, csv_text)
    assert err.value.field == "file"
    assert f"line {line}:" in err.value.message
    assert words in err.value.message
    assert count(engine, Device) == 0
    assert count(engine, DeviceModule) == 0


def test_import_csv_existing_device_imports_nothing(engine, pk):
    devices.add_device(engine, NO_BROKER, pk, "dev-0002")
    with pytest.raises(InvalidInput, match="line 3: device dev-0002 already exists"):
        devices.import_devices(engine, NO_BROKER, pk, "dev-0001,1.0\n\ndev-0002,1.0\n")
    assert [d.name for d in devices.list_devices(engine)] == ["dev-0002"]
    assert count(engine, DeviceModule) == 0


def test_import_empty_csv(engine, pk):
    with pytest.raises(InvalidInput, match="no devices"):
        devices.import_devices(engine, NO_BROKER, pk, "name,version,module\n")


def test_list_devices_with_versions_per_module(engine, pk):
    devices.import_devices(engine, NO_BROKER, pk, "dev-0001,1.0.0\ndev-0002,1.0.0\n")
    with Session(engine) as session:  # a second module reported later, as the bridge records it
        dev = session.exec(select(Device).where(Device.name == "dev-0001")).one()
        session.add(DeviceModule(device_id=dev.id, module="wifi", version="3.1"))
        dev.online = True
        session.add(dev)
        session.commit()
    views = devices.list_devices(engine, pk)
    assert [(v.name, v.versions, v.online) for v in views] == [
        ("dev-0001", {"default": "1.0.0", "wifi": "3.1"}, True),
        ("dev-0002", {"default": "1.0.0"}, False),
    ]
    assert views[0].to_dict()["versions"] == {"default": "1.0.0", "wifi": "3.1"}
    with pytest.raises(NotFound):
        devices.list_devices(engine, "nope")


def test_device_versions_distinct_and_naturally_sorted(engine, pk):
    products.add_product(engine, "pk2", "Other")
    devices.import_devices(
        engine, NO_BROKER, pk, "d-001,1.10.0\nd-002,1.9.0\nd-003,1.9.0\nd-004,2.0,wifi\n"
    )
    devices.add_device(engine, NO_BROKER, "pk2", "d-001", version="9.9.9")
    assert devices.device_versions(engine, pk) == ["1.9.0", "1.10.0", "2.0"]
    assert devices.device_versions(engine, pk, module="wifi") == ["2.0"]
    assert devices.device_versions(engine, "pk2") == ["9.9.9"]


def test_versions_no_rule_allows_still_sort(engine, pk):
    """Rows the bridge stored before it checked reports: '\u00b2'.isdigit() is true but int()
    refuses it, and the console's devices page and the versions list answered 500."""
    devices.import_devices(engine, NO_BROKER, pk, "d-001,1.10\nd-002,1.9\nd-003,1.0\nd-004,2.0\n")
    with Session(engine) as session:
        ids = session.exec(select(Device.id).where(Device.name.in_(["d-003", "d-004"]))).all()
        for device_id, version in zip(sorted(ids), ["1.0\u00b2", "1.\u0661"], strict=True):
            row = session.get(DeviceModule, (device_id, "default"))
            row.version = version
            session.add(row)
        session.commit()
    assert devices.device_versions(engine, pk) == ["1.0\u00b2", "1.9", "1.10", "1.\u0661"]
