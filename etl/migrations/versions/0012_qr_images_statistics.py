"""qr_images: a small statistics sample (ANALYZE after each partition's QR images read 30,000 wide rows)

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# The export's joins plan on these columns (etl.store.bulk.PLANNER_COLUMNS). ANALYZE samples 300 rows
# per unit of the largest target: the default 100 made it read 30,000 rows of ~4.5 KB (150 ms at
# 100,000 cards, once per partition during a backfill); 10 reads 3,000 (12 ms). The estimates the
# plans need (a partition's share, escn unique) come out the same.
COLUMNS = ("escn", "institution", "academic_year")
TARGET = 10


def _set(target: int) -> None:
    if op.get_bind().dialect.name == "postgresql":  # SQLite keeps no column statistics
        for column in COLUMNS:
            op.execute(f"ALTER TABLE qr_images ALTER COLUMN {column} SET STATISTICS {target}")


def upgrade() -> None:
    _set(TARGET)


def downgrade() -> None:
    _set(-1)  # the server's default_statistics_target
