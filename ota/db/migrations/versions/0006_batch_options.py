"""batch options: a batch's options other than the seed's, as JSON

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 15:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batches created before hold the seed's options only, in their columns: `{}` is all of
    # theirs (ota.batch_options).
    op.add_column("batches", sa.Column("options", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    op.drop_column("batches", "options")
