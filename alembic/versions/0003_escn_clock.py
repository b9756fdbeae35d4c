"""escn clock sequences, api_audit.institution

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
    with op.batch_alter_table("api_audit", schema=None) as batch_op:
        batch_op.add_column(sa.Column("institution", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_audit", schema=None) as batch_op:
        batch_op.drop_column("institution")
    op.drop_table("escn_clock")
