"""The tables. Table objects never cross into Temporal: workflows carry ids and dataclasses."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint, text
from sqlalchemy import true as sa_true
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class ProductBase(SQLModel):
    product_key: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=64)
    secure_update: bool = False


class Product(ProductBase, table=True):
    __tablename__ = "products"

    public_key: str | None = None  # PEM, given to device makers
    private_key_enc: str | None = None  # encrypted PEM; never leaves the service layer
    # During a key rotation (docs/security.md): the key devices not yet rotated still hold,
    # kept until the operator retires it; the rotation carrier firmware is signed with it.
    previous_public_key: str | None = None
    previous_private_key_enc: str | None = None
    key_rotated_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class DeviceBase(SQLModel):
    product_key: str = Field(foreign_key="products.product_key", max_length=64)
    name: str = Field(max_length=64)


class Device(DeviceBase, table=True):
    __tablename__ = "devices"
    __table_args__ = (
        UniqueConstraint("product_key", "name", name="uq_device_product_name"),
        # The device list, a page at a time (ota/services/paging.py): by id, and by online.
        Index("ix_devices_product_id", "product_key", "id"),
        Index("ix_devices_product_online_id", "product_key", "online", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    online: bool = False
    last_seen: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    # Device identity (ota/identity): the DeviceSecret, encrypted; a disabled device may not
    # connect to the broker.
    secret_enc: str | None = None
    enabled: bool = Field(default=True, sa_column_kwargs={"server_default": sa_true()})


class DeviceModule(SQLModel, table=True):
    """The version a device last reported for one of its modules."""

    __tablename__ = "device_modules"
    __table_args__ = (
        Index("ix_device_modules_module_version", "module", "version"),
        # The device list's version filter, walked in id order from the page's cursor.
        Index("ix_device_modules_version_device", "version", "device_id"),
    )

    device_id: int = Field(foreign_key="devices.id", primary_key=True)
    module: str = Field(primary_key=True, max_length=64)
    version: str = Field(max_length=64)
    reported_at: datetime = Field(default_factory=utcnow)


class FirmwareBase(SQLModel):
    product_key: str = Field(foreign_key="products.product_key", max_length=64)
    name: str = Field(max_length=32)
    module: str = Field(default="default", max_length=64)
    version: str = Field(max_length=64)  # the destination version
    type: str = "full"
    src_versions: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    sign_method: str = "MD5"
    description: str | None = Field(default=None, max_length=100)


class Firmware(FirmwareBase, table=True):
    __tablename__ = "firmware"
    __table_args__ = (
        # A product's firmware list, a page at a time (ota/services/paging.py).
        Index("ix_firmware_product_id", "product_key", "id"),
        # Never reuse a deleted firmware's id: signed URLs and workflows name firmware by id.
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    file_name: str
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    md5: str
    sha256: str
    storage_key: str
    state: str = "unverified"
    need_verify: bool = True
    # Differential packages generated here record the image they apply to and what they save.
    ext_data: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def sign(self) -> str:
        return self.md5 if self.sign_method == "MD5" else self.sha256


class BatchBase(SQLModel):
    firmware_id: int = Field(foreign_key="firmware.id")
    kind: str = "static"  # verify | static | dynamic
    target: str = "all"  # all | selected | phased
    src_versions: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    percent: int | None = None
    scheduled_at: datetime | None = None
    rate_per_minute: int | None = None
    retry_interval_minutes: int | None = None  # None: do not retry; 0: retry immediately
    max_retries: int = 1
    timeout_minutes: int | None = None
    # Every other option it was given (ota.batch_options), by name: adding an option needs no
    # column and no migration.
    options: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}")
    )


class Batch(BatchBase, table=True):
    __tablename__ = "batches"
    __table_args__ = (
        # The batch list, newest first, a page at a time: all, a firmware's, by state.
        Index("ix_batches_created_id", "created_at", "id"),
        Index("ix_batches_firmware_created_id", "firmware_id", "created_at", "id"),
        Index("ix_batches_state_created_id", "state", "created_at", "id"),
    )

    id: str = Field(primary_key=True, max_length=64)
    product_key: str = Field(foreign_key="products.product_key", max_length=64, index=True)
    module: str = Field(max_length=64)
    target_version: str = Field(max_length=64)
    state: str = "in_progress"
    # Why the batch is in its state, when the state alone does not say: "paused by the
    # operator", "paused: 23% failed after 40 devices, threshold 20%".
    state_note: str | None = Field(default=None, max_length=200)
    skipped: int = 0  # targeted devices already on the target version
    total: int = 0  # tasks in the batch (a dynamic batch adds more as devices match)
    prepared_at: datetime | None = None  # targets selected and tasks inserted (idempotency)
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class Task(SQLModel, table=True):
    """One device in one batch."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("batch_id", "device_id", name="uq_task_batch_device"),
        # Counts by state, and by state and reason, from the index alone (index-only scans).
        Index("ix_tasks_batch_state_reason", "batch_id", "state", "reason"),
        Index("ix_tasks_device_state", "device_id", "state"),
        # The pacer's cursor: the next to_be_pushed tasks by id (and active ones to cancel).
        Index("ix_tasks_batch_state_id", "batch_id", "state", "id"),
        # The task list, a page at a time: unfiltered, and by reason (only tasks that have one).
        Index("ix_tasks_batch_id", "batch_id", "id"),
        Index(
            "ix_tasks_batch_reason_id",
            "batch_id",
            "reason",
            "id",
            postgresql_where=text("reason IS NOT NULL"),
            sqlite_where=text("reason IS NOT NULL"),
        ),
        # A device workflow names its task by id: a deleted batch's ids must not come back.
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    batch_id: str = Field(foreign_key="batches.id", max_length=64)
    device_id: int = Field(foreign_key="devices.id")
    product_key: str = Field(max_length=64)
    device_name: str = Field(max_length=64)
    module: str = Field(max_length=64)
    from_version: str | None = Field(default=None, max_length=64)
    target_version: str = Field(max_length=64)
    state: str = "to_be_pushed"
    reason: str | None = Field(default=None, max_length=64)
    progress: int | None = None  # latest percentage the device reported
    attempts: int = 0  # pushes sent
    started: bool = False  # the batch started this task's device workflow
    pushed_at: datetime | None = None
    first_progress_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class RevokedSession(SQLModel, table=True):
    """A console session logged out before it expired (ota.api.sessions): refused until then,
    by every API process of the installation. Kept only until `expires_at`."""

    __tablename__ = "revoked_sessions"

    id: str = Field(primary_key=True, max_length=64)
    expires_at: datetime
