"""badge_write_backs: what esc-sync last wrote onto each Esse3 badge

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "badge_write_backs",
        sa.Column("institution", sa.String(length=32), nullable=False),
        sa.Column("bdg_id", sa.Integer(), nullable=False),
        sa.Column("escn", sa.String(length=36), nullable=True),
        sa.Column("pending_escn", sa.String(length=36), nullable=True),
        sa.Column("written_hash", sa.String(length=32), nullable=True),
        sa.Column("written_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("institution", "bdg_id", name=op.f("pk_badge_write_backs")),
    )


def downgrade() -> None:
    op.drop_table("badge_write_backs")
