"""wallet passes: what each card's Apple pass and Google object last showed (digests)

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "wallet_passes",
        sa.Column("escn", sa.String(length=36), nullable=False),
        sa.Column("apple_digest", sa.String(length=64), nullable=True),
        sa.Column("apple_updated_at", sa.DateTime(), nullable=True),
        sa.Column("pushed_digest", sa.String(length=64), nullable=True),
        sa.Column("google_digest", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("escn", name=op.f("pk_wallet_passes")),
    )


def downgrade() -> None:
    op.drop_table("wallet_passes")
