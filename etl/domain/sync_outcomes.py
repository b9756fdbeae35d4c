"""What a Router call did to one person or card: the seam between the Router assets and the state DB.
Results are defined once here (states in etl.domain.states); being ``StrEnum``s they bind to SQL as
their text."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from etl.domain.lifecycle import CardTarget
from etl.domain.states import SyncState


class SyncResult(StrEnum):
    """What one call did (counted in the run's metadata)."""

    REGISTERED = "registered"
    UPDATED = "updated"
    ADOPTED = "adopted"  # persons: found at the Router (409 ER-0019) and made ours
    RECONCILED = "reconciled"  # cards: found at the Router (409 ER-0002), ours, brought in line
    REMINTED = "reminted"  # cards: the number was not ours to use; the badge gets a fresh one
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class PersonOutcome:
    esi: str
    stu_id: int
    state: SyncState
    result: SyncResult
    synced_hash: str | None  # the body now at the Router; None: keep the stored one
    reason: str | None = None  # a permanent refusal, quarantined with this reason
    last_error: str | None = None  # a transient failure: retried by the next run


@dataclass(frozen=True, slots=True)
class CardOutcome:
    escn: str
    bdg_id: int
    result: SyncResult
    confirmed: CardTarget | None = None  # status and expiry the Router now holds; None: not confirmed
    synced_hash: str | None = None
    reason: str | None = None  # a permanent refusal, quarantined with this reason
    last_error: str | None = None  # why the call failed (the confirmed Router state is left alone)

    @property
    def reminted(self) -> bool:
        return self.result is SyncResult.REMINTED
