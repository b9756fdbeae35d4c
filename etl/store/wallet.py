"""Wallet passes in the state DB: which devices hold which card's Apple pass and which of those changed
since a device last asked (Apple's pass web service, etl.api.routes_apple_wallet); what each card's
passes last showed (the wallet_passes asset, etl.wallet.follow)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update

from etl.domain.states import SyncState
from etl.store.models import Card, Career, WalletPass, WalletRegistration, utcnow

_reg = WalletRegistration


def register(conn: Connection, device: str, pass_type_id: str, serial: str, push_token: str) -> bool:
    """True when the device was not registered for this pass yet (Apple: 201, else 200)."""
    key = (_reg.device_id == device) & (_reg.pass_type_id == pass_type_id) & (_reg.serial_number == serial)
    if conn.execute(select(func.count()).where(key)).scalar_one():
        return False
    conn.execute(
        insert(WalletRegistration).values(
            device_id=device, pass_type_id=pass_type_id, serial_number=serial, push_token=push_token,
            created_at=utcnow(),
        )
    )  # fmt: skip
    return True


def unregister(conn: Connection, device: str, pass_type_id: str, serial: str) -> None:
    conn.execute(
        delete(WalletRegistration).where(
            _reg.device_id == device, _reg.pass_type_id == pass_type_id, _reg.serial_number == serial
        )
    )


def changed_since(
    conn: Connection, device: str, pass_type_id: str, since: dt.datetime | None
) -> tuple[list[str], dt.datetime | None]:
    """The device's passes whose stored pass changed after ``since`` (all of them without), and the
    latest change among them: the tag the device sends next time."""
    stmt = (
        select(WalletPass.escn, WalletPass.apple_updated_at)
        .join(WalletRegistration, WalletRegistration.serial_number == WalletPass.escn)
        .where(_reg.device_id == device, _reg.pass_type_id == pass_type_id)
        .where(WalletPass.apple_updated_at.is_not(None))
        .order_by(WalletPass.escn)
    )
    if since is not None:
        stmt = stmt.where(WalletPass.apple_updated_at > since)
    rows = conn.execute(stmt).all()
    return [r.escn for r in rows], max((r.apple_updated_at for r in rows), default=None)


def stored_pass(conn: Connection, escn: str) -> Any:
    """(institution, apple_updated_at) of a card's stored pass: where its file is, when it changed."""
    stmt = select(Card.institution, WalletPass.apple_updated_at).join(Card, Card.escn == WalletPass.escn)
    return conn.execute(stmt.where(WalletPass.escn == escn)).one_or_none()


# --- the wallet_passes asset (etl.wallet.follow) -----------------------------------------------------


def pass_rows(conn: Connection, institution: str, academic_year: int) -> Sequence[Any]:
    """The partition's cards the Router confirmed and nobody erased, with what a badge shows of their
    holder (etl.render.badge_source.badge_view's columns) and whether the card was retired."""
    stmt = (
        select(
            Card.escn,
            Card.institution,
            Card.academic_year,
            Card.esi,
            Card.card_type,
            Card.issued_at,
            Card.expires_at,
            Card.desired_status,
            Card.retired_at,
            Career.matricola,
            Career.first_name,
            Career.last_name,
            Career.course_name,
        )
        .join(Career, and_(Career.institution == Card.institution, Career.stu_id == Card.stu_id))
        .where(
            Card.institution == institution,
            Card.academic_year == academic_year,
            Card.state == SyncState.REGISTERED,
            Card.deleted_at.is_(None),
        )
        .order_by(Card.escn)
    )
    return conn.execute(stmt).all()


def _in_partition(institution: str, academic_year: int) -> Any:
    """The wallet_passes rows of a partition: a pass belongs where its card is (a year move takes it)."""
    here = select(Card.escn).where(Card.institution == institution, Card.academic_year == academic_year)
    return WalletPass.escn.in_(here)


def pass_states(conn: Connection, institution: str, academic_year: int) -> dict[str, Any]:
    """The stored states of the partition's cards, with whether the card was erased."""
    stmt = (
        select(*WalletPass.__table__.c, Card.deleted_at)
        .join(Card, Card.escn == WalletPass.escn)
        .where(Card.institution == institution, Card.academic_year == academic_year)
    )
    return {r.escn: r for r in conn.execute(stmt).all()}


def save_states(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(delete(WalletPass).where(WalletPass.escn.in_([r["escn"] for r in rows])))
        conn.execute(insert(WalletPass), list(rows))


def keep_states(conn: Connection, escns: Sequence[str]) -> None:
    """A row for each of these cards, so a withdrawal that does not finish now is retried by the
    partition's next run."""
    if escns:
        have = set(conn.execute(select(WalletPass.escn).where(WalletPass.escn.in_(sorted(escns)))).scalars())
        if missing := sorted(set(escns) - have):
            conn.execute(insert(WalletPass), [{"escn": e} for e in missing])


def drop_states(conn: Connection, escns: Sequence[str]) -> None:
    if escns:
        conn.execute(delete(WalletPass).where(WalletPass.escn.in_(sorted(escns))))


def unpushed(conn: Connection, institution: str, academic_year: int) -> list[str]:
    """The partition's passes changed since their devices were last pushed."""
    stmt = select(WalletPass.escn).where(
        _in_partition(institution, academic_year),
        WalletPass.apple_digest.is_not(None),
        or_(WalletPass.pushed_digest.is_(None), WalletPass.pushed_digest != WalletPass.apple_digest),
    )
    return list(conn.execute(stmt).scalars())


def mark_pushed(conn: Connection, escns: Sequence[str]) -> None:
    if escns:
        stmt = update(WalletPass).where(WalletPass.escn.in_(sorted(escns)))
        conn.execute(stmt.values(pushed_digest=WalletPass.apple_digest))


def push_tokens(conn: Connection, pass_type_id: str, escns: Sequence[str]) -> Sequence[Any]:
    """(serial_number, device_id, push_token) of the devices holding these cards' passes."""
    if not escns:
        return []
    stmt = select(_reg.serial_number, _reg.device_id, _reg.push_token).where(
        _reg.pass_type_id == pass_type_id, _reg.serial_number.in_(sorted(escns))
    )
    return conn.execute(stmt).all()
