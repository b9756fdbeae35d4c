"""The "perfezionamento dell'immatricolazione" rule: when a career counts as a finalised enrolment."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class FinalisedRule:
    """Per-university rule. Esse3 has no dedicated flag: by default a career is finalised once it has
    left the provisional status ``I`` (active, suspended or closed) and carries an enrolment date."""

    statuses: frozenset[str] = frozenset({"A", "S", "X"})
    require_enrolment_date: bool = True

    def is_finalised(self, status: str | None, enrolment_date: dt.date | None) -> bool:
        if status not in self.statuses:
            return False
        return enrolment_date is not None or not self.require_enrolment_date
