"""SQLite persistence of the emulator's persons, cards and pictures, so state survives a restart
(or, without a file, in memory for the life of the process).

Called directly from the event loop: each statement takes microseconds on a local file (WAL,
synchronous=NORMAL), far less than handing work to a thread would cost. Card numbers are never
reused: a deleted card keeps its row (``deleted = 1``).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from etl.emulator.contract import CardInput, PersonInput

_SCHEMA = """
CREATE TABLE IF NOT EXISTS persons (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    esi_key TEXT NOT NULL UNIQUE,
    identifier TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS person_orgs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    person_id INTEGER NOT NULL REFERENCES persons(id),
    pic TEXT NOT NULL,
    full_name TEXT NOT NULL,
    email TEXT,
    academic_level TEXT,
    created_at TEXT NOT NULL,
    modified_at TEXT NOT NULL,
    UNIQUE (person_id, pic)
);
CREATE INDEX IF NOT EXISTS person_orgs_by_pic ON person_orgs (pic, id);
CREATE TABLE IF NOT EXISTS cards (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    card_number TEXT NOT NULL UNIQUE,
    pic TEXT NOT NULL,
    person_id INTEGER NOT NULL REFERENCES persons(id),
    status TEXT NOT NULL,
    card_type TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    display_name TEXT,
    processor_identifier TEXT,
    deleted INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    modified_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cards_by_pic ON cards (pic, deleted, id);
CREATE INDEX IF NOT EXISTS cards_by_person ON cards (person_id, pic, deleted, id);
CREATE TABLE IF NOT EXISTS pictures (
    person_id INTEGER NOT NULL REFERENCES persons(id),
    pic TEXT NOT NULL,
    image BLOB NOT NULL,
    PRIMARY KEY (person_id, pic)
);
"""


@dataclass(frozen=True)
class Relation:
    """A person as one organisation sees it."""

    relation_id: int
    person_id: int
    identifier: str
    pic: str
    full_name: str
    email: str | None
    academic_level: str | None
    created_at: str
    modified_at: str
    organisation_count: int
    has_picture: bool


@dataclass(frozen=True)
class Card:
    card_number: str
    pic: str
    person_id: int
    person_identifier: str
    status: str
    card_type: str
    issued_at: dt.date
    expires_at: dt.date
    display_name: str | None
    processor_identifier: str | None
    deleted: bool
    created_at: str
    modified_at: str


_RELATION_SELECT = """
SELECT r.id, p.id, p.identifier, r.pic, r.full_name, r.email, r.academic_level, r.created_at,
       r.modified_at, (SELECT COUNT(*) FROM person_orgs o WHERE o.person_id = p.id),
       EXISTS (SELECT 1 FROM pictures x WHERE x.person_id = p.id AND x.pic = r.pic)
FROM person_orgs r JOIN persons p ON p.id = r.person_id
"""
_CARD_SELECT = """
SELECT c.card_number, c.pic, c.person_id, p.identifier, c.status, c.card_type, c.issued_at,
       c.expires_at, c.display_name, c.processor_identifier, c.deleted, c.created_at, c.modified_at
FROM cards c JOIN persons p ON p.id = c.person_id
"""
PERSON_SORTS = {"identifier": "p.esi_key", "fullName": "r.full_name", "createdAt": "r.id"}
CARD_SORTS = {
    "cardNumber": "c.card_number",
    "issuedAt": "c.issued_at",
    "expiresAt": "c.expires_at",
    "createdAt": "c.id",
}


class Conflict(Exception):
    """A unique key already exists (person relation or card number)."""


class Store:
    def __init__(self, path: Path | None = None) -> None:
        """``path=None``: in memory, gone with the process."""
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        target = ":memory:" if path is None else str(path)
        self._db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._counts: dict[tuple[str, tuple[object, ...]], int] = {}

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        self._counts.clear()

    def _count(self, sql: str, args: tuple[object, ...]) -> int:
        # Walking a list re-counts on every page; counts stay valid until the next write.
        key = (sql, args)
        n = self._counts.get(key)
        if n is None:
            n = self._counts[key] = self._db.execute(sql, args).fetchone()[0]
        return n

    def reset(self) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM pictures")
            db.execute("DELETE FROM cards")
            db.execute("DELETE FROM person_orgs")
            db.execute("DELETE FROM persons")

    # --- persons ---------------------------------------------------------------------------------

    def person_id(self, esi_key: str) -> int | None:
        row = self._db.execute("SELECT id FROM persons WHERE esi_key = ?", (esi_key,)).fetchone()
        return row[0] if row else None

    def organisation_count(self, person_id: int) -> int:
        return self._db.execute(
            "SELECT COUNT(*) FROM person_orgs WHERE person_id = ?", (person_id,)
        ).fetchone()[0]

    def relation_by_esi(self, esi_key: str, pic: str) -> Relation | None:
        sql = _RELATION_SELECT + " WHERE p.esi_key = ? AND r.pic = ?"
        row = self._db.execute(sql, (esi_key, pic)).fetchone()
        return _relation(row) if row else None

    def relation(self, person_id: int, pic: str) -> Relation | None:
        row = self._db.execute(
            _RELATION_SELECT + " WHERE r.person_id = ? AND r.pic = ?", (person_id, pic)
        ).fetchone()
        return _relation(row) if row else None

    def add_relation(self, esi_key: str, person: PersonInput, pic: str, now: str) -> Relation:
        """Register the person (first organisation) or add our relation; Conflict when it exists."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO persons (esi_key, identifier, created_at) VALUES (?, ?, ?)",
                (esi_key, person.identifier, now),
            )
            person_id = db.execute("SELECT id FROM persons WHERE esi_key = ?", (esi_key,)).fetchone()[0]
            try:
                db.execute(
                    "INSERT INTO person_orgs (person_id, pic, full_name, email, academic_level, created_at,"
                    " modified_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (person_id, pic, person.full_name or "", person.email, person.academic_level, now, now),
                )
            except sqlite3.IntegrityError:
                raise Conflict from None
        relation = self.relation(person_id, pic)
        assert relation is not None
        return relation

    def replace_relation(self, person_id: int, person: PersonInput, pic: str, now: str) -> Relation | None:
        with self._tx() as db:
            db.execute(
                "UPDATE person_orgs SET full_name = ?, email = ?, academic_level = ?, modified_at = ?"
                " WHERE person_id = ? AND pic = ?",
                (person.full_name or "", person.email, person.academic_level, now, person_id, pic),
            )
        return self.relation(person_id, pic)

    def delete_relation(self, person_id: int, pic: str, now: str) -> bool:
        """Remove our relation and mark our cards of that person deleted."""
        with self._tx() as db:
            db.execute("DELETE FROM pictures WHERE person_id = ? AND pic = ?", (person_id, pic))
            gone = db.execute(
                "DELETE FROM person_orgs WHERE person_id = ? AND pic = ?", (person_id, pic)
            ).rowcount
            db.execute(
                "UPDATE cards SET deleted = 1, modified_at = ?"
                " WHERE person_id = ? AND pic = ? AND deleted = 0",
                (now, person_id, pic),
            )
        return gone > 0

    def list_relations(
        self, pic: str, offset: int, limit: int, sort: str | None, desc: bool
    ) -> tuple[int, list[Relation]]:
        total = self._count("SELECT COUNT(*) FROM person_orgs WHERE pic = ?", (pic,))
        order = _order(PERSON_SORTS, sort, desc, "r.id")
        # OFFSET walks skipped rows: pick the page's ids on the index alone, then join for those.
        join = " JOIN persons p ON p.id = r.person_id" if sort == "identifier" else ""
        page = f"SELECT r.id FROM person_orgs r{join} WHERE r.pic = ? ORDER BY {order} LIMIT ? OFFSET ?"
        rows = self._db.execute(
            _RELATION_SELECT + f" WHERE r.id IN ({page}) ORDER BY {order}", (pic, limit, offset)
        ).fetchall()
        return total, [_relation(r) for r in rows]

    # --- pictures --------------------------------------------------------------------------------

    def picture(self, person_id: int, pic: str) -> bytes | None:
        row = self._db.execute(
            "SELECT image FROM pictures WHERE person_id = ? AND pic = ?", (person_id, pic)
        ).fetchone()
        return row[0] if row else None

    def put_picture(self, person_id: int, pic: str, image: bytes) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO pictures (person_id, pic, image) VALUES (?, ?, ?)"
                " ON CONFLICT (person_id, pic) DO UPDATE SET image = excluded.image",
                (person_id, pic, image),
            )

    def delete_picture(self, person_id: int, pic: str) -> bool:
        with self._tx() as db:
            return (
                db.execute("DELETE FROM pictures WHERE person_id = ? AND pic = ?", (person_id, pic)).rowcount
                > 0
            )

    # --- cards -----------------------------------------------------------------------------------

    def card(self, card_number: str) -> Card | None:
        row = self._db.execute(_CARD_SELECT + " WHERE c.card_number = ?", (card_number,)).fetchone()
        return _card(row) if row else None

    def add_card(self, number: str, card: CardInput, person: Relation, now: str) -> Card:
        """One INSERT in autocommit mode (its own transaction); Conflict when the number is taken."""
        try:
            self._db.execute(
                "INSERT INTO cards (card_number, pic, person_id, status, card_type, issued_at,"
                " expires_at, display_name, processor_identifier, created_at, modified_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    number,
                    person.pic,
                    person.person_id,
                    card.status,
                    card.card_type,
                    card.issued_at.isoformat(),
                    card.expires_at.isoformat(),
                    card.display_name,
                    card.processor_identifier,
                    now,
                    now,
                ),
            )
        except sqlite3.IntegrityError:
            raise Conflict from None
        self._counts.clear()
        return Card(
            card_number=number,
            pic=person.pic,
            person_id=person.person_id,
            person_identifier=person.identifier,
            status=card.status,
            card_type=card.card_type,
            issued_at=card.issued_at,
            expires_at=card.expires_at,
            display_name=card.display_name,
            processor_identifier=card.processor_identifier,
            deleted=False,
            created_at=now,
            modified_at=now,
        )

    def replace_card(self, number: str, card: CardInput, now: str) -> Card:
        with self._tx() as db:
            db.execute(
                "UPDATE cards SET status = ?, card_type = ?, issued_at = ?, expires_at = ?, display_name = ?,"
                " processor_identifier = ?, modified_at = ? WHERE card_number = ?",
                (
                    card.status,
                    card.card_type,
                    card.issued_at.isoformat(),
                    card.expires_at.isoformat(),
                    card.display_name,
                    card.processor_identifier,
                    now,
                    number,
                ),
            )
        stored = self.card(number)
        assert stored is not None
        return stored

    def delete_card(self, number: str, now: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE cards SET deleted = 1, modified_at = ? WHERE card_number = ?", (now, number))

    def list_cards(
        self, pic: str, person_id: int | None, offset: int, limit: int, sort: str | None, desc: bool
    ) -> tuple[int, list[Card]]:
        args: list[object]
        where, args = "c.pic = ? AND c.deleted = 0", [pic]
        if person_id is not None:
            where += " AND c.person_id = ?"
            args.append(person_id)
        total = self._count(f"SELECT COUNT(*) FROM cards c WHERE {where}", tuple(args))
        order = _order(CARD_SORTS, sort, desc, "c.id")
        page = f"SELECT c.id FROM cards c WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?"
        rows = self._db.execute(
            _CARD_SELECT + f" WHERE c.id IN ({page}) ORDER BY {order}", [*args, limit, offset]
        ).fetchall()
        return total, [_card(r) for r in rows]

    # --- stats -----------------------------------------------------------------------------------

    def counts_by_pic(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for pic, n in self._db.execute("SELECT pic, COUNT(*) FROM person_orgs GROUP BY pic"):
            counts.setdefault(pic, {"persons": 0, "cards": 0, "deleted_cards": 0})["persons"] = n
        for pic, deleted, n in self._db.execute(
            "SELECT pic, deleted, COUNT(*) FROM cards GROUP BY pic, deleted"
        ):
            entry = counts.setdefault(pic, {"persons": 0, "cards": 0, "deleted_cards": 0})
            entry["deleted_cards" if deleted else "cards"] = n
        return counts


def _order(columns: dict[str, str], sort: str | None, desc: bool, tie: str) -> str:
    # Only whitelisted column expressions reach the SQL text; the tie-breaker keeps pages stable.
    direction = "DESC" if desc else "ASC"
    column = columns.get(sort or "", tie)
    return f"{column} {direction}, {tie} {direction}" if column != tie else f"{tie} {direction}"


_RELATION_FIELDS = tuple(f.name for f in fields(Relation))


def _relation(row: tuple[Any, ...]) -> Relation:
    values = dict(zip(_RELATION_FIELDS, row, strict=True))
    return Relation(**values | {"has_picture": bool(values["has_picture"])})  # SQLite's 0/1


def _card(row: tuple[Any, ...]) -> Card:
    values = list(row)
    values[6] = dt.date.fromisoformat(values[6])
    values[7] = dt.date.fromisoformat(values[7])
    values[10] = bool(values[10])
    return Card(*values)
