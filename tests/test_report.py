"""What `esc-sync status` and the demo summary say about Router calls whose retries ran out."""

from __future__ import annotations

import pytest
from sqlalchemy import insert

from etl.report import summary
from etl.resources.runtime import Runtime
from etl.store.models import Person, utcnow


def test_status_counts_calls_whose_retries_ran_out(
    runtime: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    errors = ("Router unavailable: HTTP 503", "Router unavailable: HTTP None", None)
    rows = [
        {"institution": "unife", "esi": f"urn:schac:personalUniqueCode:int:esi:unife.it:{n}", "pers_id": n,
         "person_key": str(n), "state": "pending", "last_error": error, "created_at": utcnow()}
        for n, error in enumerate(errors, 1)
    ]  # fmt: skip
    with runtime.engine.begin() as conn:
        conn.execute(insert(Person), rows)
    summary(runtime.settings, runtime)
    out = capsys.readouterr().out
    assert (
        "unife: Router calls whose retries ran out: 2 person(s), 0 card(s); the next run retries them" in out
    )
    assert "unipa: Router calls" not in out
