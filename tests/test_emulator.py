"""ESC Router emulator: the contract of docs/esc-router-v2.md and fault injection, over real HTTP.

One emulator subprocess serves the module (state wiped between tests); a plain httpx client plays the
Router client. Pure rules (body validation, fault settings) are tested directly at the end.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from etl.domain.escn import mint_escn, validate_escn
from etl.domain.esi import compose_esi
from etl.emulator import FaultConfig, main, start_emulator
from etl.emulator.contract import ApiError, parse_card, parse_card_search, parse_page, parse_person
from etl.emulator.faults import FaultPlan, parse_kinds
from etl.emulator.process import EmulatorProcess

PIC_A, PIC_B = "999978433", "123456789"
KEY_A, KEY_B = "key-a-s3cr3t-value", "key-b-s3cr3t-value"
TODAY = dt.date.today()
FUTURE = (TODAY + dt.timedelta(days=365)).isoformat()
PAST = (TODAY - dt.timedelta(days=30)).isoformat()


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    db = tmp_path_factory.mktemp("emulator") / "router.sqlite"
    with start_emulator({KEY_A: PIC_A, KEY_B: PIC_B}, db) as e:
        yield e


@pytest.fixture(autouse=True)
def clean(emu: EmulatorProcess) -> Iterator[None]:
    emu.set_faults(FaultConfig())
    emu.reset()
    yield
    emu.set_faults(FaultConfig())


def client(emu: EmulatorProcess, key: str | None = KEY_A, timeout: float = 5.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=emu.url + "/api/v2", headers=headers, timeout=timeout, trust_env=False)


@pytest.fixture
def a(emu: EmulatorProcess) -> Iterator[httpx.Client]:
    with client(emu) as c:
        yield c


@pytest.fixture
def b(emu: EmulatorProcess) -> Iterator[httpx.Client]:
    with client(emu, KEY_B) as c:
        yield c


def esi(code: int | str) -> str:
    return compose_esi("unife.it", code)


def person_body(identifier: str, pic: str = PIC_A, **rel: Any) -> dict[str, Any]:
    relation = {"organisationIdentifier": pic, "fullName": "Mario Rossi", "academicLevel": "BACHELOR"} | rel
    return {"identifier": identifier, "identifierCode": "ESI", "personOrganisationUpdateViews": [relation]}


def card_body(person: str, pic: str = PIC_A, **fields: Any) -> dict[str, Any]:
    return {
        "cardStatusType": "ACTIVE",
        "cardType": "SMART_PASSIVE",
        "issuedAt": TODAY.isoformat(),
        "expiresAt": FUTURE,
        "issuerIdentifier": pic,
        "personIdentifier": person,
    } | fields


def escn(n: int = 0, pic: str = PIC_A) -> str:
    return mint_escn(pic, unix_millis=1_767_225_600_000 + n, clock_seq=0x1234)


def register(c: httpx.Client, code: int, pic: str = PIC_A) -> str:
    identifier = esi(code)
    r = c.post("/persons", json=person_body(identifier, pic))
    assert r.status_code == 201, r.text
    return identifier


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= {"code", "message"}
    if code:
        assert body["code"] == code
    assert KEY_A not in r.text and KEY_B not in r.text


# --- persons ---------------------------------------------------------------------------------------


def test_person_lifecycle(a: httpx.Client) -> None:
    e = esi(191275)
    r = a.post("/persons", json=person_body(e, email="m.rossi@example.org"))
    assert r.status_code == 201
    view = r.json()
    assert view["identifier"] == e
    assert view["identifierCode"] == {"key": "ESI", "label": "European Student Identifier"}
    rel = view["organisations"][0]
    assert rel["organisation"]["identifier"] == PIC_A
    assert rel["academicLevel"]["key"] == "BACHELOR" and rel["contactPoint"]["email"] == "m.rossi@example.org"

    assert a.get(f"/persons/{e}").json()["organisations"][0]["fullName"] == "Mario Rossi"
    # the prefix is case-insensitive
    assert a.get("/persons/" + e.replace("urn:schac", "URN:SCHAC")).status_code == 200

    r = a.put(f"/persons/{e}", json=person_body(e, fullName="Maria Rossi", academicLevel="MASTER"))
    assert r.status_code == 200
    rel = r.json()["organisations"][0]
    assert (rel["fullName"], rel["academicLevel"]["key"]) == ("Maria Rossi", "MASTER")
    assert "contactPoint" not in rel  # the e-mail was left out of the full replacement

    assert_error(a.put(f"/persons/{e}", json=person_body(esi(191276))), 400, "EMU-INVALID-INPUT")
    assert a.delete(f"/persons/{e}").status_code == 204
    assert_error(a.get(f"/persons/{e}"), 404)
    assert_error(a.put(f"/persons/{e}", json=person_body(e)), 404)
    assert_error(a.delete(f"/persons/{e}"), 404)


def test_person_conflict_and_other_organisations(a: httpx.Client, b: httpx.Client) -> None:
    e = register(a, 1)
    assert_error(a.post("/persons", json=person_body(e)), 409, "ER-0019")
    only_b = register(b, 2, PIC_B)
    assert_error(a.get(f"/persons/{only_b}"), 403, "SE-0000")
    assert_error(a.put(f"/persons/{only_b}", json=person_body(only_b)), 403, "SE-0000")
    # a second organisation adds its own relation to the same ESI
    r = b.post("/persons", json=person_body(e, PIC_B, fullName="M. Rossi"))
    assert r.status_code == 201 and r.json()["organisationCount"] == 2
    mine = a.get(f"/persons/{e}").json()
    assert [v["organisation"]["identifier"] for v in mine["organisations"]] == [PIC_A]
    assert mine["organisations"][0]["fullName"] == "Mario Rossi"
    # our relation gone, theirs remains: 403, not 404
    assert a.delete(f"/persons/{e}").status_code == 204
    assert_error(a.get(f"/persons/{e}"), 403, "SE-0000")


def test_percent_encoded_esi_in_path_reads_the_same_person(a: httpx.Client) -> None:
    e = register(a, 3)
    assert a.get("/persons/" + e.replace(":", "%3A")).json()["identifier"] == e


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (person_body("not-an-esi"), 400),
        (person_body(esi(1).replace("unife.it:1", "unife.it:1 2")), 400),
        (person_body(esi(1), academicLevel="LICEO"), 400),
        (person_body(esi(1), academicLevel=None), 400),  # omit, never null
        (person_body(esi(1), fullName=""), 400),
        (person_body(esi(1), fullName="x" * 256), 400),
        (person_body(esi(1), email="not-an-email"), 400),
        ({"identifier": esi(1), "identifierCode": "ESI", "personOrganisationUpdateViews": []}, 400),
        (person_body(esi(1)) | {"identifierCode": "XYZ"}, 400),
        ({"personOrganisationUpdateViews": person_body(esi(1))["personOrganisationUpdateViews"]}, 400),
        ([1, 2], 400),
        (person_body(esi(1), PIC_B), 401),  # another organisation's PIC with our key
    ],
)
def test_person_bad_input(a: httpx.Client, body: Any, status: int) -> None:
    r = a.post("/persons", json=body)
    assert_error(r, status, "EMU-INVALID-INPUT" if status == 400 else "EMU-UNAUTHORIZED")


def test_person_body_not_json(a: httpx.Client) -> None:
    assert_error(a.post("/persons", content=b"{nope"), 400, "EMU-INVALID-INPUT")
    assert_error(a.post("/persons", content=b""), 400, "EMU-INVALID-INPUT")


def test_full_name_of_255_characters_is_accepted(a: httpx.Client) -> None:
    assert a.post("/persons", json=person_body(esi(4), fullName="x" * 255)).status_code == 201


# --- auth ------------------------------------------------------------------------------------------


def test_auth(emu: EmulatorProcess, a: httpx.Client) -> None:
    e = register(a, 5)
    with client(emu, None) as anonymous, client(emu, "wrong-key") as wrong:
        assert_error(anonymous.get(f"/persons/{e}"), 401)
        assert_error(wrong.get(f"/persons/{e}"), 401)
        assert_error(wrong.get("/cards"), 401)
    r = a.get(f"/persons/{e}", headers={"Authorization": f"Basic {KEY_A}"})
    assert_error(r, 401)
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert_error(a.post("/cards", json=card_body(e, PIC_B)), 401)
    assert_error(a.get("/cards/generate-escn", params={"pic": PIC_B, "numberOfESCN": 1}), 401)


# --- cards -----------------------------------------------------------------------------------------


def test_card_lifecycle(a: httpx.Client, b: httpx.Client) -> None:
    e = register(a, 10)
    number = escn(1)
    r = a.post("/cards", json=card_body(e, cardNumber=number, displayName="Mario R."))
    assert r.status_code == 201
    view = r.json()
    assert view["cardNumber"] == number and view["person"] == {"identifier": e}
    assert view["issuer"]["identifier"] == PIC_A and view["hasOwnerAuthorization"] is True
    assert view["cardStatusType"] == {"key": "ACTIVE", "label": "Active"}
    assert view["cardType"]["key"] == "SMART_PASSIVE" and view["expiresAt"] == FUTURE
    assert_error(a.post("/cards", json=card_body(e, cardNumber=number)), 409, "ER-0002")

    minted = a.post("/cards", json=card_body(e, cardType="PASSIVE")).json()["cardNumber"]
    validate_escn(minted, PIC_A)

    r = a.put(f"/cards/{number}", json=card_body(e, cardStatusType="INACTIVE"))
    assert r.status_code == 200 and r.json()["cardStatusType"]["key"] == "INACTIVE"
    assert a.get(f"/cards/{number}").json()["cardStatusType"]["key"] == "INACTIVE"
    assert_error(a.put(f"/cards/{number}", json=card_body(e, cardNumber=minted)), 400, "EMU-INVALID-INPUT")
    assert_error(a.put(f"/cards/{number}", json=card_body(e, cardNumber=number)), 400, "EMU-INVALID-INPUT")
    other = register(a, 11)
    assert_error(a.put(f"/cards/{number}", json=card_body(other)), 400, "EMU-INVALID-INPUT")

    assert_error(b.get(f"/cards/{number}"), 403, "SE-0000")
    assert_error(b.put(f"/cards/{number}", json=card_body(e, PIC_B)), 403, "SE-0000")

    assert a.delete(f"/cards/{number}").status_code == 204
    assert_error(a.get(f"/cards/{number}"), 404)
    assert_error(a.put(f"/cards/{number}", json=card_body(e)), 404)
    assert_error(a.delete(f"/cards/{number}"), 404)
    assert_error(a.get(f"/cards/{number}/status"), 404)
    # a deleted card's number is never reused
    assert_error(a.post("/cards", json=card_body(e, cardNumber=number)), 409, "ER-0002")
    assert_error(a.get(f"/cards/{escn(999)}"), 404)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"cardNumber": escn(2, PIC_B)}, "EMU-INVALID-INPUT"),  # number of another PIC
        ({"cardNumber": escn(2).upper()}, "EMU-INVALID-INPUT"),
        ({"cardNumber": "c3ddd400-d3ef-403e-9234-001999978433"}, "EMU-INVALID-INPUT"),
        ({"cardType": "CHIP"}, "EMU-INVALID-INPUT"),
        ({"cardStatusType": "EXPIRED"}, "EMU-INVALID-INPUT"),
        ({"cardStatusType": "active"}, "EMU-INVALID-INPUT"),
        ({"issuedAt": "01/02/2025"}, "EMU-INVALID-INPUT"),
        ({"issuedAt": "2025-02-30"}, "EMU-INVALID-INPUT"),
        ({"expiresAt": "2025-01-01T00:00:00Z"}, "EMU-INVALID-INPUT"),
        ({"issuedAt": "2026-01-02", "expiresAt": "2026-01-01"}, "EMU-INVALID-INPUT"),
        ({"displayName": "x" * 256}, "EMU-INVALID-INPUT"),
        ({"displayName": None}, "EMU-INVALID-INPUT"),
        ({"personIdentifier": "nope"}, "EMU-INVALID-INPUT"),
        ({"personIdentifier": esi(424242)}, "EMU-PERSON-UNKNOWN"),  # unknown person
    ],
)
def test_card_bad_input(a: httpx.Client, fields: dict[str, Any], code: str) -> None:
    e = register(a, 12)
    assert_error(a.post("/cards", json=card_body(e, **fields)), 400, code)


def test_card_missing_required_fields(a: httpx.Client) -> None:
    e = register(a, 13)
    for name in (
        "cardStatusType",
        "cardType",
        "issuedAt",
        "expiresAt",
        "issuerIdentifier",
        "personIdentifier",
    ):
        body = card_body(e)
        del body[name]
        assert_error(a.post("/cards", json=body), 400, "EMU-INVALID-INPUT")


def test_card_for_person_of_another_organisation_only(a: httpx.Client, b: httpx.Client) -> None:
    theirs = register(b, 14, PIC_B)
    assert_error(a.post("/cards", json=card_body(theirs)), 400, "EMU-PERSON-UNKNOWN")


def test_expired_and_revival_rule(emu: EmulatorProcess, a: httpx.Client) -> None:
    e = register(a, 20)
    number = escn(20)
    r = a.post("/cards", json=card_body(e, cardNumber=number, issuedAt="2020-01-01", expiresAt=PAST))
    assert r.json()["cardStatusType"]["key"] == "EXPIRED"
    # a status alone does not revive it: refused
    r = a.put(f"/cards/{number}", json=card_body(e, issuedAt="2020-01-01", expiresAt=PAST))
    assert_error(r, 400, "EMU-INVALID-INPUT")
    r = a.put(f"/cards/{number}", json=card_body(e, cardStatusType="INACTIVE", expiresAt=PAST))
    assert_error(r, 400, "EMU-INVALID-INPUT")
    assert a.get(f"/cards/{number}").json()["cardStatusType"]["key"] == "EXPIRED"
    with client(emu, None) as anonymous:
        assert anonymous.get(f"/cards/{number}/status").json()["status"] == "EXPIRED"
    # a future expiry with ACTIVE/INACTIVE does
    r = a.put(f"/cards/{number}", json=card_body(e, cardStatusType="INACTIVE", expiresAt=FUTURE))
    assert r.json()["cardStatusType"]["key"] == "INACTIVE"
    r = a.put(f"/cards/{number}", json=card_body(e, expiresAt=FUTURE))
    assert r.json()["cardStatusType"]["key"] == "ACTIVE"
    # the expiry day itself is still valid
    r = a.put(f"/cards/{number}", json=card_body(e, expiresAt=TODAY.isoformat()))
    assert r.json()["cardStatusType"]["key"] == "ACTIVE"


def test_public_status_needs_no_key_and_hides_the_person(emu: EmulatorProcess, a: httpx.Client) -> None:
    e = register(a, 21)
    number = a.post("/cards", json=card_body(e, displayName="M. Rossi")).json()["cardNumber"]
    with client(emu, None) as anonymous:
        r = anonymous.get(f"/cards/{number}/status")
    assert r.status_code == 200
    assert r.json() == {
        "cardNumber": number,
        "displayName": "M. Rossi",
        "expiresAt": FUTURE,
        "issuedAt": TODAY.isoformat(),
        "issuerIdentifier": PIC_A,
        "issuerName": f"Organisation {PIC_A}",
        "status": "ACTIVE",
    }


def test_qr(a: httpx.Client) -> None:
    e = register(a, 22)
    number = a.post("/cards", json=card_body(e)).json()["cardNumber"]
    r = a.get(f"/cards/{number}/qr", headers={"Accept": "text/plain"})
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text == f"https://s.esc-r.eu/{number}"
    r = a.get(f"/cards/{number}/qr", headers={"Accept": "image/svg+xml"})
    assert r.headers["content-type"].startswith("image/svg+xml")
    assert "<svg" in r.text and "</svg>" in r.text
    assert_error(a.get(f"/cards/{escn(77)}/qr", headers={"Accept": "text/plain"}), 400)


def test_generate_escn(a: httpx.Client) -> None:
    r = a.get("/cards/generate-escn", params={"prefix": 7, "pic": PIC_A, "numberOfESCN": 100})
    numbers = r.json()
    assert r.status_code == 200 and len(set(numbers)) == 100
    for n in numbers:
        validate_escn(n, PIC_A)
        assert n.endswith("007" + PIC_A)
    one = {"prefix": 1, "pic": PIC_A}
    assert_error(a.get("/cards/generate-escn", params=one | {"numberOfESCN": 101}), 500)
    assert_error(a.get("/cards/generate-escn", params=one | {"numberOfESCN": 0}), 400)
    assert_error(a.get("/cards/generate-escn", params=one | {"numberOfESCN": 2**31}), 400)
    assert_error(a.get("/cards/generate-escn", params={"pic": PIC_A}), 400)  # prefix is required
    assert_error(a.get("/cards/generate-escn", params={"prefix": 1, "pic": "12", "numberOfESCN": 1}), 400)
    assert_error(a.get("/cards/generate-escn", params={"pic": PIC_A, "prefix": 1000}), 400)
    # generated numbers are unknown to the Router until a card is created with them
    assert_error(a.get(f"/cards/{numbers[0]}"), 404)


# --- lists -----------------------------------------------------------------------------------------


def walk(c: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for number in range(100):
        page = c.get(path, params={**params, "page": number, "size": 50}).json()
        items.extend(page["content"])
        if page["empty"] or len(page["content"]) < page["page"]["size"]:
            break
    return items


def test_paging_caps_size_at_10_and_walks_in_stable_order(a: httpx.Client, b: httpx.Client) -> None:
    created = [register(a, 1000 + i) for i in range(23)]
    register(b, 5000, PIC_B)  # another organisation's person never shows
    first = a.get("/persons", params={"size": 50}).json()
    assert first["page"] == {"number": 0, "size": 10, "totalElements": 23, "totalPages": 3}
    assert len(first["content"]) == 10 and first["empty"] is False
    assert {link["rel"] for link in first["links"]} >= {"self", "next", "last"}
    assert [p["identifier"] for p in walk(a, "/persons")] == created
    last = a.get("/persons", params={"page": 2}).json()
    assert len(last["content"]) == 3
    beyond = a.get("/persons", params={"page": 3}).json()
    assert beyond["empty"] is True and beyond["content"] == []
    desc = a.get("/persons", params={"sort": "identifier", "direction": "DESC"}).json()["content"]
    assert [p["identifier"] for p in desc] == sorted(created, reverse=True)[:10]
    bad_pages = ({"page": -1}, {"page": 10**18}, {"page": "9" * 5000}, {"size": 0}, {"page": "x"})
    for bad in (*bad_pages, {"sort": "email"}, {"direction": "UP"}):
        assert_error(a.get("/persons", params=bad), 400, "EMU-INVALID-INPUT")


def test_card_search_by_person(a: httpx.Client) -> None:
    x, y = register(a, 30), register(a, 31)
    x_cards = [a.post("/cards", json=card_body(x)).json()["cardNumber"] for _ in range(12)]
    a.post("/cards", json=card_body(y))
    search = f"person.identifierCode:ESI<+>person.identifier:{x}"
    # "<+>" percent-encoded by httpx ...
    assert [c["cardNumber"] for c in walk(a, "/cards", search=search)] == x_cards
    # ... and left raw, where a form decoder would read "< >"
    r = a.get(f"/cards?search={search}")
    assert r.json()["page"]["totalElements"] == 12
    r = a.get("/cards?search=" + search.replace("<+>", "< >"))
    assert r.json()["page"]["totalElements"] == 12
    assert a.get("/cards").json()["page"]["totalElements"] == 13
    unknown = a.get("/cards", params={"search": f"person.identifierCode:ESI<+>person.identifier:{esi(9)}"})
    assert unknown.json()["empty"] is True
    for bad in ("person.email:x", "person.identifierCode:ESI", "nonsense"):
        assert_error(a.get("/cards", params={"search": bad}), 400, "EMU-INVALID-INPUT")


# --- persistence -----------------------------------------------------------------------------------


def test_state_survives_a_restart(emu: EmulatorProcess, a: httpx.Client) -> None:
    e = register(a, 40)
    number = a.post("/cards", json=card_body(e)).json()["cardNumber"]
    old_pid = emu.pid
    emu.restart()
    assert emu.pid != old_pid
    with client(emu) as c:
        assert c.get(f"/persons/{e}").status_code == 200
        assert c.get(f"/cards/{number}").json()["person"]["identifier"] == e
        assert_error(c.post("/persons", json=person_body(e)), 409, "ER-0019")
    assert emu.stats()["organisations"][PIC_A] == {"persons": 1, "cards": 1, "deleted_cards": 0}


# --- faults ----------------------------------------------------------------------------------------


def only(kind: str, **extra: Any) -> FaultConfig:
    return FaultConfig(fail_rate=1.0, fault_kinds={kind: 1.0}, post_commit_share=0.0, **extra)


@pytest.mark.parametrize("kind", ["500", "502", "503"])
def test_fault_status_codes(emu: EmulatorProcess, a: httpx.Client, kind: str) -> None:
    emu.set_faults(only(kind))
    r = a.get("/persons")
    assert r.status_code == int(kind) and r.json()["code"]
    assert emu.stats()["faults"] == {kind: 1}


def test_fault_429_has_retry_after(emu: EmulatorProcess, a: httpx.Client) -> None:
    emu.set_faults(only("429", retry_after_s=3))
    r = a.get("/persons")
    assert r.status_code == 429 and r.headers["Retry-After"] == "3"


def test_fault_html_gateway_page(emu: EmulatorProcess, a: httpx.Client) -> None:
    emu.set_faults(only("html"))
    r = a.get("/persons")
    assert r.status_code == 502 and r.headers["content-type"].startswith("text/html")
    with pytest.raises(ValueError):
        r.json()


def test_fault_dropped_connection(emu: EmulatorProcess, a: httpx.Client) -> None:
    emu.set_faults(only("drop"))
    with pytest.raises(httpx.RemoteProtocolError):
        a.get("/persons")
    emu.set_faults(FaultConfig())
    assert a.get("/persons").status_code == 200  # the client reconnects


def test_fault_timeout(emu: EmulatorProcess) -> None:
    emu.set_faults(only("timeout", timeout_s=1.0))
    with client(emu, timeout=0.3) as c:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            c.get("/persons")
        assert time.monotonic() - started < 1.0
    assert emu.stats()["faults"] == {"timeout": 1}


def test_faults_spare_admin_status_and_unauthenticated_calls(emu: EmulatorProcess, a: httpx.Client) -> None:
    e = register(a, 50)
    number = a.post("/cards", json=card_body(e)).json()["cardNumber"]
    emu.set_faults(only("500"))
    with client(emu, None) as anonymous:
        assert anonymous.get(f"/cards/{number}/status").status_code == 200
        assert_error(anonymous.get("/persons"), 401)
    assert emu.stats()["faults_total"] == 0
    assert a.get("/persons").status_code == 500


def test_post_commit_fault_then_retry_gets_409(emu: EmulatorProcess, a: httpx.Client) -> None:
    e = esi(60)
    emu.set_faults(FaultConfig(fail_rate=1.0, fault_kinds={"500": 1.0}, post_commit_share=1.0))
    assert a.post("/persons", json=person_body(e)).status_code == 500
    emu.set_faults(FaultConfig())
    assert_error(a.post("/persons", json=person_body(e)), 409, "ER-0019")  # the first try was committed

    number = escn(60)
    emu.set_faults(FaultConfig(fail_rate=1.0, fault_kinds={"drop": 1.0}, post_commit_share=1.0))
    with pytest.raises(httpx.RemoteProtocolError):
        a.post("/cards", json=card_body(e, cardNumber=number))
    emu.set_faults(FaultConfig())
    assert_error(a.post("/cards", json=card_body(e, cardNumber=number)), 409, "ER-0002")
    assert a.get(f"/cards/{number}").status_code == 200
    faults = emu.stats()["faults"]
    assert faults == {"500": 1, "drop": 1, "post_commit": 2}


def test_pre_commit_fault_changes_nothing(emu: EmulatorProcess, a: httpx.Client) -> None:
    e = esi(61)
    emu.set_faults(only("503"))
    assert a.post("/persons", json=person_body(e)).status_code == 503
    emu.set_faults(FaultConfig())
    assert_error(a.get(f"/persons/{e}"), 404)


def test_fail_rate_mix_and_latency(emu: EmulatorProcess, a: httpx.Client) -> None:
    emu.set_faults(FaultConfig(fail_rate=0.5, fault_kinds={"500": 1, "503": 1}, seed=7, latency_ms=30))
    started = time.monotonic()
    codes = [a.get("/persons").status_code for _ in range(40)]
    assert time.monotonic() - started >= 40 * 0.03
    assert 8 <= codes.count(200) <= 32 and set(codes) <= {200, 500, 503}
    stats = emu.stats()
    assert stats["faults_total"] == 40 - codes.count(200)


def test_admin_faults_endpoint_validates(emu: EmulatorProcess) -> None:
    with httpx.Client(trust_env=False) as c:
        for bad in ({"fail_rate": 2}, {"fault_kinds": {"418": 1}}, {"nonsense": 1}, {"latency_ms": -1}):
            r = c.put(emu.admin_url + "/faults", json=bad)
            assert r.status_code == 400 and r.json()["code"] == "EMU-INVALID-INPUT"
        r = c.put(emu.admin_url + "/faults", json={"fail_rate": 0.1, "fault_kinds": "500,drop=3"})
        assert r.json()["fault_kinds"] == {"500": 1.0, "drop": 3.0}
        assert c.get(emu.admin_url + "/faults").json()["fail_rate"] == 0.1
        assert c.get(emu.admin_url + "/health").json() == {"status": "ok"}


# --- command line and logs -------------------------------------------------------------------------


def test_main_rejects_bad_arguments_without_echoing_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    db = str(tmp_path / "x.sqlite")
    assert main(["--port", "0", "--db", db, "--api-key", f"{KEY_A}:12345"], environ={}) == 2
    assert main(["--db", db, "--api-key", f"{KEY_A}:{PIC_A}"], environ={}) == 2
    assert main(["--port", "0", "--db", db], environ={}) == 2
    env = {"ESC_EMULATOR_API_KEYS": f"{KEY_A}:{PIC_A}", "ESC_EMULATOR_FAIL_RATE": "3"}
    assert main(["--port", "0", "--db", db], environ=env) == 2
    assert main(["--port", "x"], environ={}) == 2
    out = capsys.readouterr()
    assert KEY_A not in out.out + out.err + caplog.text


def test_subprocess_logs_never_show_keys(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESC_EMULATOR_")}
    env["ESC_EMULATOR_API_KEYS"] = f"{KEY_A}:{PIC_A}"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.Popen(
        [sys.executable, "-m", "etl.emulator", "--port", "0", "--db", str(tmp_path / "db.sqlite"),
         "--port-file", str(port_file), "--latency-ms", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        port = int(port_file.read_text())
        base = f"http://127.0.0.1:{port}/esc-rest/api/v2"
        with httpx.Client(trust_env=False) as c:
            c.post(base + "/persons", json=person_body(esi(70)), headers={"Authorization": f"Bearer {KEY_A}"})
            c.get(base + "/persons", headers={"Authorization": "Bearer other-secret"})
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "1 API keys" in output and PIC_A in output
    assert KEY_A not in output and "other-secret" not in output and esi(70) not in output


# --- pure rules ------------------------------------------------------------------------------------


def test_parse_person_and_card_directly() -> None:
    p = parse_person(person_body(esi(1), email="a@b.it"), PIC_A)
    assert (p.full_name, p.email, p.academic_level) == ("Mario Rossi", "a@b.it", "BACHELOR")
    two = person_body(esi(1))
    two["personOrganisationUpdateViews"] *= 2
    with pytest.raises(ApiError) as err:
        parse_person(two, PIC_A)
    assert err.value.status == 400
    mixed = person_body(esi(1))
    mixed["personOrganisationUpdateViews"].append({"organisationIdentifier": PIC_B, "fullName": "x"})
    with pytest.raises(ApiError) as err:
        parse_person(mixed, PIC_A)
    assert err.value.status == 401
    c = parse_card(card_body(esi(1), cardNumber=escn(3)), PIC_A)
    assert c.card_number == escn(3) and c.expires_at.isoformat() == FUTURE


def test_parse_page_and_search() -> None:
    assert parse_page({"size": "1000", "page": "4"}, ()).size == 10
    assert parse_page({}, ()).number == 0
    assert parse_page({"sort": "identifier,desc"}, ("identifier",)).descending is True
    assert parse_card_search(None) is None
    assert parse_card_search("person.identifierCode:ESI<+>person.identifier:" + esi(1)) == esi(1)
    assert parse_card_search("person.identifier:" + esi(1)) == esi(1)
    with pytest.raises(ApiError):
        parse_card_search("person.identifierCode:XYZ<+>person.identifier:" + esi(1))


def test_fault_config_parsing_and_seeded_plan() -> None:
    assert parse_kinds("500, 503=2,drop") == {"500": 1.0, "503": 2.0, "drop": 1.0}
    env = {"ESC_EMULATOR_FAIL_RATE": "0.25", "ESC_EMULATOR_FAULT_KINDS": "429", "ESC_EMULATOR_SEED": "3"}
    cfg = FaultConfig.from_env(env)
    assert (cfg.fail_rate, dict(cfg.fault_kinds), cfg.seed) == (0.25, {"429": 1.0}, 3)
    assert FaultConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"fail_rate": -0.1}, {"fault_kinds": {"boom": 1}}, {"retry_after_s": 1.5}, {"seed": "x"}):
        with pytest.raises(ValueError):
            FaultConfig.from_dict(bad)
    with pytest.raises(ValueError):
        FaultConfig(fail_rate=0.5, fault_kinds={"500": 0})
    with pytest.raises(ValueError, match="latency_ms"):
        FaultConfig.from_env({"ESC_EMULATOR_LATENCY_MS": "fast"})

    mixed = FaultConfig(fail_rate=0.5, post_commit_share=0.5, seed=11, latency_ms=40, latency_sigma=0.5)
    draws = [(FaultPlan(mixed).draw(write=True), FaultPlan(mixed).latency_s()) for _ in range(2)]
    assert draws[0] == draws[1]
    plan = FaultPlan(mixed)
    faults = [plan.draw(write=True) for _ in range(2000)]
    hits = [f for f in faults if f]
    assert 800 < len(hits) < 1200
    assert not any(f.after_commit for f in hits if f.kind == "429")
    assert 0.35 < sum(f.after_commit for f in hits) / len(hits) < 0.5  # 0.5 of the non-429 share
    assert not any(f.after_commit for f in (FaultPlan(mixed).draw(write=False) for _ in range(200)) if f)
    latencies = [plan.latency_s() for _ in range(2000)]
    assert 0.035 < sorted(latencies)[1000] < 0.045  # the median is latency_ms
    jitter = FaultPlan(FaultConfig(latency_ms=10, latency_jitter_ms=20, seed=1))
    assert min(jitter.latency_s() for _ in range(500)) == 0.0  # clipped, never negative


# --- allow-list, CSV validation, pictures ----------------------------------------------------------


def test_deny_pics_simulates_the_address_allow_list(emu: EmulatorProcess) -> None:
    import asyncio

    from etl.resources.router import RouterClient
    from etl.resources.router_errors import RouterAuthError

    emu.set_faults(FaultConfig(deny_pics=(PIC_A,)))
    with client(emu, KEY_B) as b:  # other organisations are not affected
        assert b.get("/persons").status_code == 200

    async def call() -> None:
        async with RouterClient(emu.url, KEY_A, "unife", PIC_A, "ESC_SYNC_ROUTER_KEY_UNIFE") as c:
            await c.get_person(esi(1))

    with pytest.raises(RouterAuthError) as caught:
        asyncio.run(call())
    message = str(caught.value)
    assert "403" in message and "allow-listed" in message and "ESC_SYNC_ROUTER_KEY_UNIFE" in message
    assert KEY_A not in message


def test_csv_config_and_validation(a: httpx.Client) -> None:
    e = register(a, 60)
    number = a.post("/cards", json=card_body(e)).json()["cardNumber"]
    columns = a.get("/cards/csv-config").json()
    assert columns["cardNumber"] == 0 and columns["personIdentifier"] == 1

    def row(**fields: str) -> str:
        values = [""] * len(columns)
        for name, value in fields.items():
            values[columns[name]] = value
        return ",".join(values)

    good = row(personIdentifier=e, cardType="PASSIVE", cardStatusType="ACTIVE", issuedAt=TODAY.isoformat(),
               expiresAt=FUTURE, issuerIdentifier=PIC_A)  # fmt: skip
    bad = good.replace("PASSIVE", "CHIP")
    header = ",".join(sorted(columns, key=columns.__getitem__))

    def validate(operation: str, text: str) -> httpx.Response:
        files = {"file": ("cards.csv", text.encode(), "text/csv")}
        return a.post("/cards/validate-csv", params={"operation": operation}, files=files)

    assert validate("CREATE", f"{header}\n{good}\n").json() == []
    [problem] = validate("CREATE", f"{good}\n{bad}\n").json()
    assert (problem["rowNumber"], problem["fieldName"]) == (2, "cardType")
    assert validate("UPDATE", number + good).json() == []  # good's first column (cardNumber) is empty
    [unknown] = validate("UPDATE", escn(404) + good).json()
    assert unknown["fieldName"] == "cardNumber"
    [missing] = validate("DELETE", row(cardNumber=escn(404))).json()
    assert missing["fieldName"] == "cardNumber"
    assert validate("DELETE", row(cardNumber=number)).json() == []
    assert a.post("/cards/validate-csv", params={"operation": "CREATE"}).status_code == 400
    assert validate("MERGE", good).status_code == 400


def test_person_pictures(a: httpx.Client, b: httpx.Client) -> None:
    import io

    from PIL import Image

    def image(size: tuple[int, int]) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", size).save(out, format="PNG")
        return out.getvalue()

    e = register(a, 61)
    path = f"/organisations/{PIC_A}/person/{e}/picture"

    def upload(data: bytes, **params: str) -> httpx.Response:
        return a.post(path, params=params, files={"file": ("p.png", data, "image/png")})

    assert_error(upload(image((100, 100))), 400, "EMU-INVALID-INPUT")  # not 200x300
    assert_error(upload(b"not an image"), 400, "EMU-INVALID-INPUT")
    assert upload(image((100, 100)), resize="true").status_code == 201
    assert Image.open(io.BytesIO(a.get(path).content)).size == (200, 300)
    assert a.get(f"/persons/{e}").json()["organisations"][0]["hasPicture"] is True
    assert_error(b.get(path), 403)  # another organisation's id in the path
    assert a.delete(path).status_code == 204
    assert a.get(path).status_code == 404
    assert a.get(f"/persons/{e}").json()["organisations"][0]["hasPicture"] is False
