"""How a university's Esse3 is read (``[esse3]`` in the configuration), as the source assets need it."""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple
from zoneinfo import ZoneInfo

from etl.domain.source_values import DEFAULT_FUTURE_SKEW

OVERLAP = dt.timedelta(minutes=10)  # each incremental read goes back this far: clock skew, short transactions


class ReadPolicy(NamedTuple):
    overlap: dt.timedelta = OVERLAP
    future_skew: dt.timedelta = DEFAULT_FUTURE_SKEW  # a DATA_MOD later than now + this is quarantined
    zone: ZoneInfo = ZoneInfo("UTC")  # the zone DATA_MOD is written in
    max_vanished_share: float = 0.05  # more vanishing at once is held for a person (mass-deletion guard)
