"""Work the state DB says is left undone, per partition, and the deployment's retries of it.

Unfinished Router work: persons and cards whose intent was recorded but never confirmed, or whose last
call failed for a transient reason ("Router unavailable": its retries ran out). Permanent refusals are
in the quarantine, not here: running again would not change them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from sqlalchemy import Connection, delete, insert, select, text

from etl.domain.retries import RetryState
from etl.domain.states import SyncState
from etl.store.models import PartitionRetry

TRANSIENT = "Router unavailable%"  # etl.assets: the last_error of a call whose retries ran out

# Persons are per university: their work belongs to the partitions of their usable careers.
_PERSONS = text(f"""
SELECT c.institution, c.academic_year, COUNT(DISTINCT p.esi)
FROM persons p JOIN careers c ON c.institution = p.institution AND c.pers_id = p.pers_id
WHERE (p.state = '{SyncState.PENDING}' OR p.last_error IS NOT NULL)
  AND (p.state = '{SyncState.PENDING}' OR p.last_error LIKE '{TRANSIENT}')
  AND c.finalised = :true AND c.vanished_at IS NULL
GROUP BY c.institution, c.academic_year
""")
_CARDS = text(f"""
SELECT institution, academic_year, COUNT(*) FROM cards
WHERE (state = '{SyncState.PENDING}' OR last_error IS NOT NULL)
  AND (state = '{SyncState.PENDING}' OR last_error LIKE '{TRANSIENT}')
GROUP BY institution, academic_year
""")


class Unfinished(NamedTuple):
    persons: int = 0  # not (yet) confirmed by the Router
    cards: int = 0

    def describe(self) -> str:
        return f"{self.persons} person(s) and {self.cards} card(s) not confirmed by the Router"


def unfinished(conn: Connection) -> dict[tuple[str, int], Unfinished]:
    """(institution, academic year) → its unfinished Router work (partitions with none are absent)."""
    out: dict[tuple[str, int], Unfinished] = {}
    for inst, year, n in conn.execute(_PERSONS, {"true": True}):
        out[inst, year] = Unfinished(persons=int(n))
    for inst, year, n in conn.execute(_CARDS):
        out[inst, year] = out.get((inst, year), Unfinished())._replace(cards=int(n))
    return out


def unfinished_totals(conn: Connection, institution: str) -> Unfinished:
    """The university's persons and cards not confirmed by the Router (each counted once)."""
    persons = conn.execute(
        text(
            f"SELECT COUNT(*) FROM persons WHERE institution = :i AND (state = '{SyncState.PENDING}' OR "
            f"(last_error IS NOT NULL AND last_error LIKE '{TRANSIENT}'))"
        ),
        {"i": institution},
    ).scalar_one()
    cards = conn.execute(
        text(
            f"SELECT COUNT(*) FROM cards WHERE institution = :i AND (state = '{SyncState.PENDING}' OR "
            f"(last_error IS NOT NULL AND last_error LIKE '{TRANSIENT}'))"
        ),
        {"i": institution},
    ).scalar_one()
    return Unfinished(int(persons), int(cards))


def retries(conn: Connection) -> dict[str, RetryState]:
    rows = conn.execute(
        select(
            PartitionRetry.partition_key,
            PartitionRetry.attempts,
            PartitionRetry.first_at,
            PartitionRetry.next_at,
        )
    )
    return {key: RetryState(attempts, first, next_at) for key, attempts, first, next_at in rows}


def record_attempt(
    conn: Connection, partition_key: str, institution: str, state: RetryState, reason: str
) -> None:
    conn.execute(delete(PartitionRetry).where(PartitionRetry.partition_key == partition_key))
    conn.execute(
        insert(PartitionRetry).values(
            partition_key=partition_key,
            institution=institution,
            attempts=state.attempts,
            first_at=state.first_at,
            next_at=state.next_at,
            reason=reason,
        )
    )


def forget_retries(conn: Connection, partition_keys: Iterable[str]) -> None:
    """Partitions with nothing left to do: their next trouble starts a new episode."""
    keys = list(partition_keys)
    if keys:
        conn.execute(delete(PartitionRetry).where(PartitionRetry.partition_key.in_(keys)))


def retry_of(conn: Connection, partition_key: str) -> tuple[RetryState, str] | None:
    row = conn.execute(
        select(
            PartitionRetry.attempts, PartitionRetry.first_at, PartitionRetry.next_at, PartitionRetry.reason
        ).where(PartitionRetry.partition_key == partition_key)
    ).first()
    return None if row is None else (RetryState(row[0], row[1], row[2]), row[3])
