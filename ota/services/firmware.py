"""Firmware files: add (checked against every rule of the seed, then streamed), list, delete."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO
from uuid import uuid4

from pydantic import BaseModel
from sqlalchemy import Engine, delete, func, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from ota.db.engine import session_scope
from ota.db.models import Batch, Firmware, Task
from ota.domain import (
    OPEN_BATCH_STATES,
    FirmwareState,
    FirmwareType,
    SignMethod,
    firmware_extension,
    id_in_range,
    validate_description,
    validate_firmware_name,
    validate_module,
    validate_version,
)
from ota.errors import Conflict, InvalidInput, NotFound
from ota.services.paging import (
    PAGE_DEFAULT,
    PAGE_MAX,
    Page,
    check_cursor,
    check_limit,
    keyset,
    page_of,
)
from ota.services.products import require_product, validate_product_key
from ota.services.security import SIGN_WITH, check_sign_with
from ota.settings import Settings
from ota.storage import FirmwareStore, StoredFile

log = logging.getLogger(__name__)

FILE_NAME_MAX = 128
# extData travels in every push and firmware/get reply: keep it far below a message's size.
EXT_DATA_MAX_BYTES = 4096
EXT_KEY_MAX = 64
# Serializes the insert-then-count of concurrent adds on PostgreSQL so the limit holds exactly.
_COUNT_LOCK_ID = 0x07A_F1A3


class FirmwarePublic(BaseModel):
    """A firmware record as the CLI's --json and the API show it."""

    id: int
    product_key: str
    name: str
    module: str
    version: str
    type: str
    src_versions: list[str]
    sign_method: str
    sign: str
    md5: str
    sha256: str
    size: int
    file_name: str
    description: str | None
    state: str
    created_at: datetime

    @classmethod
    def of(cls, fw: Firmware) -> FirmwarePublic:
        return cls(**fw.model_dump(), sign=fw.sign)


def firmware_public(fw: Firmware) -> dict:
    """The record; `ext_data` (and `diff` for a generated package) only when there are any."""
    data = FirmwarePublic.of(fw).model_dump(mode="json")
    if fw.ext_data:
        data["ext_data"] = dict(fw.ext_data)
        diff = diff_summary(fw)
        if diff is not None:
            data["diff"] = diff
    return data


def diff_summary(fw: Firmware) -> dict[str, Any] | None:
    """How much a package made by `ota firmware diff` saves against its full target image."""
    ext = fw.ext_data or {}
    target = ext.get("targetSize")
    if "_diff_from" not in ext or not isinstance(target, int) or target <= 0:
        return None
    saved = target - fw.size
    return {
        "from_firmware": ext["_diff_from"],
        "to_firmware": ext.get("_diff_to"),
        "target_size": target,
        "saved_bytes": saved,
        "saved_percent": round(100 * saved / target, 1),
    }


def check_ext_data(ext_data: Mapping[str, Any] | None) -> dict[str, Any]:
    """extData as stored: string keys, JSON values, small. Keys starting with `_` are ours and
    never sent to devices (ota.push)."""
    if not ext_data:
        return {}
    if not isinstance(ext_data, Mapping):
        raise InvalidInput("ext_data", "must be an object of keys and values")
    for key in ext_data:
        if not isinstance(key, str) or not 1 <= len(key) <= EXT_KEY_MAX:
            raise InvalidInput("ext_data", f"keys must be 1 to {EXT_KEY_MAX} characters")
    try:
        encoded = json.dumps(dict(ext_data), separators=(",", ":"))
    except (TypeError, ValueError):
        raise InvalidInput("ext_data", "values must be JSON (strings, numbers, lists...)") from None
    if len(encoded.encode()) > EXT_DATA_MAX_BYTES:
        raise InvalidInput("ext_data", f"must be at most {EXT_DATA_MAX_BYTES} bytes as JSON")
    return json.loads(encoded)  # a plain copy, as the JSON column will give it back


@dataclass(frozen=True)
class FirmwareSpec:
    """Metadata that passed every rule; nothing has been stored yet."""

    product_key: str
    name: str
    module: str
    version: str
    type: FirmwareType
    src_versions: list[str]
    sign_method: SignMethod
    description: str | None
    file_name: str
    extension: str


def check_firmware_input(
    *,
    file_name: str,
    product_key: str,
    name: str,
    version: str | None = None,
    module: str | None = None,
    type: str = "full",
    src_versions: Iterable[str] = (),
    dest_version: str | None = None,
    sign_method: str = "MD5",
    description: str | None = None,
) -> FirmwareSpec:
    """Every metadata rule of the seed, without touching the database or the store."""
    validate_product_key(product_key, "product")
    validate_firmware_name(name)
    module = validate_module(module)
    try:
        kind = FirmwareType((type or "").strip().lower())
    except ValueError:
        raise InvalidInput("type", "must be full or diff") from None
    sources = _split_versions(src_versions)
    if kind is FirmwareType.DIFF:
        if version and dest_version and version != dest_version:
            raise InvalidInput("dest_version", "must equal version when both are given")
        target = dest_version or version
        if not target:
            raise InvalidInput("dest_version", "is required for a differential (diff) firmware")
        validate_version(target, "dest_version")
        if not sources:
            raise InvalidInput("src_versions", "a diff firmware needs one or more source versions")
        if target in sources:
            raise InvalidInput("src_versions", f"must not include the target version {target}")
    else:
        if dest_version and version and dest_version != version:
            raise InvalidInput("dest_version", "must equal version when both are given")
        target = version or dest_version
        if not target:
            raise InvalidInput("version", "is required for a full firmware")
        validate_version(target)
        if sources:
            raise InvalidInput("src_versions", "only a diff firmware has source versions")
    try:
        method = SignMethod((sign_method or "").strip().upper())
    except ValueError:
        raise InvalidInput("sign_method", "must be MD5 or SHA256") from None
    description = validate_description(description or None)
    file_name = _check_file_name(file_name)
    return FirmwareSpec(
        product_key=product_key,
        name=name,
        module=module,
        version=target,
        type=kind,
        src_versions=sources,
        sign_method=method,
        description=description,
        file_name=file_name,
        extension=firmware_extension(file_name),
    )


def _split_versions(values: Iterable[str] | str) -> list[str]:
    """Source versions from a list, repeated options or "1.0,1.1"; each checked, order kept."""
    if isinstance(values, str):
        values = [values]
    found: list[str] = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if part and part not in found:
                found.append(validate_version(part, "src_versions"))
    return found


def _check_file_name(file_name: str) -> str:
    # Browsers and clients may send a full path: the name alone goes into the storage key.
    base = (file_name or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not base or base in (".", ".."):
        raise InvalidInput("file", "needs a file name")
    if len(base) > FILE_NAME_MAX or any(not ch.isprintable() for ch in base):
        raise InvalidInput("file", f"name must be 1 to {FILE_NAME_MAX} printable characters")
    return base


def _check_room(session: Session, settings: Settings, just_added: int = 0) -> None:
    count = session.exec(select(func.count()).select_from(Firmware)).one() - just_added
    if count >= settings.max_firmware:
        raise Conflict(
            f"the limit of {settings.max_firmware} firmware files is reached; delete one first",
            field="firmware",
        )


def _check_unique(session: Session, spec: FirmwareSpec, added: int | None = None) -> None:
    """One firmware per product, module, name and version: a second is the same firmware twice,
    and makes `ota batch create NAME` ambiguous. Diff packages to one version from different
    sources are different packages (`ota firmware diff` names them all `<target>_diff`)."""
    query = select(Firmware).where(
        Firmware.product_key == spec.product_key,
        Firmware.module == spec.module,
        Firmware.name == spec.name,
        Firmware.version == spec.version,
    )
    if added is not None:
        query = query.where(col(Firmware.id) != added)
    for other in session.exec(query):
        if sorted(other.src_versions) == sorted(spec.src_versions):
            sources = f" from {', '.join(spec.src_versions)}" if spec.src_versions else ""
            raise Conflict(
                f"{spec.product_key}/{spec.module} already has {spec.name} {spec.version}"
                f"{sources} as firmware {other.id}: give this one another name or version "
                f"(or delete firmware {other.id} first)",
                field="name",
            )


def check_not_added(engine: Engine, spec: FirmwareSpec) -> None:
    """What an upload would be refused for in the database besides its product: its twin (the
    console asks before a long upload)."""
    with Session(engine) as session:
        _check_unique(session, spec)


def add_firmware(
    engine: Engine,
    store: FirmwareStore,
    settings: Settings,
    *,
    src: BinaryIO,
    file_name: str,
    product_key: str,
    name: str,
    version: str | None = None,
    module: str | None = None,
    type: str = "full",
    src_versions: Iterable[str] = (),
    dest_version: str | None = None,
    sign_method: str = "MD5",
    description: str | None = None,
    need_verify: bool = True,
    ext_data: Mapping[str, Any] | None = None,
) -> Firmware:
    """Check everything, stream the file into the store, then record it; all or nothing.

    `ext_data`: extData for devices, plus our own `_` keys (e.g. `_sign_with: previous` for a
    key-rotation carrier, docs/security.md).
    """
    spec = check_firmware_input(
        file_name=file_name,
        product_key=product_key,
        name=name,
        version=version,
        module=module,
        type=type,
        src_versions=src_versions,
        dest_version=dest_version,
        sign_method=sign_method,
        description=description,
    )
    ext = check_ext_data(ext_data)
    with Session(engine) as session:
        require_product(session, spec.product_key)
        # "current" is the default and is not stored; "previous" needs a rotation under way.
        sign_with = check_sign_with(session, spec.product_key, ext.pop(SIGN_WITH, None))
        if sign_with:
            ext[SIGN_WITH] = sign_with
        # Early, so a duplicate or a full platform does not take a 1 GB upload.
        _check_unique(session, spec)
        _check_room(session, settings)

    key = f"{spec.product_key}/{uuid4().hex}/{spec.file_name}"
    stored = store.put_stream(key, src, settings.max_firmware_bytes, spec.extension)
    try:
        fw = _record(engine, settings, spec, stored, need_verify, ext)
    except BaseException:
        store.delete(key)
        raise
    log.info("added firmware %s: %s %s (%d bytes)", fw.id, fw.name, fw.version, fw.size)
    return fw


def _record(
    engine: Engine,
    settings: Settings,
    spec: FirmwareSpec,
    stored: StoredFile,
    need_verify: bool,
    ext_data: dict[str, Any],
) -> Firmware:
    """Insert the row, then count and look for its twin: concurrent adds cannot both take the
    last place, nor both add the same firmware."""
    fw = Firmware(
        product_key=spec.product_key,
        name=spec.name,
        module=spec.module,
        version=spec.version,
        type=spec.type.value,
        src_versions=spec.src_versions,
        sign_method=spec.sign_method.value,
        description=spec.description,
        file_name=spec.file_name,
        size=stored.size,
        md5=stored.md5,
        sha256=stored.sha256,
        storage_key=stored.key,
        state=(FirmwareState.UNVERIFIED if need_verify else FirmwareState.VERIFIED).value,
        need_verify=need_verify,
        ext_data=ext_data,
    )
    with session_scope(engine) as session:
        if engine.dialect.name == "postgresql":
            # Under READ COMMITTED two adds would each count without the other: take turns.
            session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _COUNT_LOCK_ID})
        session.add(fw)
        try:
            # The first statement writes, so SQLite takes its write lock before the count reads.
            session.flush()
        except IntegrityError:  # the product's foreign key: it was deleted during the upload
            raise NotFound("product", spec.product_key) from None
        _check_unique(session, spec, added=fw.id)  # again: another add may have come first
        _check_room(session, settings, just_added=1)
    return fw


def list_firmware(engine: Engine, product_key: str | None = None) -> list[Firmware]:
    """The first PAGE_MAX firmware, without where the next page starts (`firmware_page`)."""
    return firmware_page(engine, product_key, limit=PAGE_MAX).items


def firmware_page(
    engine: Engine,
    product_key: str | None = None,
    limit: int = PAGE_DEFAULT,
    after_id: int = 0,
    before_id: int | None = None,
) -> Page[Firmware]:
    """One page of firmware in id (upload) order, walked from the cursor along the primary key,
    or along (product_key, id) for one product's (migration 0009)."""
    check_limit(limit)
    check_cursor(after_id, before_id)
    with Session(engine) as session:
        query = select(Firmware)
        if product_key is not None:
            require_product(session, product_key)
            query = query.where(Firmware.product_key == product_key)
        rows = list(session.exec(keyset(query, col(Firmware.id), limit, after_id, before_id)))
        return page_of(rows, limit, lambda fw: fw.id or 0, after_id, before_id)


def firmware_modules(engine: Engine, product_key: str) -> list[str]:
    """The modules the product's firmware was added for: one DISTINCT on (product_key, module)
    rows, not every firmware read."""
    with Session(engine) as session:
        query = select(Firmware.module).where(Firmware.product_key == product_key).distinct()
        return sorted(session.exec(query))


def firmware_by_id(session: Session, id: int) -> Firmware | None:
    """The firmware, or None; an id no INTEGER column holds names none (and never reaches it)."""
    return session.get(Firmware, id) if id_in_range(id) else None


def get_firmware(engine: Engine, id: int) -> Firmware:
    with Session(engine) as session:
        fw = firmware_by_id(session, id)
    if fw is None:
        raise NotFound("firmware", id)
    return fw


def delete_firmware(engine: Engine, store: FirmwareStore, id: int) -> None:
    """Remove the record, its finished batches and its file; refused while a batch is active."""
    try:
        with session_scope(engine) as session:
            fw = firmware_by_id(session, id)
            if fw is None:
                raise NotFound("firmware", id)
            active = session.exec(
                select(Batch.id).where(
                    Batch.firmware_id == id,
                    col(Batch.state).in_(OPEN_BATCH_STATES),
                )
            ).all()
            if active:
                raise Conflict(
                    f"firmware {id} has active batches ({', '.join(active)}); cancel them first",
                    field="id",
                )
            batch_ids = select(Batch.id).where(Batch.firmware_id == id)
            session.execute(delete(Task).where(col(Task.batch_id).in_(batch_ids)))
            session.execute(delete(Batch).where(col(Batch.firmware_id) == id))
            session.delete(fw)
            key = fw.storage_key
    except IntegrityError:  # a batch was created for it meanwhile
        raise Conflict(f"firmware {id} is in use by a new batch", field="id") from None
    # The record goes first: a file without a record is only wasted space, the reverse is broken.
    try:
        store.delete(key)
    except Exception:
        log.warning("firmware %s deleted, but its file %s was not", id, key, exc_info=True)
    log.info("deleted firmware %s", id)
