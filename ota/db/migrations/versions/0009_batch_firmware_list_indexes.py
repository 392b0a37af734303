"""indexes for the batch list and the firmware list, a page at a time; task counts from an index

The batch list (newest first) and the firmware list are read a page at a time like the device
list (ota/services/paging.py): each page walks one of these from its cursor. A batch's tasks
counted by state, and by state and reason (the batch page, a page of batches, the stop rule, the
fleet gauges), are read from the tasks' (batch_id, state, reason) index alone; it replaces
(batch_id, state), which it serves too, so the tasks carry no more indexes than before.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 03:00:00
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Newest first: all batches, a firmware's, those in a state.
    op.create_index("ix_batches_created_id", "batches", ["created_at", "id"])
    op.create_index(
        "ix_batches_firmware_created_id", "batches", ["firmware_id", "created_at", "id"]
    )
    op.create_index("ix_batches_state_created_id", "batches", ["state", "created_at", "id"])
    # A product's firmware in id order (all firmware: the primary key).
    op.create_index("ix_firmware_product_id", "firmware", ["product_key", "id"])
    op.create_index("ix_tasks_batch_state_reason", "tasks", ["batch_id", "state", "reason"])
    op.drop_index("ix_tasks_batch_state", table_name="tasks")


def downgrade() -> None:
    op.create_index("ix_tasks_batch_state", "tasks", ["batch_id", "state"])
    op.drop_index("ix_tasks_batch_state_reason", table_name="tasks")
    op.drop_index("ix_firmware_product_id", table_name="firmware")
    op.drop_index("ix_batches_state_created_id", table_name="batches")
    op.drop_index("ix_batches_firmware_created_id", table_name="batches")
    op.drop_index("ix_batches_created_id", table_name="batches")
