"""Every state esc-sync stores or reads back, spelled once. Being ``StrEnum``s they bind to SQL and
compare with stored text as their value; the ORM columns are typed with them (etl.store.models)."""

from __future__ import annotations

from enum import StrEnum


class SyncState(StrEnum):
    """Where a person or card stands with the Router (``persons.state``, ``cards.state``)."""

    PENDING = "pending"  # intent recorded, not (yet) confirmed
    REGISTERED = "registered"  # the Router confirmed it
    FAILED = "failed"  # the Router refused it for good: quarantined
    OPTED_OUT = "opted_out"  # persons only: no consent, never sent


class CardStatus(StrEnum):
    """A card's status as the Router holds it (``cards.desired_status``, ``cards.router_status``)."""

    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    EXPIRED = "EXPIRED"  # how the Router (and a verifier) reads any card past its expiry: never sent


class ExportStatus(StrEnum):
    """An export's files (``exports.status``)."""

    READY = "ready"  # its files exist and are served
    REBUILD = "rebuild"  # stale or damaged: the next export of its partition is a full one replacing it
    EXPIRED = "expired"  # past retention: files deleted, the row kept for the audit trail


class ExportKind(StrEnum):
    FULL = "full"
    INCREMENTAL = "incremental"


class QuarantineStage(StrEnum):
    """Which step quarantined a source row (``quarantine.stage``)."""

    CAREERS = "careers"  # the career row itself (keys, names, statuses...)
    ESI = "esi"  # its person's ESI (conflict on CODICE_ESI, Router refusal)
    BADGES = "badges"  # the badge row itself
    CARDS = "cards"  # its card (Router refusal)
    BADGE_WRITE_BACK = "badge_write_back"  # its card could not be written onto the Esse3 badge
