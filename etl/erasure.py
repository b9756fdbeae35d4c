"""Erasing a person: at the Router (cards, then the person) and at home (names, e-mail and matricola on
their careers, QR images, the partition's badge sheets). Keys, ESI, ESCNs and dates stay, so nothing
is ever registered twice and the audit trail holds.

Crash-safe like every Router call (docs/esc-router-v2.md, "Deleting"): the intent is committed before
any DELETE is sent (``persons.erase_requested_at``, ``cards.delete_requested_at``) and each outcome
after it (``cards.deleted_at``, ``persons.erased_at``). A lost answer, a 5xx or a killed run leaves the
intent, and the next run sends the DELETE again: 204, or 404 (gone already: our earlier DELETE did it)
both confirm it, so nothing is deleted twice. The person is deleted only once all its cards are, and
scrubbed at home in the transaction that confirms it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from etl.assets.router_calls import CallReport, run_with_client
from etl.config import Ateneo, Settings
from etl.domain.retention import EraseReason, ErasureTarget, RetentionPolicy, erase_reason
from etl.partitions import Partition
from etl.resources.esse3 import Esse3Source
from etl.resources.router import RouterClient
from etl.resources.router_errors import RouterError, RouterNotFound
from etl.store import erasure as store
from etl.store.locks import PartitionBusy, partition_lock
from etl.store.wallet import keep_states
from etl.wallet.follow import WalletRunResult, Wallets, withdraw

log = logging.getLogger(__name__)


@dataclass
class ErasureReport:
    erased: int = 0  # persons erased at the Router (or never there) and at home
    cards_deleted: int = 0
    unfinished: int = 0  # persons whose DELETEs did not all get an answer: the next run finishes them
    busy: str | None = None  # a run held one of the partitions: nothing erased this time (one line)
    refused: list[str] = field(default_factory=list)  # one line each: key and HTTP status only
    calls: CallReport = field(default_factory=CallReport)


async def _delete(call: Callable[[str], Awaitable[object]], key: str) -> bool | str:
    """True: gone (204, or 404: gone already); False: no answer (retried by the next run); a string:
    the Router refused (its status, for the report)."""
    try:
        await call(key)
        return True
    except RouterNotFound:
        return True
    except RouterError as e:
        if e.stops_run:
            raise
        return f"HTTP {e.status}" if e.is_permanent else False


def erase_targets(
    engine: Engine,
    client_factory: Callable[[], RouterClient],
    ateneo: Ateneo,
    targets: Sequence[ErasureTarget],
    home: Path,
    report: ErasureReport,
) -> None:
    if not targets:
        return
    with engine.begin() as conn:
        store.record_intents(conn, ateneo.code, targets)

    erased: set[int] = set()

    async def body(client: RouterClient) -> None:
        # Persons side by side (the client bounds the calls in flight and their rate); within a
        # person, every card before the person.
        await asyncio.gather(*(one(client, t) for t in targets))

    async def one(client: RouterClient, t: ErasureTarget) -> None:
        outcomes = await asyncio.gather(*(_delete(client.delete_card, e) for e in t.escns))
        gone = [e for e, o in zip(t.escns, outcomes, strict=True) if o is True]
        with engine.begin() as conn:
            store.confirm_cards(conn, gone)
        report.cards_deleted += len(gone)
        refused = [f"card {e}: {o}" for e, o in zip(t.escns, outcomes, strict=True) if isinstance(o, str)]
        if len(gone) < len(t.escns):
            report.unfinished += 1
            report.refused += [f"person {t.pers_id} of {ateneo.code}: {r}" for r in refused]
            return
        person = await _delete(client.delete_person, t.esi) if t.at_router else True
        if person is not True:
            report.unfinished += 1
            if isinstance(person, str):
                report.refused.append(f"person {t.pers_id} of {ateneo.code}: {person}")
            return
        with engine.begin() as conn:
            years = store.scrub(conn, ateneo.code, t)
        _remove_badge_sheets(home, ateneo.code, years)
        erased.add(t.pers_id)
        report.erased += 1
        # One line per erasure: when (the log's time), which key, what; never personal data.
        log.info(
            "erased person %d of %s (%s): %d card(s) and the person deleted at the Router, careers "
            "scrubbed, QR images, badge sheets and wallet passes removed",
            t.pers_id, ateneo.code, t.reason, len(t.escns),
        )  # fmt: skip

    run_with_client(client_factory, body, report.calls)
    _withdraw_passes(engine, home, ateneo, [e for t in targets if t.pers_id in erased for e in t.escns])
    if report.erased and engine.dialect.name == "sqlite":
        # The old pages live on in the write-ahead log until it is checkpointed and cut.
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def _withdraw_passes(engine: Engine, home: Path, ateneo: Ateneo, escns: list[str]) -> None:
    """The erased cards' pass files go, and their Google Wallet objects are scrubbed."""
    if not escns:
        return
    with engine.begin() as conn:
        keep_states(conn, escns)
    wallets = Wallets.google_only(ateneo)
    result = WalletRunResult()
    try:
        withdraw(engine, home, wallets, ateneo.code, escns, result)
    finally:
        wallets.close()
    if result.failed:  # the rows stay: the partitions' next runs scrub them
        log.warning("%s: %d wallet pass(es) not withdrawn yet: %s", ateneo.code, sum(result.failed.values()),
                    next(iter(result.failed)))  # fmt: skip


def _remove_badge_sheets(home: Path, institution: str, years: Sequence[int]) -> None:
    """The partitions' print sheets held the person's badge: removed, the next run prints them again
    without it (etl.assets.prints keeps only the current sheet anyway)."""
    for year in years:
        for sheet in (home / "prints" / institution / str(year)).glob("badges-*.pdf"):
            sheet.unlink(missing_ok=True)


def due_for_erasure(
    engine: Engine, ateneo: Ateneo, policy: RetentionPolicy, today: dt.date
) -> list[ErasureTarget]:
    """Persons whose cards all ended long enough ago (or who withdrew consent), and erasures a
    previous run left unfinished."""
    with engine.connect() as conn:
        facts = store.person_facts(conn, ateneo.code)
    due = []
    for f in facts:
        withdrawn = ateneo.consent == "opt_in" and not f.consented
        reason = f.pending_reason or erase_reason(f.cards, withdrawn, today, policy)
        if reason is not None:
            due.append(ErasureTarget(f.pers_id, f.esi, reason, f.escns, f.at_router))
    return due


def apply_retention(
    engine: Engine,
    settings: Settings,
    client_factory: Callable[[Ateneo], Callable[[], RouterClient]],
    today: dt.date,
    *,
    dry_run: bool = False,
) -> dict[str, ErasureReport]:
    """Every university's due persons erased (``dry_run``: only counted), old audit rows deleted."""
    reports: dict[str, ErasureReport] = {}
    for ateneo in settings.atenei:
        report = reports[ateneo.code] = ErasureReport()
        targets = due_for_erasure(engine, ateneo, settings.retention, today)
        if dry_run:
            report.unfinished = len(targets)
            continue
        if not targets:
            continue
        with engine.connect() as conn:
            years = store.years_of(conn, ateneo.code, [t.pers_id for t in targets])
        try:
            with claims(engine, settings, ateneo.code, sorted(years)):
                erase_targets(engine, client_factory(ateneo), ateneo, targets, settings.home, report)
        except PartitionBusy as e:  # the next retention run erases them
            report.busy = str(e)
            report.unfinished = len(targets)
    if not dry_run:
        with engine.begin() as conn:
            cutoff = dt.datetime.combine(today - dt.timedelta(days=settings.retention.audit_days), dt.time())
            store.delete_audit_before(conn, cutoff)
    return reports


@contextmanager
def claims(engine: Engine, settings: Settings, institution: str, years: Sequence[int]) -> Iterator[None]:
    """The partitions' claims (etl.store.locks), as a run's: no run works on the person meanwhile."""
    from etl.assets.claims import run_over_in
    from etl.orchestrate import ensure_instance

    run_id = f"erase-{uuid.uuid4()}"
    with ensure_instance(settings) as instance, ExitStack() as stack:
        for year in sorted(set(years)):
            key = Partition(year, institution).key
            stack.enter_context(partition_lock(engine, key, run_id, run_over_in(instance), whole_run=True))
        yield


def erase_on_request(
    engine: Engine,
    settings: Settings,
    client_factory: Callable[[], RouterClient],
    institution: str,
    pers_id: int,
    *,
    dry_run: bool = False,
    esse3: Esse3Source | None = None,
) -> tuple[list[str], ErasureReport]:
    """A data subject's request (GDPR art. 17): everything esc-sync holds of ``pers_id`` erased now;
    with ``esse3``, also what esc-sync wrote into Esse3 (the rest of Esse3 is the university's).
    Returns lines for the operator (keys and counts only) and the report."""
    ateneo = settings.ateneo(institution)
    with engine.connect() as conn:
        targets = store.target_of(conn, institution, pers_id, EraseReason.REQUEST)
        held = store.held_of(conn, institution, pers_id)
    report = ErasureReport()
    if not targets and not held.careers:
        if esse3 is not None and not dry_run:
            return [
                f"nothing held about person {pers_id} of {institution}",
                *_take_back(engine, esse3, ateneo, pers_id),
            ], report
        return [f"nothing held about person {pers_id} of {institution}", *held.in_esse3()], report
    if not targets:  # careers only (never registered): scrub them
        targets = [ErasureTarget(pers_id, "", EraseReason.REQUEST, (), False)]
    cards = sum(len(t.escns) for t in targets)
    at_router = sum(t.at_router for t in targets)
    what = (
        f"person {pers_id} of {institution}: {cards} card(s) and {at_router} person record(s) at the "
        f"Router, {held.careers} career(s) and {held.qr_images} QR image(s) at home"
    )
    if dry_run:
        return [f"would erase {what} (dry run: nothing changed)", *held.in_esse3()], report
    with claims(engine, settings, institution, held.years):
        erase_targets(engine, client_factory, ateneo, targets, settings.home, report)
    if report.unfinished:
        lines = [f"erasure of {what} unfinished: DELETEs without an answer; run it again"]
        return [*lines, *report.refused], report
    if esse3 is not None:
        return [f"erased {what}", *_take_back(engine, esse3, ateneo, pers_id)], report
    return [f"erased {what}", *held.in_esse3()], report


def _take_back(engine: Engine, esse3: Esse3Source, ateneo: Ateneo, pers_id: int) -> list[str]:
    """`erase --esse3`: the ESIs and cards esc-sync wrote into Esse3, cleared where Esse3 still holds
    exactly them, and forgotten here."""
    with engine.connect() as conn:
        esis, badges = store.write_backs_of(conn, ateneo.code, pers_id)
    if not esis and not badges:
        return []
    careers, cleared = esse3.clear_write_backs(esis, badges, with_png=ateneo.write_back_qr_png)
    with engine.begin() as conn:
        store.forget_write_backs(conn, ateneo.code, pers_id, [b for b, _ in badges])
    return [f"taken back from Esse3: CODICE_ESI on {careers} career(s), the card on {cleared} badge(s)"]
