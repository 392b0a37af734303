"""indexes for the lists that grow with the fleet: devices and a batch's tasks, a page at a time

Every page of the device list and of a batch's task list (ota/services/paging.py) is served by
walking one of these from the page's cursor, at 100,000 rows as at 100: no sequential scan.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 21:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A product's devices by id; the same with online first: the online/offline filter and the
    # counts (devices, devices online) from the index alone.
    op.create_index("ix_devices_product_id", "devices", ["product_key", "id"])
    op.create_index("ix_devices_product_online_id", "devices", ["product_key", "online", "id"])
    # The devices on a version, in id order: the version filter walks it from the cursor.
    op.create_index("ix_device_modules_version_device", "device_modules", ["version", "device_id"])
    # A batch's tasks by id (no filter), and by reason: most tasks have none (updated), so only
    # those with one are in it, and a task moving without a reason does not touch it.
    op.create_index("ix_tasks_batch_id", "tasks", ["batch_id", "id"])
    op.create_index(
        "ix_tasks_batch_reason_id",
        "tasks",
        ["batch_id", "reason", "id"],
        postgresql_where=sa.text("reason IS NOT NULL"),
        sqlite_where=sa.text("reason IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_batch_reason_id", table_name="tasks")
    op.drop_index("ix_tasks_batch_id", table_name="tasks")
    op.drop_index("ix_device_modules_version_device", table_name="device_modules")
    op.drop_index("ix_devices_product_online_id", table_name="devices")
    op.drop_index("ix_devices_product_id", table_name="devices")
