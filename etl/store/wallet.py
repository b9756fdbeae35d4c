"""Apple Wallet registrations: which devices hold which card's pass, and which of them changed since a
device last asked (Apple's pass web service, etl.api.routes_apple_wallet)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import Connection, delete, func, insert, select

from etl.domain.states import SyncState
from etl.store.models import Card, WalletRegistration, utcnow

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
    """The device's passes whose card changed after ``since`` (all of them without), and the latest
    change among them: the tag the device sends next time."""
    stmt = (
        select(Card.escn, Card.changed_at)
        .join(WalletRegistration, WalletRegistration.serial_number == Card.escn)
        .where(
            _reg.device_id == device, _reg.pass_type_id == pass_type_id, Card.state == SyncState.REGISTERED
        )
        .order_by(Card.escn)
    )
    if since is not None:
        stmt = stmt.where(Card.changed_at > since)
    rows = conn.execute(stmt).all()
    return [r.escn for r in rows], max((r.changed_at for r in rows), default=None)


def card_changed_at(conn: Connection, escn: str) -> dt.datetime | None:
    return conn.execute(select(Card.changed_at).where(Card.escn == escn)).scalar_one_or_none()


def forget_cards(conn: Connection, escns: Sequence[str]) -> None:
    """Erasure: no device keeps a registration for these cards."""
    if escns:
        conn.execute(delete(WalletRegistration).where(_reg.serial_number.in_(sorted(escns))))
