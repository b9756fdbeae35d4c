"""A university's Router rate limit, shared through the state DB by every process sending for its key.

The Router limits requests per organisation key, whatever the number of workers sending for it. Each
request reserves the next free send time of its university in one atomic UPDATE (the row lock orders
concurrent reservations, on PostgreSQL across machines), then waits for it. Times are the machines'
epoch clocks, which NTP keeps within milliseconds of each other.
"""

from __future__ import annotations

from sqlalchemy import Engine, case, insert, update
from sqlalchemy.exc import IntegrityError

from etl.store.models import RouterPace


def reserve_send_time(engine: Engine, institution: str, interval_s: float, now: float) -> float:
    """The epoch time at which this request may be sent: ``interval_s`` after the one reserved before
    it, or ``now`` if the university has been idle."""
    later = case((RouterPace.next_at > now, RouterPace.next_at), else_=now) + interval_s
    for _ in range(2):  # the first request ever for the university inserts its row
        with engine.begin() as conn:
            reserved = conn.execute(
                update(RouterPace)
                .where(RouterPace.institution == institution)
                .values(next_at=later)
                .returning(RouterPace.next_at)
            ).scalar_one_or_none()
            if reserved is not None:
                return float(reserved) - interval_s
            try:
                with conn.begin_nested():
                    conn.execute(insert(RouterPace).values(institution=institution, next_at=now + interval_s))
                return now
            except IntegrityError:  # another process inserted it first: reserve through it
                continue
    raise RuntimeError("unreachable: the row exists after a lost insert race")


def hold_sends(engine: Engine, institution: str, until: float) -> None:
    """The Router answered Retry-After: no worker sends for the university before ``until``."""
    with engine.begin() as conn:
        conn.execute(
            update(RouterPace)
            .where(RouterPace.institution == institution, RouterPace.next_at < until)
            .values(next_at=until)
        )
