"""One batch of Esse3 career rows validated, without touching the state DB (pure: the `careers` asset
writes what it returns). What can run in a thread ahead of the writes."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

from etl.domain.careers import CAREER_TABLES, SOURCE_COLUMNS, CareerRecord, CareerRules, Rejection, map_career
from etl.domain.esse3_time import EPOCH
from etl.domain.source_drift import CAREER_DATA_MOD_COLUMNS, career_digester
from etl.domain.source_values import in_the_future, quarantine_key
from etl.errors import EscSyncError


class ReadCareer(NamedTuple):
    """A validated career as read, with what the state DB keeps beside it."""

    record: CareerRecord
    row_hash: str
    data_mod: dt.datetime  # the newest DATA_MOD of its joined rows
    digest: str  # etl.domain.source_drift's digest of the source row


class PreparedBatch(NamedTuple):
    """One source batch validated, without touching the state DB: what can run ahead of the writes."""

    good: list[ReadCareer]
    bad: list[Rejection]
    newest: dict[str, dt.datetime]  # per source table, the newest DATA_MOD in the batch
    keys: list[Any]  # every key the batch returned (raw)


def prepare_batch(
    batch: Sequence[Any], rules: CareerRules, today: dt.date, cutoff: dt.datetime = dt.datetime.max
) -> PreparedBatch:
    """``batch``: rows of the careers query (SQLAlchemy rows: positional, with ``_fields``).
    ``cutoff``: the latest believable DATA_MOD. A row changed "after" it is quarantined and its
    DATA_MOD never reaches a watermark, so it cannot hide later changes of its academic year."""
    if not batch:
        return PreparedBatch([], [], {}, [])
    keys = batch[0]._fields
    missing = SOURCE_COLUMNS.union(CAREER_DATA_MOD_COLUMNS).difference(keys)
    if missing:  # a site's edit of the SQL lost a column: no career can be validated
        where = "etl/sql/esse3/, or the site's [esse3] sql_dir"
        raise EscSyncError(f"Esse3 careers query returns no {', '.join(sorted(missing))} ({where})")
    stu, anaper, cds = (keys.index(c) for c in CAREER_DATA_MOD_COLUMNS)
    digest_of = career_digester(keys)
    columns = tuple(zip(CAREER_TABLES, (stu, anaper, cds), strict=True))
    newest: dict[str, dt.datetime] = {}
    for table, i in columns:
        values = [v for row in batch if (v := row[i]) is not None and v <= cutoff]
        if values:
            newest[table] = max(values)
    good: list[ReadCareer] = []
    bad: list[Rejection] = []
    copies = Counter(row[0] for row in batch)  # the reader keeps the rows of one key in one batch
    for key in (k for k, n in copies.items() if n > 1):
        bad.append(Rejection(quarantine_key(key), ("duplicate STU_ID (more than one row with this key)",)))
    for row in batch:
        if copies[row[0]] > 1:
            continue
        mapped = map_career(dict(zip(keys, row, strict=True)), rules, today)  # plain dict: fastest lookups
        if future := [t for t, i in columns if in_the_future(row[i], cutoff)]:
            earlier = mapped.reasons if isinstance(mapped, Rejection) else ()
            reason = f"DATA_MOD in the future ({', '.join(future)})"
            bad.append(Rejection(mapped.stu_id, (*earlier, reason)))
            continue
        if isinstance(mapped, Rejection):
            bad.append(mapped)
            continue
        # The career's own DATA_MOD: the newest of its joined rows (person and course may be newer).
        data_mod = max(row[stu] or EPOCH, row[anaper] or EPOCH, row[cds] or EPOCH)
        good.append(ReadCareer(mapped, mapped.row_hash(), data_mod, digest_of(row)))
    return PreparedBatch(good, bad, newest, [row[0] for row in batch])
