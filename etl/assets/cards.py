"""`esc_cards`: a card per badge of a registered person. The ESCN is minted offline and recorded
before the Router call, so a crash is recovered without a second card (409 ER-0002 → read back and
reconcile). Lifecycle changes from career and badge data are pushed with PUT."""
# No `from __future__ import annotations`: Dagster inspects the context annotation at runtime.

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MultiPartitionsDefinition,
    ResourceParam,
    asset,
)
from sqlalchemy import Engine

from etl.assets.claims import claim_partition
from etl.assets.router_calls import ROUTER_POOL, CallReport, calls_check_spec, run_chunks, run_with_client
from etl.assets.step_retries import retry_transient
from etl.config import Ateneo
from etl.domain.careers import Rejection
from etl.domain.escn import EscnMinter
from etl.domain.esi import same_esi
from etl.domain.lifecycle import (
    ACTIVE,
    CARD_TYPE_OF_BADGE,
    INACTIVE,
    Action,
    BadgeFacts,
    CardTarget,
    body_hash,
    card_action,
    card_target,
    consented,
)
from etl.domain.sync_outcomes import CardOutcome, SyncResult, SyncState
from etl.partitions import Partition
from etl.resources.router import RouterClient
from etl.resources.router_bodies import card_body, card_update_body
from etl.resources.router_errors import RouterAccessDenied, RouterConflict, RouterError, RouterNotFound
from etl.resources.router_views import read_card
from etl.resources.runtime import Runtime
from etl.store import careers as common
from etl.store import router_state as store
from etl.store.models import utcnow
from etl.store.router_state import CardCandidate, RetiredCard

STAGE = "cards"
CHUNK = 1000
OVERLAP = dt.timedelta(minutes=10)


@dataclass(frozen=True)
class CardWork:
    escn: str
    bdg_id: int
    stu_id: int
    esi: str
    card_type: str
    issued_at: dt.date
    target: CardTarget
    body: dict[str, Any]  # the POST body (CardUpdateView with cardNumber)
    create: bool
    new: bool  # no card row yet: record the intent (a freshly minted ESCN)
    pic: str
    today: dt.date

    @property
    def put_body(self) -> dict[str, Any]:
        return card_update_body(self.body)

    @property
    def target_expired(self) -> bool:
        """The wanted expiry is already past: the card reads EXPIRED whatever we send."""
        return self.target.expires_at < self.today


class CardPlan(NamedTuple):
    work: list[CardWork]
    waiting: int  # badges whose person is not (yet) at the Router
    badge_expired: int  # badges of active careers whose validity ended: never extended, reported


def cards_to_retire(rows: Sequence[CardCandidate]) -> list[str]:
    """Current cards registered for another person than their badge's career now has (an Esse3 person
    merge, a badge moved to another student's career), or whose career's person has no ESI: the Router
    never moves a card to another person, so the card is retired (INACTIVE for good, under the ESI it
    was registered for) and the badge gets a new card under its holder's ESI."""
    return [
        r.escn
        for r in rows
        if r.escn is not None
        and r.card_esi is not None
        and (r.esi is None or not same_esi(r.card_esi, r.esi))
    ]


def plan_cards(
    rows: Sequence[CardCandidate],
    ateneo: Ateneo,
    minter: EscnMinter,
    today: dt.date,
    retired: Sequence[RetiredCard] = (),
) -> CardPlan:
    """Pure decision per badge (whose current card, if any, belongs to its holder: see
    ``cards_to_retire``), and per retired card still to be deactivated."""
    work, waiting, expired = [], 0, 0
    for r in rows:
        if r.esi is None or r.person_state is None:
            continue  # the career's person has no ESI: nothing to attach a card to (yet)
        ok = consented(ateneo.consent, r.consent) and r.person_state != SyncState.OPTED_OUT
        facts = BadgeFacts(r.career_status, r.annulled, r.valid_from, r.valid_to, ok, r.in_source)
        target = card_target(facts, today)
        synced = (
            CardTarget(r.router_status, r.synced_expiry)
            if r.card_state == SyncState.REGISTERED and r.router_status and r.synced_expiry
            else None
        )
        action = card_action(target, exists=r.escn is not None, synced=synced, today=today)
        if target.status == ACTIVE and target.expires_at < today:
            expired += 1  # reported: the university must extend the badge or issue a new one
        if action in (Action.NONE, Action.SKIP, Action.BADGE_EXPIRED):
            continue
        if action is Action.REGISTER and r.person_state != SyncState.REGISTERED:
            waiting += 1  # the person is not (yet) at the Router: nothing to attach a card to
            continue
        card_type = CARD_TYPE_OF_BADGE[r.kind]
        number = r.escn or minter.mint()
        body = card_body(number, r.esi, ateneo.pic, card_type, target.status, r.valid_from, target.expires_at)
        work.append(
            CardWork(
                number,
                r.bdg_id,
                r.stu_id,
                r.esi,
                card_type,
                r.valid_from,
                target,
                body,
                create=action is Action.REGISTER,
                new=r.escn is None,
                pic=ateneo.pic,
                today=today,
            )
        )
    for c in retired:
        target = CardTarget(INACTIVE, c.expires_at)
        synced = (
            CardTarget(c.router_status, c.expires_at)
            if c.state == SyncState.REGISTERED and c.router_status
            else None
        )
        action = card_action(target, exists=True, synced=synced, today=today)
        if action not in (Action.REGISTER, Action.UPDATE):
            continue
        body = card_body(c.escn, c.esi, ateneo.pic, c.card_type, INACTIVE, c.issued_at, c.expires_at)
        work.append(
            CardWork(
                c.escn, c.bdg_id, c.stu_id, c.esi, c.card_type, c.issued_at, target, body,
                create=action is Action.REGISTER, new=False, pic=ateneo.pic, today=today,
            )
        )  # fmt: skip
    return CardPlan(work, waiting, expired)


async def sync_card(client: RouterClient, w: CardWork) -> CardOutcome:
    """Create (POST; on ``409 ER-0002`` read the number back: ours → reconcile, anyone else's → a
    fresh number) or update (PUT) one card. Never raises but for errors that stop the run."""

    def confirmed(result: SyncResult) -> CardOutcome:
        return CardOutcome(w.escn, w.bdg_id, result, confirmed=w.target, synced_hash=body_hash(w.body))

    try:
        if not w.create:
            await client.update_card(w.escn, w.put_body)
            return confirmed(SyncResult.UPDATED)
        try:
            await client.create_card(w.body)
            return confirmed(SyncResult.REGISTERED)
        except RouterConflict as e:
            if e.code != "ER-0002":
                raise
        # The number exists: ours from an earlier try whose answer was lost, or (by a clash of
        # numbers, or a card deleted at the Router) not ours: then this badge needs a new number.
        try:
            existing = read_card(await client.get_card(w.escn))
        except (RouterNotFound, RouterAccessDenied):
            return CardOutcome(w.escn, w.bdg_id, SyncResult.REMINTED)
        if not existing.is_ours(w.pic, w.esi):
            return CardOutcome(w.escn, w.bdg_id, SyncResult.REMINTED)
        if w.target_expired and existing.expired(w.today):
            # The Router revives an expired card only with a future expiry, and we want none:
            # it already reads EXPIRED, which is all a verifier needs to know.
            return confirmed(SyncResult.RECONCILED)
        await client.update_card(w.escn, w.put_body)
        return confirmed(SyncResult.RECONCILED)
    except RouterError as e:
        if e.stops_run:
            raise
        # The confirmed Router state is left as it was: only success moves it.
        if e.is_permanent:
            reason = f"Router refused the card: HTTP {e.status} {e.code or ''}".strip()
            return CardOutcome(w.escn, w.bdg_id, SyncResult.FAILED, reason=reason, last_error=reason)
        error = f"Router unavailable: HTTP {e.status}"
        return CardOutcome(w.escn, w.bdg_id, SyncResult.FAILED, last_error=error)


REMINT_ROUNDS = 4  # rounds of calls; a number clash is rare, four in a row means something else


def sync_cards(
    engine: Engine,
    client_factory,
    ateneo: Ateneo,
    partition: Partition,
    report: CallReport,
    today: dt.date | None = None,
) -> None:
    today = today or dt.date.today()
    inst, year = ateneo.code, partition.academic_year
    with engine.begin() as conn:
        clock_seq = store.take_clock_sequence(conn, ateneo.pic)
    minter = EscnMinter(ateneo.pic, ateneo.escn_prefix, clock_seq=clock_seq)

    def record(chunk: list[CardWork]) -> None:  # the intent: minted ESCNs recorded before any call
        now = utcnow()
        rows = [
            {
                "escn": w.escn, "institution": inst, "academic_year": year, "bdg_id": w.bdg_id,
                "stu_id": w.stu_id, "esi": w.esi, "card_type": w.card_type, "issued_at": w.issued_at,
                "expires_at": w.target.expires_at, "desired_status": w.target.status,
                "state": SyncState.PENDING, "changed_at": now, "created_at": now,
            }
            for w in chunk
            if w.new
        ]  # fmt: skip
        with engine.begin() as conn:
            store.record_card_intents(conn, rows)

    reminted = 0

    def confirm(outcomes: list[CardOutcome]) -> None:
        nonlocal reminted
        done = [o for o in outcomes if o.confirmed is not None]
        with engine.begin() as conn:
            store.confirm_cards(conn, done)
            store.record_card_errors(conn, [o for o in outcomes if o.result is SyncResult.FAILED])
            store.forget_card_intents(conn, [o.escn for o in outcomes if o.reminted])
            bad = [Rejection(o.bdg_id, (o.reason,)) for o in outcomes if o.reason]
            common.quarantine(conn, inst, year, STAGE, "P01_BADGE", bad)
            common.resolve_quarantine(conn, inst, STAGE, "P01_BADGE", (str(o.bdg_id) for o in done))
        reminted += sum(1 for o in outcomes if o.reminted)
        report.counts.update(o.result.value for o in outcomes)
        # retries ran out (a transient failure): the card stays as it was, for the next run
        report.counts["unsent"] += sum(
            1 for o in outcomes if o.result is SyncResult.FAILED and o.reason is None
        )

    with engine.begin() as conn:  # first, cards that stayed with a badge whose career changed person
        retire = cards_to_retire(store.card_candidates(conn, inst, year))
        store.retire_cards(conn, retire)
    report.counts["retired"] = len(retire)

    def plan() -> list[CardWork]:
        with engine.connect() as conn:
            rows = store.card_candidates(conn, inst, year)
            retired = store.retired_cards(conn, inst, year)
        plan = plan_cards(rows, ateneo, minter, today, retired)
        report.counts["waiting_for_person"] = plan.waiting
        report.counts["badge_expired"] = plan.badge_expired
        return plan.work

    async def body(client: RouterClient) -> None:
        nonlocal reminted
        work = first
        for _ in range(REMINT_ROUNDS):
            reminted = 0
            await run_chunks(client, work, CHUNK, record, sync_card, confirm)
            if not reminted:
                return
            work = plan()  # those badges now need a fresh number

    if first := plan():
        run_with_client(client_factory, body, report)


def build_cards_asset(partitions: MultiPartitionsDefinition) -> AssetsDefinition:
    @asset(
        name="esc_cards",
        partitions_def=partitions,
        deps=["esi_assignments", "badges"],
        group_name="router",
        kinds={"sql"},
        pool=ROUTER_POOL,
        description="A card per badge (ESCN minted offline, PASSIVE or SMART_PASSIVE) at the ESC Router.",
        check_specs=[calls_check_spec("esc_cards")],
    )
    @retry_transient
    def esc_cards(context: AssetExecutionContext, esc: ResourceParam[Runtime]) -> MaterializeResult:
        runtime = esc
        partition = Partition.parse(context.partition_key)
        ateneo = runtime.settings.ateneo(partition.institution)
        report = CallReport()
        with claim_partition(context, runtime.engine, partition.key):
            sync_cards(runtime.engine, lambda: runtime.router_client(ateneo.code), ateneo, partition, report)
        context.log.info(f"{partition.key}: {dict(report.counts)}")
        with runtime.engine.connect() as conn:
            cards = store.count_cards(conn, ateneo.code, partition.academic_year)
        return MaterializeResult(
            metadata={
                "dagster/row_count": sum(cards.values()),
                **report.metadata(),
                **{f"cards_{k}": v for k, v in cards.items()},
            },
            check_results=[report.calls_check("esc_cards")],
        )

    return esc_cards
