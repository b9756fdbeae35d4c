"""The emulator against the Router's own OpenAPI document (issue 10, contract test a).

- The document the emulator ships and serves is the official one (``../shared/reference/``).
- Schemathesis generates requests for every operation of the document (with a valid key, and with
  the seeded persons, cards and pictures as explicit examples so the happy paths are reached): no
  5xx, every status documented, every answer conforming to the document's response schemas.
- A scenario walks every operation's documented answers and checks each against the document.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from PIL import Image
from schemathesis.specs.openapi import checks

from etl.domain.esi import compose_esi
from etl.emulator import start_emulator
from etl.emulator.app import OPENAPI_DOCUMENT
from etl.emulator.process import EmulatorProcess
from tests.router_contract import SHARED_DOCUMENT, RouterContract, load_document, strict

PIC, OTHER_PIC = "999978433", "123456789"
KEY, OTHER_KEY = "contract-key-a", "contract-key-b"
ESI = compose_esi("unife.it", 4242)
ESCN = "c3ddd400-d3ef-103e-9234-001999978433"
TODAY = dt.date.today()
CONTRACT = RouterContract()


def _with_examples(document: dict[str, Any]) -> dict[str, Any]:
    """The document with the seeded identifiers as path-parameter examples (explicit examples are
    always generated), so schemathesis reaches 200s and not only 404s."""
    doc = copy.deepcopy(document)
    values = {"esi": ESI, "escn": ESCN, "id": PIC}
    for item in doc["paths"].values():
        for op in item.values():
            for p in op.get("parameters", []):
                if p["in"] == "path" and p["name"] in values:
                    p["example"] = values[p["name"]]
    return doc


schema = schemathesis.openapi.from_dict(_with_examples(strict(load_document())))


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with start_emulator({KEY: PIC, OTHER_KEY: OTHER_PIC}) as e:  # in memory
        yield e


def api(emu: EmulatorProcess, key: str | None = KEY) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=emu.url + "/api/v2", headers=headers, timeout=10, trust_env=False)


def png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def seed(emu: EmulatorProcess) -> None:
    emu.reset()
    with api(emu) as a:
        rel = {"organisationIdentifier": PIC, "fullName": "Test Person", "email": "t@example.org",
               "academicLevel": "MASTER"}  # fmt: skip
        a.post("/persons", json={"identifier": ESI, "identifierCode": "ESI",
                                 "personOrganisationUpdateViews": [rel]}).raise_for_status()  # fmt: skip
        card = {"cardNumber": ESCN, "cardStatusType": "ACTIVE", "cardType": "PASSIVE",
                "issuedAt": TODAY.isoformat(), "expiresAt": (TODAY + dt.timedelta(days=300)).isoformat(),
                "issuerIdentifier": PIC, "personIdentifier": ESI, "displayName": "Card",
                "processorIdentifier": "B12345678"}  # fmt: skip
        a.post("/cards", json=card).raise_for_status()
        a.post(f"/organisations/{PIC}/person/{ESI}/picture",
               files={"file": ("p.png", png((200, 300)), "image/png")}).raise_for_status()  # fmt: skip


@pytest.fixture
def seeded(emu: EmulatorProcess) -> EmulatorProcess:
    seed(emu)
    return emu


def test_the_emulator_ships_and_serves_the_official_document(emu: EmulatorProcess) -> None:
    if SHARED_DOCUMENT.exists():
        assert OPENAPI_DOCUMENT.read_bytes() == SHARED_DOCUMENT.read_bytes()
    served = httpx.get(f"http://127.0.0.1:{emu.port}/esc-rest/v3/api-docs/V2", trust_env=False)
    assert served.json() == load_document()
    assert len(CONTRACT.operations) == 18


def _unless_204(check: Any) -> Any:
    """HTTP forbids content in a 204 (RFC 9110 §15.3.5), so the document's JSON string for the
    DELETEs' 204 can never be sent: the Router answers 204 empty, and so does the emulator."""

    def wrapped(ctx: Any, response: Any, case: Any) -> bool | None:
        return None if response.status_code == 204 else check(ctx, response, case)

    wrapped.__name__ = check.__name__
    return wrapped


# The one status the emulator answers that the document does not list for its operation: it lists no
# 4xx for a picture upload, whatever the file; an image the Router cannot take is a 400 here (a 5xx
# would make a client retry a request that can never succeed).
UNDOCUMENTED_ALLOWED = {("POST", "/api/v2/organisations/{id}/person/{esi}/picture", 400)}


def status_code_conformance(ctx: Any, response: Any, case: Any) -> bool | None:
    if (case.method.upper(), case.path, response.status_code) in UNDOCUMENTED_ALLOWED:
        return None
    return checks.status_code_conformance(ctx, response, case)


content_type_conformance = _unless_204(checks.content_type_conformance)
response_schema_conformance = _unless_204(checks.response_schema_conformance)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_get_documented_conforming_answers(
    seeded: EmulatorProcess, case: schemathesis.Case
) -> None:
    # Every call carries a valid key: 401 is tested on its own below.
    case.call_and_validate(
        base_url=seeded.url,
        headers={"Authorization": f"Bearer {KEY}"},
        checks=[status_code_conformance, content_type_conformance, response_schema_conformance],
    )


def _check(r: httpx.Response) -> httpx.Response:
    problems = CONTRACT.check_response(
        r.request.method, r.request.url.path, r.status_code, r.headers.get("content-type", ""), r.content
    )
    assert not problems, problems
    return r


def test_every_operation_answers_the_documented_shapes(seeded: EmulatorProcess) -> None:
    with api(seeded) as a, api(seeded, None) as anonymous, api(seeded, OTHER_KEY) as b:
        person = _check(a.get(f"/persons/{ESI}")).json()
        org = person["organisations"][0]
        assert org["organisation"]["identifier"] == PIC and org["contactPoint"]["email"] == "t@example.org"
        assert org["academicLevel"]["key"] == "MASTER" and org["hasPicture"] is True
        assert person["identifierCode"]["key"] == "ESI" and "personOrganisationViews" not in person
        card = _check(a.get(f"/cards/{ESCN}")).json()
        assert card["issuer"]["identifier"] == PIC and card["person"]["identifier"] == ESI
        assert card["processor"]["identifier"] == "B12345678" and card["hasOwnerAuthorization"] is True
        assert (
            card["cardStatusType"] == {"key": "ACTIVE", "label": "Active"} and card["displayName"] == "Card"
        )
        assert "issuerIdentifier" not in card and "personIdentifier" not in card
        listed = _check(a.get("/cards")).json()
        assert listed["page"]["totalElements"] == 1 and "cardStatusType" not in listed["content"][0]
        assert _check(a.get("/persons")).json()["content"][0]["identifier"] == ESI
        status = _check(anonymous.get(f"/cards/{ESCN}/status")).json()
        assert status["status"] == "ACTIVE"
        assert _check(a.get("/cards/generate-escn", params={"prefix": 1, "pic": PIC})).json()[0][-9:] == PIC
        assert _check(a.get("/cards/csv-config")).json()["cardNumber"] == 0
        _check(a.get(f"/cards/{ESCN}/qr", headers={"Accept": "image/svg+xml"}))
        picture = _check(a.get(f"/organisations/{PIC}/person/{ESI}/picture"))
        assert Image.open(io.BytesIO(picture.content)).size == (200, 300)
        # documented errors, each an ApiErrorMessage
        for r in (
            a.post("/cards", json={"cardType": "PASSIVE"}),
            a.get("/persons", params={"page": 10**18}),
            a.get("/cards", params={"size": "x"}),
            a.get("/cards/generate-escn", params={"prefix": 1, "pic": PIC, "numberOfESCN": 2**31}),
            anonymous.get("/persons"),
            b.get(f"/cards/{ESCN}"),
            a.get(f"/cards/{ESCN[:-1]}0/status"),
        ):
            assert 400 <= _check(r).status_code < 500 and set(r.json()) == {"code", "message"}
        _check(a.delete(f"/organisations/{PIC}/person/{ESI}/picture"))
        _check(a.delete(f"/cards/{ESCN}"))
        _check(a.delete(f"/persons/{ESI}"))
