"""foundation: careers, quarantine, watermarks

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "careers",
        sa.Column("institution", sa.String(length=32), nullable=False),
        sa.Column("stu_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("pers_id", sa.Integer(), nullable=False),
        sa.Column("person_key", sa.String(length=64), nullable=False),
        sa.Column("matricola", sa.String(length=20), nullable=False),
        sa.Column("academic_year", sa.Integer(), nullable=False),
        sa.Column("course_code", sa.String(length=20), nullable=False),
        sa.Column("course_name", sa.String(length=255), nullable=False),
        sa.Column("course_type", sa.String(length=10), nullable=False),
        sa.Column("academic_level", sa.String(length=10), nullable=True),
        sa.Column("status", sa.String(length=2), nullable=False),
        sa.Column("finalised", sa.Boolean(), nullable=False),
        sa.Column("closing_reason", sa.String(length=10), nullable=True),
        sa.Column("closing_category", sa.String(length=16), nullable=True),
        sa.Column("enrolment_date", sa.Date(), nullable=True),
        sa.Column("closing_date", sa.Date(), nullable=True),
        sa.Column("first_name", sa.String(length=100), nullable=False),
        sa.Column("last_name", sa.String(length=100), nullable=False),
        sa.Column("email", sa.String(length=255), nullable=True),
        sa.Column("consent", sa.String(length=1), nullable=True),
        sa.Column("source_esi", sa.String(length=255), nullable=True),
        sa.Column("source_data_mod", sa.DateTime(), nullable=False),
        sa.Column("row_hash", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("institution", "stu_id", name=op.f("pk_careers")),
    )
    with op.batch_alter_table("careers", schema=None) as batch_op:
        batch_op.create_index("ix_careers_matricola", ["institution", "matricola"], unique=False)
        batch_op.create_index("ix_careers_partition", ["institution", "academic_year"], unique=False)
        batch_op.create_index("ix_careers_person", ["institution", "pers_id"], unique=False)

    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("institution", sa.String(length=32), nullable=False),
        sa.Column("academic_year", sa.Integer(), nullable=True),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("source_table", sa.String(length=32), nullable=False),
        sa.Column("source_key", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("first_seen", sa.DateTime(), nullable=False),
        sa.Column("last_seen", sa.DateTime(), nullable=False),
        sa.Column("resolved_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quarantine")),
    )
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.create_index(
            "ix_quarantine_partition", ["institution", "academic_year", "resolved_at"], unique=False
        )
        batch_op.create_index(
            "uq_quarantine_row", ["institution", "stage", "source_table", "source_key"], unique=True
        )

    op.create_table(
        "watermarks",
        sa.Column("partition_key", sa.String(length=64), nullable=False),
        sa.Column("source_table", sa.String(length=32), nullable=False),
        sa.Column("data_mod", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("partition_key", "source_table", name=op.f("pk_watermarks")),
    )


def downgrade() -> None:
    op.drop_table("watermarks")
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.drop_index("uq_quarantine_row")
        batch_op.drop_index("ix_quarantine_partition")

    op.drop_table("quarantine")
    with op.batch_alter_table("careers", schema=None) as batch_op:
        batch_op.drop_index("ix_careers_person")
        batch_op.drop_index("ix_careers_partition")
        batch_op.drop_index("ix_careers_matricola")

    op.drop_table("careers")
