"""erasure: who is being or was erased (persons), which cards were deleted at the Router, which
careers were scrubbed

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("persons") as batch:
        batch.add_column(sa.Column("erase_reason", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("erase_requested_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("erased_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("cards") as batch:
        batch.add_column(sa.Column("delete_requested_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("deleted_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("careers") as batch:
        batch.add_column(sa.Column("erased_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("careers") as batch:
        batch.drop_column("erased_at")
    with op.batch_alter_table("cards") as batch:
        batch.drop_column("deleted_at")
        batch.drop_column("delete_requested_at")
    with op.batch_alter_table("persons") as batch:
        batch.drop_column("erased_at")
        batch.drop_column("erase_requested_at")
        batch.drop_column("erase_reason")
