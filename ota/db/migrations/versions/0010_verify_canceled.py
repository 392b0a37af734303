"""verify canceled: verifications canceled before they ended `canceled` say so

A canceled verification used to end `completed` (a canceled batch ends `canceled`). Its tasks
tell it apart: a verification ends early only on a cancel, which cancels its active tasks.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 03:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        sa.text(
            "UPDATE batches SET state = 'canceled' WHERE kind = 'verify' AND state = 'completed' "
            "AND EXISTS (SELECT 1 FROM tasks WHERE tasks.batch_id = batches.id "
            "AND tasks.reason = 'canceled')"
        )
    )


def downgrade() -> None:
    op.execute(
        sa.text(
            "UPDATE batches SET state = 'completed' WHERE kind = 'verify' AND state = 'canceled'"
        )
    )
