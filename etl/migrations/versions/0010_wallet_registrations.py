"""wallet registrations: the devices that hold a card's Apple Wallet pass, for its update service

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "wallet_registrations",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("pass_type_id", sa.String(length=255), nullable=False),
        sa.Column("serial_number", sa.String(length=36), nullable=False),
        sa.Column("push_token", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint(
            "device_id", "pass_type_id", "serial_number", name=op.f("pk_wallet_registrations")
        ),
    )
    op.create_index("ix_wallet_registrations_serial", "wallet_registrations", ["serial_number"])


def downgrade() -> None:
    op.drop_index("ix_wallet_registrations_serial", table_name="wallet_registrations")
    op.drop_table("wallet_registrations")
