"""State DB: SQLAlchemy 2 typed models. The schema itself is owned by the Alembic migrations.

Times are naive UTC for our own bookkeeping; ``source_data_mod`` and watermarks keep Esse3's
``DATA_MOD`` as it is (naive, the Esse3 server's clock) because they are only compared with it.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, Date, DateTime, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

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
    stage: Mapped[str] = mapped_column(String(16))
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
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
