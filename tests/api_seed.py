"""Support for the API's tests and benchmark: a live uvicorn server in a thread, and a seeded state DB.

The seed writes what the careers, cards, qr_images and export_files assets would: careers, badges,
cards and their QR images, and export files written by the real export writer. Names are synthetic.
"""

from __future__ import annotations

import datetime as dt
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy import Engine

from etl.config import Settings
from etl.domain.escn import mint_escn
from etl.domain.esi import compose_esi
from etl.exports import ExportFiles, ExportRow, write_export
from etl.render.qr import QrImages, qr_payload, render_many
from etl.store.exports import insert_export
from etl.store.models import Badge, Card, Career, QrImage

BASE_TIME = dt.datetime(2025, 9, 1, 8, 0)
_FIRST = ("Giulia", "Marco", "Chiara", "Luca", "Sofia", "Matteo", "Anna", "Davide", "Elena", "Niccolò")
_LAST = ("Rossi", "Bianchi", "Esposito", "Romano", "Colombo", "Ricci", "Marino", "Greco", "D'Àgostino")


class LiveServer:
    """uvicorn serving ``app`` on a free loopback port, in a daemon thread; ``url`` has no trailing /."""

    def __init__(self, app: Any, host: str = "127.0.0.1") -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.url = f"http://{host}:{self._sock.getsockname()[1]}"
        self._app = app
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="on", proxy_headers=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        ctx = getattr(self._app.state, "ctx", None)
        if ctx is not None and not ctx.settings.api_public_url:
            ctx.public_url = self.url + "/"  # links point at this test server
        self._thread.start()
        for _ in range(500):
            if self._server.started:
                return self
            if not self._thread.is_alive():
                raise RuntimeError("the API server thread ended before it started")
            threading.Event().wait(0.01)
        raise RuntimeError("the API server did not start within 5 s")

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


@dataclass(frozen=True)
class SeededCard:
    escn: str
    institution: str
    academic_year: int
    stu_id: int
    matricola: str
    full_name: str
    esi: str
    status: str
    card_type: str
    issued_at: dt.date
    expires_at: dt.date
    changed_at: dt.datetime
    payload: str
    images: QrImages | None  # None when seeded without QR rows


def seed_cards(
    engine: Engine,
    settings: Settings,
    institution: str,
    count: int,
    *,
    first_stu_id: int = 1,
    academic_year: int = 2025,
    changed_from: dt.datetime = BASE_TIME,
    step: dt.timedelta = dt.timedelta(seconds=1),
    with_qr: bool | Callable[[int], bool] = True,
    status: Callable[[int], str] = lambda _i: "ACTIVE",
    same_changed_at_every: int = 1,
) -> list[SeededCard]:
    """``count`` students of ``institution``, each with one career, badge, card and (if ``with_qr``)
    QR images. Card i changes at ``changed_from + (i // same_changed_at_every) * step`` so tests can
    make ties in the feed order. Matricola is ``M<stu_id>``; ids are unique per ``first_stu_id`` range."""
    ateneo = settings.ateneo(institution)
    wants_qr = with_qr if callable(with_qr) else (lambda _i: with_qr)
    seeded: list[SeededCard] = []
    for i in range(count):
        stu_id = first_stu_id + i
        escn = mint_escn(ateneo.pic, unix_millis=1_756_000_000_000 + stu_id * 997, clock_seq=stu_id % 16384)
        issued = dt.date(academic_year, 10, 1)
        seeded.append(
            SeededCard(
                escn=escn,
                institution=institution,
                academic_year=academic_year,
                stu_id=stu_id,
                matricola=f"M{stu_id}",
                full_name=f"{_FIRST[stu_id % len(_FIRST)]} {_LAST[stu_id % len(_LAST)]}",
                esi=compose_esi(ateneo.schac_home_organization, 10_000_000 + stu_id),
                status=status(i),
                card_type="SMART_PASSIVE",
                issued_at=issued,
                expires_at=dt.date(academic_year + 1, 10, 31),
                changed_at=changed_from + (i // same_changed_at_every) * step,
                payload=qr_payload(escn, settings.qr_base_url),
                images=None,
            )
        )
    with_images = [c for i, c in enumerate(seeded) if wants_qr(i)]
    rendered = dict(
        zip((c.escn for c in with_images), render_many([c.payload for c in with_images]), strict=True)
    )
    seeded = [_with_images(c, rendered.get(c.escn)) for c in seeded]
    _insert_cards(engine, seeded)
    return seeded


def add_card(
    engine: Engine,
    settings: Settings,
    student: SeededCard,
    bdg_id: int,
    *,
    status: str,
    issued_at: dt.date,
    changed_at: dt.datetime,
) -> SeededCard:
    """Another card (and badge) for an already seeded student, with QR images."""
    pic = settings.ateneo(student.institution).pic
    escn = mint_escn(pic, unix_millis=1_757_000_000_000 + bdg_id * 991, clock_seq=bdg_id % 16384)
    payload = qr_payload(escn, settings.qr_base_url)
    card = SeededCard(
        **{
            **student.__dict__,
            "escn": escn,
            "status": status,
            "issued_at": issued_at,
            "expires_at": issued_at + dt.timedelta(days=395),
            "changed_at": changed_at,
            "payload": payload,
            "images": render_many([payload])[0],
        }
    )
    _insert_cards(engine, [card], bdg_id=bdg_id, with_career=False)
    return card


def _with_images(card: SeededCard, images: QrImages | None) -> SeededCard:
    return card if images is None else SeededCard(**{**card.__dict__, "images": images})


def _insert_cards(
    engine: Engine, cards: Sequence[SeededCard], *, bdg_id: int | None = None, with_career: bool = True
) -> None:
    careers, badges, rows, images = [], [], [], []
    for c in cards:
        first, last = c.full_name.split(" ", 1)
        pers_id, badge = 10_000_000 + c.stu_id, bdg_id or c.stu_id
        common = {"institution": c.institution, "stu_id": c.stu_id, "academic_year": c.academic_year}
        careers.append(
            common
            | {
                "pers_id": pers_id,
                "person_key": str(pers_id),
                "matricola": c.matricola,
                "course_code": "IN01",
            }
            | {"course_name": "Ingegneria Informatica e dell'Automazione", "course_type": "L", "status": "A"}
            | {"finalised": True, "first_name": first, "last_name": last, "source_data_mod": BASE_TIME}
            | {"enrolment_date": dt.date(c.academic_year, 9, 15), "row_hash": "0" * 32}
        )
        badges.append(
            common
            | {"bdg_id": badge, "pers_id": pers_id, "valid_from": c.issued_at, "valid_to": c.expires_at}
            | {"annulled": c.status != "ACTIVE", "kind": "V", "source_data_mod": BASE_TIME}
        )
        rows.append(
            common
            | {"escn": c.escn, "bdg_id": badge, "esi": c.esi, "card_type": c.card_type, "state": "registered"}
            | {"issued_at": c.issued_at, "expires_at": c.expires_at, "changed_at": c.changed_at}
            | {"desired_status": c.status, "router_status": c.status}
        )
        if c.images is not None:
            images.append(
                {"escn": c.escn, "institution": c.institution, "academic_year": c.academic_year}
                | {"payload": c.payload, "png": c.images.png, "svg": c.images.svg}
            )
    tables = [(Badge, badges), (Card, rows), (QrImage, images)]
    if with_career:
        tables.insert(0, (Career, careers))
    with engine.begin() as conn:
        for table, values in tables:
            if values:
                conn.execute(table.__table__.insert(), values)


def export_rows(settings: Settings, cards: Sequence[SeededCard]) -> Iterator[ExportRow]:
    for c in cards:
        if c.images is None:
            raise ValueError(f"card {c.escn} was seeded without QR images: it cannot be exported")
        yield ExportRow(
            university=c.institution,
            pic=settings.ateneo(c.institution).pic,
            academic_year=c.academic_year,
            matricola=c.matricola,
            full_name=c.full_name,
            esi=c.esi,
            escn=c.escn,
            card_type=c.card_type,
            issued_at=c.issued_at,
            expires_at=c.expires_at,
            status=c.status,
            qr_payload=c.payload,
            qr_png=c.images.png,
            qr_svg=c.images.svg,
        )


def seed_export(
    engine: Engine,
    directory: Path,
    export_id: str,
    institution: str,
    academic_year: int,
    rows: Iterator[ExportRow] | Sequence[ExportRow],
    *,
    kind: str = "full",
    created_at: dt.datetime = BASE_TIME,
) -> ExportFiles:
    """Write the export files with the real writer and record the export row, as export_files does."""
    directory.mkdir(parents=True, exist_ok=True)
    files = write_export(iter(rows), directory, export_id)
    since = None if kind == "full" else created_at - dt.timedelta(days=1)
    with engine.begin() as conn:
        insert_export(
            conn,
            files,
            institution=institution,
            academic_year=academic_year,
            kind=kind,
            since=since,
            until=created_at,
        )
    return files
