"""device identity: each device's secret (encrypted) and whether it may connect

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 09:30:00.000000
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        # NULL for devices registered before this release: `ota broker sync` gives them one.
        batch_op.add_column(
            sa.Column("secret_enc", sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        )
        batch_op.add_column(
            sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("enabled")
        batch_op.drop_column("secret_enc")
