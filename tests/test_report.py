"""What `esc-sync status` and the demo summary say about Router work not confirmed (calls whose
retries ran out, intents never confirmed) and who runs it again."""

from __future__ import annotations

import pytest
from sqlalchemy import insert

from etl.report import summary
from etl.resources.runtime import Runtime
from etl.store.models import Person, utcnow


def test_status_counts_work_the_router_has_not_confirmed(
    runtime: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    states = (
        ("pending", "Router unavailable: HTTP 503"),  # a POST whose retries ran out
        ("registered", "Router unavailable: HTTP None"),  # a PUT whose retries ran out
        ("pending", None),  # an intent never confirmed (a run killed)
        ("failed", "Router refused the person: HTTP 400"),  # permanent: quarantined, not work
        ("registered", None),
    )
    rows = [
        {"institution": "unife", "esi": f"urn:schac:personalUniqueCode:int:esi:unife.it:{n}", "pers_id": n,
         "person_key": str(n), "state": state, "last_error": error, "created_at": utcnow()}
        for n, (state, error) in enumerate(states, 1)
    ]  # fmt: skip
    with runtime.engine.begin() as conn:
        conn.execute(insert(Person), rows)
    summary(runtime.settings, runtime)
    out = capsys.readouterr().out
    line = "unife: 3 person(s) and 0 card(s) not confirmed by the Router: `esc-sync sync` runs them again"
    assert line in out
    assert "not confirmed" not in out.replace(line, "")  # unipa has none
    assert "university unipa: Esse3 database file" in out  # no demo Esse3 here: said, nothing created
