"""Which partitions changed, and the run key naming each change (etl.changes): pure, no I/O."""

from __future__ import annotations

import datetime as dt

from etl.changes import WATCHED_TABLES, changed_partitions
from etl.resources.esse3 import ChangeMarker

T = dt.datetime(2026, 12, 4, 10, 0)


def test_a_table_left_ahead_of_its_watermark_does_not_make_a_second_run_key() -> None:
    markers = [
        ChangeMarker(2025, "P01_STU", T),
        ChangeMarker(2025, "P01_BADGE", T - dt.timedelta(hours=1)),  # a badge the run does not read
        ChangeMarker(2024, "P01_STU", T - dt.timedelta(days=9)),
    ]
    first = changed_partitions("unife", markers, {}, [2024, 2025], WATCHED_TABLES)
    assert [(c.partition.key, c.newest) for c in first] == [
        ("2024|unife", T - dt.timedelta(days=9)),
        ("2025|unife", T),
    ]
    # the run read every career; the badge row it had no reason to read leaves that watermark behind
    after = {("2025|unife", "P01_STU"): T, ("2025|unife", "P01_BADGE"): T - dt.timedelta(hours=2)}
    after[("2024|unife", "P01_STU")] = T - dt.timedelta(days=9)
    [again] = changed_partitions("unife", markers, after, [2024, 2025], WATCHED_TABLES)
    assert again.run_key == first[1].run_key  # the same change: Dagster launches no second run
    # a real change later gets a new key
    markers.append(ChangeMarker(2025, "P01_ANAPER", T + dt.timedelta(minutes=1)))
    [later] = changed_partitions("unife", markers, after, [2024, 2025], WATCHED_TABLES)
    assert later.run_key != first[1].run_key
