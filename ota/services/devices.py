"""Devices: registration one by one or from CSV, and the fleet's reported versions."""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, TextIO

from sqlalchemy import Engine, case, func, literal, tuple_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from ota.db.bulk import insert_with_ids, write_rows
from ota.db.engine import session_scope
from ota.db.models import Device, DeviceModule, Product, utcnow
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
from ota.services.paging import PAGE_DEFAULT, Page, check_cursor, check_limit, keyset, page_of
from ota.services.products import require_product, validate_product_key
from ota.settings import Settings

log = logging.getLogger(__name__)

CSV_HEADER = ("name", "version", "module")
DEVICE_COLUMNS = ("product_key", "name", "secret_enc", "online", "enabled", "created_at")
MODULE_COLUMNS = ("device_id", "module", "version", "reported_at")


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
    """Bulk insert (COPY on PostgreSQL): the devices, then their reported versions."""
    registered = register_secrets(settings, product_key, [r.name for r in rows])
    now = utcnow()
    ids = insert_with_ids(
        session,
        Device.__table__,  # type: ignore[attr-defined]
        DEVICE_COLUMNS,
        [(product_key, r.name, registered.stored[r.name], False, True, now) for r in rows],
    )
    write_rows(
        session,
        DeviceModule.__table__,  # type: ignore[attr-defined]
        MODULE_COLUMNS,
        (
            (device_id, r.module, r.version, now)
            for device_id, r in zip(ids, rows, strict=True)
            if r.version
        ),
    )
    return registered


def list_devices(
    engine: Engine, product_key: str | None = None, names: list[str] | None = None
) -> list[DeviceView]:
    """Every device of a product (or named ones): for a few, such as a registration's answer.
    A list that may be the whole fleet is read a page at a time (`device_page`)."""
    with Session(engine) as session:
        if product_key is not None:
            require_product(session, product_key)
        query = select(Device)
        if product_key is not None:
            query = query.where(Device.product_key == product_key)
        if names is not None:
            query = query.where(col(Device.name).in_(names))
        rows = list(session.exec(query.order_by(Device.product_key, Device.name)))
        return _views(session, rows)


def device_page(
    engine: Engine,
    product_key: str | None = None,
    *,
    versions: list[str] | None = None,
    module: str | None = None,
    online: bool | None = None,
    limit: int = PAGE_DEFAULT,
    after_id: int = 0,
    before_id: int | None = None,
) -> Page[DeviceView]:
    """One page of devices in id (registration) order, from an index however deep the page
    (ota/services/paging.py).

    `versions`: only devices that report one of them, for `module` (None: for any module).
    `online`: only devices online (True) or not (False)."""
    check_limit(limit)
    check_cursor(after_id, before_id)
    if product_key is not None:
        validate_product_key(product_key, "product")
    with Session(engine) as session:
        if product_key is not None:
            require_product(session, product_key)
        query = _filtered(
            select(Device), product_key, versions, module, online, after_id, before_id
        )
        rows = list(session.exec(keyset(query, col(Device.id), limit, after_id, before_id)))
        page = page_of(rows, limit, lambda d: d.id or 0, after_id, before_id)
        return Page(_views(session, page.items), page.next_after_id, page.prev_before_id)


def device_counts(
    engine: Engine,
    product_key: str,
    *,
    versions: list[str] | None = None,
    module: str | None = None,
) -> dict[str, int]:
    """How many devices the filter matches and how many of them are online: one index scan."""
    with Session(engine) as session:
        on = func.coalesce(func.sum(case((col(Device.online), 1), else_=0)), 0)
        query = _filtered(select(func.count(), on), product_key, versions, module, None)
        total, online = session.exec(query).one()
        return {"devices": total, "online": online}


def fleet_counts(engine: Engine) -> dict[str, dict[str, int]]:
    """Devices and devices online per product: one GROUP BY, not every device read."""
    with Session(engine) as session:
        on = func.coalesce(func.sum(case((col(Device.online), 1), else_=0)), 0)
        rows = session.exec(
            select(Device.product_key, func.count(), on).group_by(col(Device.product_key))
        )
        return {pk: {"devices": n, "online": up} for pk, n, up in rows}


def _filtered(
    query: Any,
    product_key: str | None,
    versions: list[str] | None,
    module: str | None,
    online: bool | None,
    after_id: int = 0,
    before_id: int | None = None,
) -> Any:
    """The device filters, each one an index can answer (ota/db/models.py). The cursor goes
    into the version filter too: the database does not carry it across the join itself, and
    would walk that version's devices from the first."""
    if product_key is not None:
        query = query.where(Device.product_key == product_key)
    if online is not None:
        query = query.where(col(Device.online).is_(online))
    if versions:
        reported = select(DeviceModule.device_id).where(col(DeviceModule.version).in_(versions))
        if module is not None:
            reported = reported.where(DeviceModule.module == module)
        if after_id:
            reported = reported.where(col(DeviceModule.device_id) > after_id)
        if before_id is not None:
            reported = reported.where(col(DeviceModule.device_id) < before_id)
        query = query.where(col(Device.id).in_(reported))
    return query


def _views(session: Session, rows: list[Device]) -> list[DeviceView]:
    """The devices as views, with every module's version: one query for the whole page."""
    views = {
        d.id: DeviceView(d.id, d.name, d.product_key, d.online, d.last_seen, enabled=d.enabled)
        for d in rows
        if d.id is not None
    }
    if views:
        modules = session.exec(
            select(DeviceModule)
            .where(col(DeviceModule.device_id).in_(list(views)))
            .order_by(col(DeviceModule.module))
        )
        for m in modules:
            views[m.device_id].versions[m.module] = m.version
    return list(views.values())


def product_modules(engine: Engine, product_key: str) -> list[str]:
    """The modules the product's devices report."""
    with Session(engine) as session:
        require_product(session, product_key)
        return sorted({m for m, _ in _reported(session, product_key)})


def device_versions(engine: Engine, product_key: str, module: str | None = None) -> list[str]:
    """The distinct versions devices of a product reported: the seed's drop-down list."""
    with Session(engine) as session:
        require_product(session, product_key)
        found = {v for m, v in _reported(session, product_key) if module is None or m == module}
        return sorted(found, key=version_sort_key)


def _reported(session: Session, product_key: str) -> list[tuple[str, str]]:
    """The (module, version) pairs the product's devices report, without reading every device:
    a DISTINCT would read the whole fleet's rows. Instead each pair any device reports is found
    by one seek in the (module, version) index (a handful of pairs, a seek each), and kept when
    one of this product's devices reports it (the first row found usually is)."""
    pairs: list[tuple[str, str]] = []
    key = tuple_(col(DeviceModule.module), col(DeviceModule.version))
    after: tuple[str, str] | None = None
    while True:
        query = select(DeviceModule.module, DeviceModule.version)
        if after is not None:
            query = query.where(key > tuple_(literal(after[0]), literal(after[1])))
        query = query.order_by(col(DeviceModule.module), col(DeviceModule.version)).limit(1)
        row = session.exec(query).first()
        if row is None:
            return pairs
        after = (row[0], row[1])
        if _reports(session, product_key, *after):
            pairs.append(after)


def _reports(session: Session, product_key: str, module: str, version: str) -> bool:
    query = (
        select(DeviceModule.device_id)
        .join(Device, col(Device.id) == col(DeviceModule.device_id))
        .where(
            Device.product_key == product_key,
            DeviceModule.module == module,
            DeviceModule.version == version,
        )
    )
    return session.exec(query.limit(1)).first() is not None
