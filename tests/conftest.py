"""Loads the shared fixtures (tests/fixtures/) once, and runs the slowest tests first: with several
workers (pytest -n), the long ones then overlap with everything else instead of ending the run alone."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.fixtures.databases", "tests.fixtures.world"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: 0 if item.get_closest_marker("slow") else 1)  # stable: order kept otherwise
