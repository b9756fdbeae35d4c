"""Badge rules: which Esse3 badge rows make a card, and what esc-sync writes back onto a badge."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import NamedTuple

from etl.domain.lifecycle import CARD_TYPE_OF_BADGE

ESCN_CONFLICT = "badge already carries a different ESCN (ESC_ESCN): not overwritten"
BADGE_GONE = "badge row not found in Esse3 (deleted?): nothing written"


def validate_badge(kind: str | None, valid_from: dt.date | None, valid_to: dt.date | None) -> list[str]:
    """Why a badge row cannot make a card (empty: it can)."""
    reasons = []
    if kind not in CARD_TYPE_OF_BADGE:
        reasons.append(f"unknown badge type TIPO={kind!r}")
    if valid_from is None or valid_to is None:
        reasons.append("missing badge validity (DATA_INI/DATA_FIN)")
    elif valid_to < valid_from:
        reasons.append("badge validity ends before it starts (DATA_FIN < DATA_INI)")
    return reasons


@dataclass(frozen=True)
class BadgeWriteBack:
    """What a badge should carry: its card's number, QR payload and Router status (and the PNG)."""

    bdg_id: int
    escn: str
    qr_url: str
    status: str
    png: bytes | None  # the QR image, loaded only for the badges to write, when the site stores it
    previous_escn: str | None = None  # what esc-sync last wrote on this badge (a re-minted card's old number)
    pending_escn: str | None = None  # what a run that did not finish was writing: ours too
    with_png: bool = False  # the site stores the image too

    def digest(self) -> str:
        """Changes whenever anything written changes: only changed badges are written again."""
        h = hashlib.blake2b(digest_size=16)
        # The image is rendered from qr_url alone: whether it is stored is all the digest needs.
        for part in (self.escn, self.qr_url, self.status, "png" if self.with_png else "-"):
            h.update(part.encode() + b"\0")
        return h.hexdigest()


def unwritten(wanted: list[BadgeWriteBack], carried: dict[int, str | None]) -> dict[int, str]:
    """The badges that do not carry their ESCN after the write, with the reason (``carried``: the
    ESCN each badge holds now, a badge missing from it is gone from Esse3)."""
    out = {}
    for w in wanted:
        if w.bdg_id not in carried:
            out[w.bdg_id] = BADGE_GONE
        elif carried[w.bdg_id] != w.escn:
            out[w.bdg_id] = ESCN_CONFLICT
    return out


class ReadBadge(NamedTuple):
    """A validated badge as read (the badge belongs to its career's academic year)."""

    bdg_id: int
    stu_id: int
    pers_id: int
    academic_year: int
    valid_from: dt.date
    valid_to: dt.date
    annulled: bool
    printed_on: dt.date | None
    kind: str
    data_mod: dt.datetime
    digest: str


class StoredBadge(NamedTuple):
    stu_id: int
    academic_year: int
    source_digest: str | None
    vanished: bool
    content: tuple[object, ...]  # what a card is made of: career, validity, annulment, kind


def badge_content(b: ReadBadge) -> tuple[object, ...]:
    return (b.stu_id, b.pers_id, b.academic_year, b.valid_from, b.valid_to, b.annulled, b.printed_on, b.kind)
