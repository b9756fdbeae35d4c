"""Who gets an ESI and what the Router is sent about each person (pure: the `esi_assignments` asset
carries the plan out). The seams with the state DB are the NamedTuples below."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from etl.domain.careers import Rejection
from etl.domain.esi import InvalidEsi, compose_esi, same_esi
from etl.domain.lifecycle import body_hash, consented
from etl.domain.router_bodies import person_body
from etl.domain.states import SyncState


class PersonRules(Protocol):
    """What planning needs of a university's configuration (etl.config.Ateneo has it)."""

    @property
    def pic(self) -> str: ...
    @property
    def schac_home_organization(self) -> str: ...
    @property
    def consent(self) -> str: ...


class PersonCandidate(NamedTuple):
    """A person with a usable career in the partition (their current career), and what we hold."""

    pers_id: int
    person_key: str
    stu_id: int
    first_name: str
    last_name: str
    email: str | None
    academic_level: str | None
    consent: str | None
    course_type: str
    esi: str | None  # None: never recorded
    state: SyncState | None  # None: never recorded
    synced_hash: str | None


class WriteBackCandidate(NamedTuple):
    """A usable career of a registered person whose Esse3 career does not carry that person's ESI."""

    stu_id: int
    esi: str  # the person's
    source_esi: str | None  # what CODICE_ESI holds now
    esi_written: str | None  # what esc-sync wrote there before

    @property
    def ours_to_write(self) -> bool:
        """Empty, or holding the ESI esc-sync wrote (the career changed person since)."""
        return self.source_esi is None or self.source_esi == self.esi_written


@dataclass(frozen=True)
class PersonWork:
    pers_id: int
    person_key: str
    stu_id: int  # the current career: where a quarantine row points
    esi: str
    body: dict[str, Any]
    body_hash: str
    create: bool  # POST (with ER-0019 adoption) rather than PUT


@dataclass(frozen=True)
class PersonPlan:
    work: list[PersonWork]
    opted_out: list[tuple[int, str, str, SyncState]]  # person intents never sent (no consent)
    rejections: list[Rejection]
    fine: list[int]  # stu_ids with nothing to do and nothing wrong (quarantine can be resolved)
    not_eligible: int  # careers whose course has no ESC academic level


ESI_CONFLICT = "career already carries a different ESI (CODICE_ESI)"


def plan_persons(
    rows: Sequence[PersonCandidate], ateneo: PersonRules, source_esis: Mapping[int, set[str]] | None = None
) -> PersonPlan:
    """Pure decision per candidate row (see etl.store.persons.PERSON_CANDIDATES). ``source_esis``: the ESIs
    already on the person's Esse3 careers; another one than ours stops the person before any call."""
    work: list[PersonWork] = []
    opted_out: list[tuple[int, str, str, SyncState]] = []
    rejections: list[Rejection] = []
    fine: list[int] = []
    not_eligible: list[int] = []
    for r in rows:
        esi = r.esi
        if not esi:
            try:
                esi = compose_esi(ateneo.schac_home_organization, r.person_key)
            except InvalidEsi as e:
                rejections.append(Rejection(r.stu_id, (f"cannot compose ESI: {e}",)))
                continue
        if any(not same_esi(s, esi) for s in (source_esis or {}).get(r.pers_id, ())):
            rejections.append(Rejection(r.stu_id, (ESI_CONFLICT,)))
            continue
        if not consented(ateneo.consent, r.consent):
            if r.state is None:
                opted_out.append((r.pers_id, r.person_key, esi, SyncState.OPTED_OUT))
            fine.append(r.stu_id)
            continue
        if r.academic_level is None:
            # Valid data, just not eligible: single courses and the like have no ESC level.
            not_eligible.append(r.stu_id)
            continue
        try:
            body = person_body(esi, ateneo.pic, f"{r.first_name} {r.last_name}", r.email, r.academic_level)
        except ValueError as e:
            rejections.append(Rejection(r.stu_id, (f"invalid Router body: {str(e).split(':')[0]}",)))
            continue
        h = body_hash(body)
        if r.state == SyncState.REGISTERED and r.synced_hash == h:
            fine.append(r.stu_id)
            continue
        work.append(
            PersonWork(
                r.pers_id, r.person_key, r.stu_id, esi, body, h, create=r.state != SyncState.REGISTERED
            )
        )
    return PersonPlan(work, opted_out, rejections, fine + not_eligible, len(not_eligible))
