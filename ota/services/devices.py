"""Devices: registration one by one or from CSV, and the fleet's reported versions."""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TextIO

from sqlalchemy import Engine, insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from ota.db.engine import session_scope
from ota.db.models import Device, DeviceModule, Product
from ota.domain import (
    DEFAULT_MODULE,
    DEVICE_NAME_RE,
    RESERVED_DEVICE_NAMES,
    validate_module,
    validate_version,
    version_sort_key,
)
from ota.errors import Conflict, InvalidInput
from ota.identity.registry import Registered, register_secrets
from ota.services.products import require_product, validate_product_key
from ota.settings import Settings

log = logging.getLogger(__name__)

CSV_HEADER = ("name", "version", "module")


@dataclass
class DeviceView:
    """A device as the operator sees it: reachability and the version of each module."""

    id: int
    name: str
    product_key: str
    online: bool
    last_seen: datetime | None
    versions: dict[str, str] = field(default_factory=dict)
    enabled: bool = True
    # Only in the answer to its registration: the DeviceSecret, shown once (`ota device
    # credentials` shows it again to an operator), and whether the broker has its user yet.
    secret: str | None = None
    broker: str | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["last_seen"] = self.last_seen.isoformat() if self.last_seen else None
        for once in ("secret", "broker"):
            if data[once] is None:
                del data[once]
        return data


@dataclass(frozen=True)
class _NewDevice:
    name: str
    version: str | None
    module: str
    line: int = 0  # in the CSV file it came from


def validate_device_name(name: str, field: str = "name") -> str:
    if name in RESERVED_DEVICE_NAMES:
        raise InvalidInput(field, f"{name} is reserved (the API's CSV import path): choose another")
    if not DEVICE_NAME_RE.fullmatch(name or ""):
        raise InvalidInput(
            field, "must be 4 to 32 characters of letters, digits, '-', '_', '@', '.' and ':'"
        )
    return name


def _new_device(name: str, version: str | None, module: str | None, line: int = 0) -> _NewDevice:
    validate_device_name(name)
    if version:
        validate_version(version)
    return _NewDevice(name, version or None, validate_module(module), line)


def add_device(
    engine: Engine,
    settings: Settings,
    product_key: str,
    name: str,
    version: str | None = None,
    module: str = DEFAULT_MODULE,
) -> DeviceView:
    """Register one device: its secret is made here and shown once in the answer."""
    validate_product_key(product_key, "product")
    new = _new_device(name, version, module)
    try:
        with session_scope(engine) as session:
            require_product(session, product_key)
            taken = session.exec(
                select(Device.id).where(Device.product_key == product_key, Device.name == name)
            ).first()
            if taken is not None:
                raise Conflict(f"device {name} already exists in {product_key}", field="name")
            registered = _insert(session, settings, product_key, [new])
    except IntegrityError:  # a concurrent add of the same name won the race
        raise Conflict(f"device {name} already exists in {product_key}", field="name") from None
    view = list_devices(engine, product_key, names=[name])[0]
    view.secret = registered.secrets[name]
    view.broker = registered.publish(settings)
    return view


def parse_devices_csv(source: str | TextIO) -> list[_NewDevice]:
    """Every row checked, or InvalidInput naming the first bad line; an optional header is skipped.

    Columns: name[,version[,module]].
    """
    text = source if isinstance(source, str) else source.read()
    rows: list[_NewDevice] = []
    seen: dict[str, int] = {}
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))  # spreadsheets write a BOM
    for cells in reader:
        line = reader.line_num
        cells = [c.strip() for c in cells]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if not rows and not seen and tuple(c.lower() for c in cells) == CSV_HEADER[: len(cells)]:
            continue
        if len(cells) > len(CSV_HEADER):
            raise InvalidInput(
                "file", f"line {line}: expected at most 3 columns: name,version,module"
            )
        name, version, module = (cells + ["", ""])[:3]
        try:
            new = _new_device(name, version or None, module or None, line)
        except InvalidInput as exc:
            raise InvalidInput("file", f"line {line}: {exc.field} {exc.message}") from None
        if name in seen:
            raise InvalidInput("file", f"line {line}: device {name} is also on line {seen[name]}")
        seen[name] = line
        rows.append(new)
    if not rows:
        raise InvalidInput("file", "has no devices")
    return rows


def import_devices(
    engine: Engine, settings: Settings, product_key: str, csv_text_or_file: str | TextIO
) -> Registered:
    """Register every device of a CSV file, or none of them; the answer holds their secrets."""
    validate_product_key(product_key, "product")
    rows = parse_devices_csv(csv_text_or_file)
    try:
        with session_scope(engine) as session:
            require_product(session, product_key)
            existing = set(
                session.exec(select(Device.name).where(Device.product_key == product_key))
            )
            for row in rows:
                if row.name in existing:
                    raise InvalidInput("file", f"line {row.line}: device {row.name} already exists")
            registered = _insert(session, settings, product_key, rows)
    except IntegrityError:
        raise Conflict("some of these devices were added meanwhile; nothing was imported") from None
    log.info("imported %d devices into %s", len(rows), product_key)
    registered.publish(settings)
    return registered


def register_fleet(
    engine: Engine, settings: Settings, product_key: str, names: list[str]
) -> Registered:
    """The simulator's `--register`: the product, and those of `names` that are missing."""
    validate_product_key(product_key, "product")
    with session_scope(engine) as session:
        if session.get(Product, product_key) is None:
            session.add(Product(product_key=product_key, name=product_key))
            session.flush()
        existing = set(session.exec(select(Device.name).where(Device.product_key == product_key)))
        rows = [_NewDevice(n, None, DEFAULT_MODULE) for n in names if n not in existing]
        registered = (
            _insert(session, settings, product_key, rows) if rows else Registered(product_key)
        )
    registered.publish(settings)
    return registered


def _insert(
    session: Session, settings: Settings, product_key: str, rows: list[_NewDevice]
) -> Registered:
    """Bulk insert: one statement for the devices, one for their reported versions."""
    registered = register_secrets(settings, product_key, [r.name for r in rows])
    ids = session.scalars(
        insert(Device).returning(col(Device.id), sort_by_parameter_order=True),
        [
            {"product_key": product_key, "name": r.name, "secret_enc": registered.stored[r.name]}
            for r in rows
        ],
    ).all()
    modules = [
        {"device_id": device_id, "module": r.module, "version": r.version}
        for device_id, r in zip(ids, rows, strict=True)
        if r.version
    ]
    if modules:
        session.execute(insert(DeviceModule), modules)
    return registered


def list_devices(
    engine: Engine, product_key: str | None = None, names: list[str] | None = None
) -> list[DeviceView]:
    with Session(engine) as session:
        if product_key is not None:
            require_product(session, product_key)
        query = select(Device, DeviceModule).outerjoin(
            DeviceModule, col(DeviceModule.device_id) == col(Device.id)
        )
        if product_key is not None:
            query = query.where(Device.product_key == product_key)
        if names is not None:
            query = query.where(col(Device.name).in_(names))
        query = query.order_by(Device.product_key, Device.name, DeviceModule.module)
        views: dict[int, DeviceView] = {}
        for device, module in session.exec(query):
            assert device.id is not None  # a stored row
            view = views.get(device.id)
            if view is None:
                view = views[device.id] = DeviceView(
                    device.id,
                    device.name,
                    device.product_key,
                    device.online,
                    device.last_seen,
                    enabled=device.enabled,
                )
            if module is not None:
                view.versions[module.module] = module.version
    return list(views.values())


def device_versions(engine: Engine, product_key: str, module: str | None = None) -> list[str]:
    """The distinct versions devices of a product reported: the seed's drop-down list."""
    with Session(engine) as session:
        require_product(session, product_key)
        query = (
            select(DeviceModule.version)
            .join(Device, col(Device.id) == col(DeviceModule.device_id))
            .where(Device.product_key == product_key)
            .distinct()
        )
        if module is not None:
            query = query.where(DeviceModule.module == module)
        return sorted(session.exec(query), key=version_sort_key)
