"""prefetch: order, error hand-over and early stop (threads only, no I/O)."""

from __future__ import annotations

import threading

import pytest

from etl.prefetch import prefetch


def test_yields_every_item_in_order() -> None:
    assert list(prefetch(iter(range(1000)), depth=3)) == list(range(1000))


def test_producer_error_is_raised_where_the_failed_item_would_have_been() -> None:
    def items():
        yield 1
        yield 2
        raise ValueError("source broke")

    got = []
    with pytest.raises(ValueError, match="source broke"):
        for x in prefetch(items()):
            got.append(x)
    assert got == [1, 2]


def test_consumer_stopping_early_stops_and_closes_the_producer() -> None:
    closed = threading.Event()
    produced = []

    def items():
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    it = prefetch(items(), depth=2)
    assert next(it) == 0
    it.close()
    assert closed.is_set()  # the worker thread has been joined and closed the source
    assert len(produced) <= 4  # bounded read-ahead: depth items queued plus one in hand


def test_consumer_error_does_not_leave_the_producer_running() -> None:
    before = threading.active_count()
    with pytest.raises(RuntimeError):
        for _ in prefetch(iter(range(10_000)), depth=1):
            raise RuntimeError("write failed")
    assert threading.active_count() == before
