"""router_pace: each university's next Router send time, shared by all workers

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "router_pace",
        sa.Column("institution", sa.String(length=32), nullable=False),
        sa.Column("next_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("institution", name=op.f("pk_router_pace")),
    )


def downgrade() -> None:
    op.drop_table("router_pace")
