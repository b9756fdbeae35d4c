"""unfinished work: each partition's automatic retries, and indexes that find pending Router work

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_UNFINISHED = "state = 'pending' OR last_error IS NOT NULL"


def upgrade() -> None:
    op.create_table(
        "partition_retries",
        sa.Column("partition_key", sa.String(length=64), nullable=False),
        sa.Column("institution", sa.String(length=32), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_at", sa.DateTime(), nullable=False),
        sa.Column("next_at", sa.DateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("partition_key", name=op.f("pk_partition_retries")),
    )
    # Few rows match (work the Router has not confirmed): the unfinished-work sensor finds them cheaply.
    for table in ("persons", "cards"):
        op.create_index(
            f"ix_{table}_unfinished",
            table,
            ["institution"],
            sqlite_where=sa.text(_UNFINISHED),
            postgresql_where=sa.text(_UNFINISHED),
        )


def downgrade() -> None:
    for table in ("persons", "cards"):
        op.drop_index(f"ix_{table}_unfinished", table_name=table)
    op.drop_table("partition_retries")
