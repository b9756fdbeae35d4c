"""Run an iterator one step ahead in a background thread, so producing the next item (reading Esse3,
validating) overlaps with consuming this one (waiting on the state DB). Both sides spend much of
their time outside the GIL (the database drivers release it), so two threads gain real parallelism."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_POLL = 0.05  # seconds; how quickly a blocked producer notices that the consumer has gone
_END = object()


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield ``items`` in order while a thread produces up to ``depth`` more. An exception in the
    producer is raised here, at the point the failed item would have been yielded; when the
    consumer stops early (an exception, ``close()``), the producer stops and closes ``items``."""
    slots: queue.Queue[tuple[object, BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[object, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as e:  # handed to the consumer, which raises it
            put((_END, e))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # releases the producer's resources (an open cursor) in its own thread

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()
