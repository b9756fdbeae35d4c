"""State DB: SQLAlchemy 2 typed models. The schema itself is owned by the Alembic migrations.

Times are naive UTC for our own bookkeeping; ``source_data_mod`` and watermarks keep Esse3's
``DATA_MOD`` as it is (naive, the Esse3 server's clock) because they are only compared with it.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from etl.domain.states import CardStatus, ExportKind, ExportStatus, QuarantineStage, SyncState

# Explicit constraint names so migrations are reproducible and SQLite batch mode can alter them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


E = TypeVar("E", bound=StrEnum)


class StateText(TypeDecorator[E]):
    """A column holding one of a StrEnum's values: stored as plain text (the schema is VARCHAR, so
    migrations and reports read it as text), read back as the enum. An unknown value is an error."""

    impl = String
    cache_ok = True

    def __init__(self, enum: type[E], length: int) -> None:
        super().__init__(length)
        self.enum = enum

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> E | None:
        return None if value is None else self.enum(value)


# Persons and cards the Router has not confirmed as wanted: intents not yet confirmed, or a call that
# failed (a transient failure keeps the confirmed state and records last_error). Partial indexes.
UNFINISHED = f"state = '{SyncState.PENDING}' OR last_error IS NOT NULL"


def optional_state(value: str | None) -> SyncState | None:
    """A stored state read through plain SQL, as the enum (None stays None)."""
    return None if value is None else SyncState(value)


def optional_status(value: str | None) -> CardStatus | None:
    return None if value is None else CardStatus(value)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Career(Base):
    """One Esse3 career (P01_STU row) joined with its person and course, as last read and validated."""

    __tablename__ = "careers"

    institution: Mapped[str] = mapped_column(String(32), primary_key=True)
    stu_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    pers_id: Mapped[int] = mapped_column(Integer)
    person_key: Mapped[str] = mapped_column(String(64))
    matricola: Mapped[str] = mapped_column(String(20))
    academic_year: Mapped[int] = mapped_column(Integer)
    course_code: Mapped[str] = mapped_column(String(20))
    course_name: Mapped[str] = mapped_column(String(255))
    course_type: Mapped[str] = mapped_column(String(10))
    academic_level: Mapped[str | None] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(2))
    finalised: Mapped[bool] = mapped_column(Boolean)
    closing_reason: Mapped[str | None] = mapped_column(String(10))
    closing_category: Mapped[str | None] = mapped_column(String(16))
    enrolment_date: Mapped[dt.date | None] = mapped_column(Date)
    closing_date: Mapped[dt.date | None] = mapped_column(Date)
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str | None] = mapped_column(String(255))
    consent: Mapped[str | None] = mapped_column(String(1))
    source_esi: Mapped[str | None] = mapped_column(String(255))
    source_data_mod: Mapped[dt.datetime] = mapped_column(DateTime)
    row_hash: Mapped[str] = mapped_column(String(32))
    # Digest of the source row as read (etl.domain.source_drift): the sweep compares it with Esse3's.
    source_digest: Mapped[str | None] = mapped_column(String(32))
    # Set when the career left Esse3 (deleted): its cards are deactivated; cleared if it comes back.
    vanished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # The ESI esc-sync wrote onto CODICE_ESI: ours to replace when the career changes person.
    esi_written: Mapped[str | None] = mapped_column(String(255))
    erased_at: Mapped[dt.datetime | None] = mapped_column(DateTime)  # names, e-mail, matricola removed
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (
        Index("ix_careers_partition", "institution", "academic_year"),
        Index("ix_careers_matricola", "institution", "matricola"),
        Index("ix_careers_person", "institution", "pers_id"),
    )


class Quarantine(Base):
    """A source row (or a Router effect) that could not be processed, with the precise reason.

    One row per (institution, stage, source table, key); ``resolved_at`` is set when a later run
    processes the fixed row."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    institution: Mapped[str] = mapped_column(String(32))
    academic_year: Mapped[int | None] = mapped_column(Integer)
    stage: Mapped[QuarantineStage] = mapped_column(StateText(QuarantineStage, 16))
    source_table: Mapped[str] = mapped_column(String(32))
    source_key: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        Index("uq_quarantine_row", "institution", "stage", "source_table", "source_key", unique=True),
        Index("ix_quarantine_partition", "institution", "academic_year", "resolved_at"),
    )


class Watermark(Base):
    """Highest source ``DATA_MOD`` processed, per partition and source table.

    Kept per partition so a backfill of one academic year never moves another year's watermark;
    committed in the same transaction as the rows it covers."""

    __tablename__ = "watermarks"

    partition_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    source_table: Mapped[str] = mapped_column(String(32), primary_key=True)
    data_mod: Mapped[dt.datetime] = mapped_column(DateTime)
    # Esse3's rows of the partition when its keys were last compared with ours (None: never): the
    # change markers compare it with Esse3's count, so a late insert under an old DATA_MOD is seen.
    row_count: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Badge(Base):
    """One Esse3 badge (P01_BADGE row) as last read: the source of a card."""

    __tablename__ = "badges"

    institution: Mapped[str] = mapped_column(String(32), primary_key=True)
    bdg_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    stu_id: Mapped[int] = mapped_column(Integer)
    pers_id: Mapped[int] = mapped_column(Integer)
    academic_year: Mapped[int] = mapped_column(Integer)  # of the career: the badge's partition
    valid_from: Mapped[dt.date] = mapped_column(Date)
    valid_to: Mapped[dt.date] = mapped_column(Date)
    annulled: Mapped[bool] = mapped_column(Boolean)
    printed_on: Mapped[dt.date | None] = mapped_column(Date)
    kind: Mapped[str] = mapped_column(String(1))  # V virtual, F physical
    source_data_mod: Mapped[dt.datetime] = mapped_column(DateTime)
    source_digest: Mapped[str | None] = mapped_column(String(32))
    vanished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)  # deleted in Esse3: card INACTIVE
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (
        Index("ix_badges_partition", "institution", "academic_year"),
        Index("ix_badges_career", "institution", "stu_id"),
    )


class Person(Base):
    """A student's ESI and its registration at the Router.

    ``state`` is the intent protocol: 'pending' is committed *before* the Router call (with the
    deterministic identity, the ESI), 'registered' after it; a crash in between is recovered by
    re-running (409 ER-0019 → read back and adopt)."""

    __tablename__ = "persons"

    institution: Mapped[str] = mapped_column(String(32), primary_key=True)
    esi: Mapped[str] = mapped_column(String(255), primary_key=True)
    pers_id: Mapped[int] = mapped_column(Integer)
    person_key: Mapped[str] = mapped_column(String(64))
    state: Mapped[SyncState] = mapped_column(StateText(SyncState, 16))
    synced_hash: Mapped[str | None] = mapped_column(String(32))  # body last confirmed at the Router
    first_sync_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    last_sync_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    erase_reason: Mapped[str | None] = mapped_column(String(16))  # an etl.domain.retention.EraseReason
    erase_requested_at: Mapped[dt.datetime | None] = mapped_column(DateTime)  # the intent (etl.erasure)
    erased_at: Mapped[dt.datetime | None] = mapped_column(DateTime)  # gone at the Router and at home
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (
        Index("uq_persons_pers_id", "institution", "pers_id", unique=True),
        Index(
            "ix_persons_unfinished",
            "institution",
            sqlite_where=text(UNFINISHED),
            postgresql_where=text(UNFINISHED),
        ),
    )


class Card(Base):
    """A card (one current card per badge) with its ESCN, minted and recorded before it is registered.

    ``desired_status`` is what the career and badge data say; ``router_status`` what the Router
    last confirmed. ``changed_at`` moves whenever what a vendor sees changes (feed cursor).
    ``retired_at``: the badge's career changed person; the Router never moves a card to another
    person, so this card stays INACTIVE under its ESI for good and the badge gets a new card."""

    __tablename__ = "cards"

    escn: Mapped[str] = mapped_column(String(36), primary_key=True)
    institution: Mapped[str] = mapped_column(String(32))
    academic_year: Mapped[int] = mapped_column(Integer)
    bdg_id: Mapped[int] = mapped_column(Integer)
    stu_id: Mapped[int] = mapped_column(Integer)
    esi: Mapped[str] = mapped_column(String(255))
    card_type: Mapped[str] = mapped_column(String(24))  # PASSIVE | SMART_PASSIVE
    issued_at: Mapped[dt.date] = mapped_column(Date)
    expires_at: Mapped[dt.date] = mapped_column(Date)
    desired_status: Mapped[CardStatus] = mapped_column(StateText(CardStatus, 10))
    router_status: Mapped[CardStatus | None] = mapped_column(StateText(CardStatus, 10))
    state: Mapped[SyncState] = mapped_column(StateText(SyncState, 16))
    synced_hash: Mapped[str | None] = mapped_column(String(32))
    first_sync_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    last_sync_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    changed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    retired_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    delete_requested_at: Mapped[dt.datetime | None] = mapped_column(DateTime)  # the intent (etl.erasure)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime)  # DELETE confirmed (204 or 404)

    __table_args__ = (
        Index(
            "uq_cards_badge",
            "institution",
            "bdg_id",
            unique=True,
            sqlite_where=text("retired_at IS NULL"),
            postgresql_where=text("retired_at IS NULL"),
        ),
        Index("ix_cards_partition", "institution", "academic_year"),
        Index("ix_cards_feed", "institution", "changed_at", "escn"),
        Index("ix_cards_esi", "institution", "esi"),
        Index(
            "ix_cards_unfinished",
            "institution",
            sqlite_where=text(UNFINISHED),
            postgresql_where=text(UNFINISHED),
        ),
    )


class SourceFinding(Base):
    """A source row the sweep (etl.sweep) found out of step with the state DB: missing here, changed
    under an old DATA_MOD, or vanished from its partition. The partition's next run re-reads it by
    key and deletes the finding in the same transaction."""

    __tablename__ = "source_findings"

    institution: Mapped[str] = mapped_column(String(32), primary_key=True)
    source_table: Mapped[str] = mapped_column(String(32), primary_key=True)  # P01_STU | P01_BADGE
    source_key: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    academic_year: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(12))  # a domain.source_drift.DriftKind
    found_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (Index("ix_source_findings_partition", "institution", "academic_year"),)


class VanishHold(Base):
    """A mass deletion the guard held back (``[esse3] max_vanished_share``): nothing was deactivated.
    ``confirmed_at`` is set by `esc-sync reconcile --repair --confirm-vanished`; the partition's next
    run then applies it and deletes the hold."""

    __tablename__ = "vanish_holds"

    partition_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    source_table: Mapped[str] = mapped_column(String(32), primary_key=True)
    institution: Mapped[str] = mapped_column(String(32))
    vanished: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    held_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class PartitionRetry(Base):
    """A partition the deployment is running again because work was left (Router calls out of retries,
    a failed run): how many attempts so far and when the next one is due (etl.domain.retries). Deleted
    when the partition has no work left."""

    __tablename__ = "partition_retries"

    partition_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    institution: Mapped[str] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer)
    first_at: Mapped[dt.datetime] = mapped_column(DateTime)
    next_at: Mapped[dt.datetime] = mapped_column(DateTime)
    reason: Mapped[str] = mapped_column(Text)  # counts and kinds only


class EscnClock(Base):
    """The next ESCN clock sequence per issuer PIC: every minter (run, process, machine) takes its own
    from here, so two minters running at once never share one and cannot mint the same number."""

    __tablename__ = "escn_clock"

    pic: Mapped[str] = mapped_column(String(9), primary_key=True)
    next_seq: Mapped[int] = mapped_column(Integer)


class PartitionLock(Base):
    """Who is running a partition now (etl.store.locks): one writer per partition."""

    __tablename__ = "partition_locks"

    partition_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64))
    pid: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(String(255))
    acquired_at: Mapped[dt.datetime] = mapped_column(DateTime)


class RouterPace(Base):
    """When a university's next Router request may leave (epoch seconds), shared by every process and
    machine sending for its key (etl.store.pace): its rate limit holds however many workers run."""

    __tablename__ = "router_pace"

    institution: Mapped[str] = mapped_column(String(32), primary_key=True)
    next_at: Mapped[float] = mapped_column(Float)


class BadgeWriteBack(Base):
    """What esc-sync wrote onto an Esse3 badge (docs/esse3-badge-write-back.md): the ESCN confirmed
    written and a digest of everything written (only badges whose card changed are written again),
    and the ESCN being written, recorded before the write: after a crash both count as ours."""

    __tablename__ = "badge_write_backs"

    institution: Mapped[str] = mapped_column(String(32), primary_key=True)
    bdg_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    escn: Mapped[str | None] = mapped_column(String(36))  # None: no write confirmed yet
    pending_escn: Mapped[str | None] = mapped_column(String(36))
    written_hash: Mapped[str | None] = mapped_column(String(32))
    written_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class QrImage(Base):
    """The card's QR symbol (PNG and SVG), kept in the state DB: see docs/architecture.md."""

    __tablename__ = "qr_images"

    escn: Mapped[str] = mapped_column(String(36), primary_key=True)
    institution: Mapped[str] = mapped_column(String(32))
    academic_year: Mapped[int] = mapped_column(Integer)
    payload: Mapped[str] = mapped_column(String(255))
    png: Mapped[bytes] = mapped_column(LargeBinary)
    svg: Mapped[bytes] = mapped_column(LargeBinary)
    rendered_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (Index("ix_qr_images_partition", "institution", "academic_year"),)


class Export(Base):
    """One export (a Parquet and a ZIP file) of a university × academic year."""

    __tablename__ = "exports"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    institution: Mapped[str] = mapped_column(String(32))
    academic_year: Mapped[int] = mapped_column(Integer)
    kind: Mapped[ExportKind] = mapped_column(StateText(ExportKind, 12))
    since: Mapped[dt.datetime | None] = mapped_column(DateTime)  # incremental: changes after this
    until: Mapped[dt.datetime] = mapped_column(DateTime)  # cards changed up to this instant
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    rows: Mapped[int] = mapped_column(Integer)
    parquet_path: Mapped[str] = mapped_column(String(500))
    parquet_bytes: Mapped[int] = mapped_column(BigInteger)
    parquet_sha256: Mapped[str] = mapped_column(String(64))
    zip_path: Mapped[str] = mapped_column(String(500))
    zip_bytes: Mapped[int] = mapped_column(BigInteger)
    zip_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[ExportStatus] = mapped_column(StateText(ExportStatus, 12), default=ExportStatus.READY)

    __table_args__ = (Index("ix_exports_partition", "institution", "academic_year", "created_at"),)


class ApiToken(Base):
    """A REST API bearer token. Only its SHA-256 is stored (tokens are 256-bit random, so a fast
    hash is enough); the token itself is printed once, at creation."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))  # shown in listings to recognise a token
    scopes: Mapped[str] = mapped_column(String(200))  # space-separated: exports:read badges:read
    institutions: Mapped[str] = mapped_column(String(500))  # space-separated codes
    rate_per_minute: Mapped[int] = mapped_column(Integer, default=600)
    # Lookups by matricola (guessable, and each answer names a student): 0 means by ESCN only.
    matricola_rate_per_minute: Mapped[int] = mapped_column(Integer, default=60, server_default="60")
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)  # None: never
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class ApiAudit(Base):
    """One row per authenticated read (downloads, badges, QR images, feed, lists): who fetched what of
    which university, when, how much. Committed before the answer is sent (etl.api.audit)."""

    __tablename__ = "api_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_id: Mapped[int] = mapped_column(Integer)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    action: Mapped[str] = mapped_column(String(32))
    resource: Mapped[str] = mapped_column(String(600))  # path, or path with the validated query
    status: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    client: Mapped[str | None] = mapped_column(String(64))
    institution: Mapped[str | None] = mapped_column(String(32))  # the university read, when one is

    __table_args__ = (Index("ix_api_audit_token", "token_id", "at"),)


class WalletRegistration(Base):
    """A device holding a card's Apple Wallet pass (Apple's pass web service registers it), so the
    device can ask which of its passes changed. The push token is the device's: dropped with the card
    when its holder is erased."""

    __tablename__ = "wallet_registrations"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pass_type_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    serial_number: Mapped[str] = mapped_column(String(36), primary_key=True)  # the card's ESCN
    push_token: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (Index("ix_wallet_registrations_serial", "serial_number"),)


class WalletPass(Base):
    """What a card's wallet passes last showed (etl.wallet.follow): the digest of the stored Apple pass
    (``pass.json``) and when it changed (the tag Apple's web service gives devices), the digest the
    devices were last pushed, and the digest of the object Google Wallet holds. Digests, no names:
    kept until the card's Google object is scrubbed after its holder's erasure."""

    __tablename__ = "wallet_passes"

    escn: Mapped[str] = mapped_column(String(36), primary_key=True)  # the card's: its partition is the card's
    apple_digest: Mapped[str | None] = mapped_column(String(64))
    apple_updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    pushed_digest: Mapped[str | None] = mapped_column(String(64))
    google_digest: Mapped[str | None] = mapped_column(String(64))
