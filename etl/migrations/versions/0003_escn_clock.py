"""escn clock sequences, partition locks, api_audit.institution

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "escn_clock",
        sa.Column("pic", sa.String(length=9), nullable=False),
        sa.Column("next_seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("pic", name=op.f("pk_escn_clock")),
    )
    op.create_table(
        "partition_locks",
        sa.Column("partition_key", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("acquired_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("partition_key", name=op.f("pk_partition_locks")),
    )
    with op.batch_alter_table("api_audit", schema=None) as batch_op:
        batch_op.add_column(sa.Column("institution", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_audit", schema=None) as batch_op:
        batch_op.drop_column("institution")
    op.drop_table("partition_locks")
    op.drop_table("escn_clock")
