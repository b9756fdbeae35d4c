"""source completeness: digests, vanished rows, retired cards, row counts, sweep findings, vanish holds

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("careers") as t:
        t.add_column(sa.Column("source_digest", sa.String(length=32), nullable=True))
        t.add_column(sa.Column("vanished_at", sa.DateTime(), nullable=True))
        t.add_column(sa.Column("esi_written", sa.String(length=255), nullable=True))
    with op.batch_alter_table("badges") as t:
        t.add_column(sa.Column("source_digest", sa.String(length=32), nullable=True))
        t.add_column(sa.Column("vanished_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("watermarks") as t:
        t.add_column(sa.Column("row_count", sa.Integer(), nullable=True))
    with op.batch_alter_table("cards") as t:
        t.add_column(sa.Column("retired_at", sa.DateTime(), nullable=True))
    # One *current* card per badge: a retired card (its career changed person) stays beside the new one.
    op.drop_index("uq_cards_badge", table_name="cards")
    op.create_index(
        "uq_cards_badge",
        "cards",
        ["institution", "bdg_id"],
        unique=True,
        sqlite_where=sa.text("retired_at IS NULL"),
        postgresql_where=sa.text("retired_at IS NULL"),
    )
    # ESIs already on careers that are their registered person's: written by esc-sync (or equal to it).
    op.execute(
        "UPDATE careers SET esi_written = source_esi WHERE source_esi IS NOT NULL AND EXISTS ("
        "SELECT 1 FROM persons p WHERE p.institution = careers.institution AND p.pers_id = careers.pers_id"
        " AND p.esi = careers.source_esi AND p.state = 'registered')"
    )
    op.create_table(
        "source_findings",
        sa.Column("institution", sa.String(length=32), nullable=False),
        sa.Column("source_table", sa.String(length=32), nullable=False),
        sa.Column("source_key", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("academic_year", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("found_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("institution", "source_table", "source_key", name=op.f("pk_source_findings")),
    )
    op.create_index(
        "ix_source_findings_partition", "source_findings", ["institution", "academic_year"], unique=False
    )
    op.create_table(
        "vanish_holds",
        sa.Column("partition_key", sa.String(length=64), nullable=False),
        sa.Column("source_table", sa.String(length=32), nullable=False),
        sa.Column("institution", sa.String(length=32), nullable=False),
        sa.Column("vanished", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("held_at", sa.DateTime(), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("partition_key", "source_table", name=op.f("pk_vanish_holds")),
    )


def downgrade() -> None:
    op.drop_table("vanish_holds")
    op.drop_index("ix_source_findings_partition", table_name="source_findings")
    op.drop_table("source_findings")
    op.execute("DELETE FROM cards WHERE retired_at IS NOT NULL")
    op.drop_index("uq_cards_badge", table_name="cards")
    op.create_index("uq_cards_badge", "cards", ["institution", "bdg_id"], unique=True)
    with op.batch_alter_table("cards") as t:
        t.drop_column("retired_at")
    with op.batch_alter_table("watermarks") as t:
        t.drop_column("row_count")
    with op.batch_alter_table("badges") as t:
        t.drop_column("vanished_at")
        t.drop_column("source_digest")
    with op.batch_alter_table("careers") as t:
        t.drop_column("esi_written")
        t.drop_column("vanished_at")
        t.drop_column("source_digest")
