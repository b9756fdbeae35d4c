"""Watermarks: per partition and source table, the newest Esse3 DATA_MOD processed (committed in the same
transaction as the rows it covers) and, for careers and badges, Esse3's row count when the keys were
last compared with ours."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection, select

from etl.domain.esse3_time import EPOCH
from etl.store.bulk import upsert_statement
from etl.store.models import Watermark, utcnow


def get_row_counts(conn: Connection, partition_key: str) -> dict[str, int | None]:
    rows = conn.execute(
        select(Watermark.source_table, Watermark.row_count).where(Watermark.partition_key == partition_key)
    )
    return {r[0]: r[1] for r in rows}


def all_row_counts(conn: Connection) -> dict[tuple[str, str], int | None]:
    rows = conn.execute(select(Watermark.partition_key, Watermark.source_table, Watermark.row_count))
    return {(r[0], r[1]): r[2] for r in rows}


def set_row_count(conn: Connection, partition_key: str, source_table: str, rows: int) -> None:
    """Esse3's row count of the partition when its keys were compared with ours (a partition never
    read yet gets a watermark at the epoch)."""
    stmt = upsert_statement(conn, Watermark)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["partition_key", "source_table"],
            set_={"row_count": stmt.excluded.row_count, "updated_at": stmt.excluded.updated_at},
        ),
        {
            "partition_key": partition_key,
            "source_table": source_table,
            "data_mod": EPOCH,
            "row_count": rows,
            "updated_at": utcnow(),
        },
    )


def get_watermarks(conn: Connection, partition_key: str) -> dict[str, dt.datetime]:
    rows = conn.execute(
        select(Watermark.source_table, Watermark.data_mod).where(Watermark.partition_key == partition_key)
    )
    return {r[0]: r[1] for r in rows}


def all_watermarks(conn: Connection) -> dict[tuple[str, str], dt.datetime]:
    rows = conn.execute(select(Watermark.partition_key, Watermark.source_table, Watermark.data_mod))
    return {(r[0], r[1]): r[2] for r in rows}


def advance_watermarks(conn: Connection, partition_key: str, seen: dict[str, dt.datetime]) -> None:
    """Move each table's watermark forward to the newest DATA_MOD processed; never backwards."""
    current = get_watermarks(conn, partition_key)
    stmt = upsert_statement(conn, Watermark)
    for table, data_mod in seen.items():
        if table in current and current[table] >= data_mod:
            continue
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["partition_key", "source_table"],
                set_={"data_mod": stmt.excluded.data_mod, "updated_at": stmt.excluded.updated_at},
            ),
            {
                "partition_key": partition_key,
                "source_table": table,
                "data_mod": data_mod,
                "updated_at": utcnow(),
            },
        )
