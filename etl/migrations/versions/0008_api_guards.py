"""API guards: token expiry and a per-token allowance of lookups by matricola; audit rows name the
cursor and filters a list or feed read used (a longer resource)

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(), nullable=True))
        # Tokens made before: the default allowance (the general rate still applies on top).
        batch.add_column(
            sa.Column("matricola_rate_per_minute", sa.Integer(), nullable=False, server_default="60")
        )
    with op.batch_alter_table("api_audit") as batch:
        batch.alter_column("resource", type_=sa.String(length=600), existing_type=sa.String(length=200))


def downgrade() -> None:
    with op.batch_alter_table("api_audit") as batch:
        batch.alter_column("resource", type_=sa.String(length=200), existing_type=sa.String(length=600))
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("matricola_rate_per_minute")
        batch.drop_column("expires_at")
