"""router state, qr images, exports, api tokens

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_audit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("resource", sa.String(length=200), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_audit")),
    )
    with op.batch_alter_table("api_audit", schema=None) as batch_op:
        batch_op.create_index("ix_api_audit_token", ["token_id", "at"], unique=False)

    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=12), nullable=False),
        sa.Column("scopes", sa.String(length=200), nullable=False),
        sa.Column("institutions", sa.String(length=500), nullable=False),
        sa.Column("rate_per_minute", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_table(
        "badges",
        sa.Column("institution", sa.String(length=32), nullable=False),
        sa.Column("bdg_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("stu_id", sa.Integer(), nullable=False),
        sa.Column("pers_id", sa.Integer(), nullable=False),
        sa.Column("academic_year", sa.Integer(), nullable=False),
        sa.Column("valid_from", sa.Date(), nullable=False),
        sa.Column("valid_to", sa.Date(), nullable=False),
        sa.Column("annulled", sa.Boolean(), nullable=False),
        sa.Column("printed_on", sa.Date(), nullable=True),
        sa.Column("kind", sa.String(length=1), nullable=False),
        sa.Column("source_data_mod", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("institution", "bdg_id", name=op.f("pk_badges")),
    )
    with op.batch_alter_table("badges", schema=None) as batch_op:
        batch_op.create_index("ix_badges_career", ["institution", "stu_id"], unique=False)
        batch_op.create_index("ix_badges_partition", ["institution", "academic_year"], unique=False)

    op.create_table(
        "cards",
        sa.Column("escn", sa.String(length=36), nullable=False),
        sa.Column("institution", sa.String(length=32), nullable=False),
        sa.Column("academic_year", sa.Integer(), nullable=False),
        sa.Column("bdg_id", sa.Integer(), nullable=False),
        sa.Column("stu_id", sa.Integer(), nullable=False),
        sa.Column("esi", sa.String(length=255), nullable=False),
        sa.Column("card_type", sa.String(length=24), nullable=False),
        sa.Column("issued_at", sa.Date(), nullable=False),
        sa.Column("expires_at", sa.Date(), nullable=False),
        sa.Column("desired_status", sa.String(length=10), nullable=False),
        sa.Column("router_status", sa.String(length=10), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("synced_hash", sa.String(length=32), nullable=True),
        sa.Column("first_sync_at", sa.DateTime(), nullable=True),
        sa.Column("last_sync_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("changed_at", sa.DateTime(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("escn", name=op.f("pk_cards")),
    )
    with op.batch_alter_table("cards", schema=None) as batch_op:
        batch_op.create_index("ix_cards_esi", ["institution", "esi"], unique=False)
        batch_op.create_index("ix_cards_feed", ["institution", "changed_at", "escn"], unique=False)
        batch_op.create_index("ix_cards_partition", ["institution", "academic_year"], unique=False)
        batch_op.create_index("uq_cards_badge", ["institution", "bdg_id"], unique=True)

    op.create_table(
        "exports",
        sa.Column("id", sa.String(length=80), nullable=False),
        sa.Column("institution", sa.String(length=32), nullable=False),
        sa.Column("academic_year", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("since", sa.DateTime(), nullable=True),
        sa.Column("until", sa.DateTime(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("parquet_path", sa.String(length=500), nullable=False),
        sa.Column("parquet_bytes", sa.BigInteger(), nullable=False),
        sa.Column("parquet_sha256", sa.String(length=64), nullable=False),
        sa.Column("zip_path", sa.String(length=500), nullable=False),
        sa.Column("zip_bytes", sa.BigInteger(), nullable=False),
        sa.Column("zip_sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exports")),
    )
    with op.batch_alter_table("exports", schema=None) as batch_op:
        batch_op.create_index(
            "ix_exports_partition", ["institution", "academic_year", "created_at"], unique=False
        )

    op.create_table(
        "persons",
        sa.Column("institution", sa.String(length=32), nullable=False),
        sa.Column("esi", sa.String(length=255), nullable=False),
        sa.Column("pers_id", sa.Integer(), nullable=False),
        sa.Column("person_key", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("synced_hash", sa.String(length=32), nullable=True),
        sa.Column("first_sync_at", sa.DateTime(), nullable=True),
        sa.Column("last_sync_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("institution", "esi", name=op.f("pk_persons")),
    )
    with op.batch_alter_table("persons", schema=None) as batch_op:
        batch_op.create_index("uq_persons_pers_id", ["institution", "pers_id"], unique=True)

    op.create_table(
        "qr_images",
        sa.Column("escn", sa.String(length=36), nullable=False),
        sa.Column("institution", sa.String(length=32), nullable=False),
        sa.Column("academic_year", sa.Integer(), nullable=False),
        sa.Column("payload", sa.String(length=255), nullable=False),
        sa.Column("png", sa.LargeBinary(), nullable=False),
        sa.Column("svg", sa.LargeBinary(), nullable=False),
        sa.Column("rendered_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("escn", name=op.f("pk_qr_images")),
    )
    with op.batch_alter_table("qr_images", schema=None) as batch_op:
        batch_op.create_index("ix_qr_images_partition", ["institution", "academic_year"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("qr_images", schema=None) as batch_op:
        batch_op.drop_index("ix_qr_images_partition")

    op.drop_table("qr_images")
    with op.batch_alter_table("persons", schema=None) as batch_op:
        batch_op.drop_index("uq_persons_pers_id")

    op.drop_table("persons")
    with op.batch_alter_table("exports", schema=None) as batch_op:
        batch_op.drop_index("ix_exports_partition")

    op.drop_table("exports")
    with op.batch_alter_table("cards", schema=None) as batch_op:
        batch_op.drop_index("uq_cards_badge")
        batch_op.drop_index("ix_cards_partition")
        batch_op.drop_index("ix_cards_feed")
        batch_op.drop_index("ix_cards_esi")

    op.drop_table("cards")
    with op.batch_alter_table("badges", schema=None) as batch_op:
        batch_op.drop_index("ix_badges_partition")
        batch_op.drop_index("ix_badges_career")

    op.drop_table("badges")
    op.drop_table("api_tokens")
    with op.batch_alter_table("api_audit", schema=None) as batch_op:
        batch_op.drop_index("ix_api_audit_token")

    op.drop_table("api_audit")
