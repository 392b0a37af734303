"""batch state note: why a batch is paused or was stopped

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 16:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("state_note", sa.String(length=200), nullable=True))


def downgrade() -> None:
    op.drop_column("batches", "state_note")
