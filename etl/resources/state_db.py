"""The state DB as a Dagster resource: its engine, opened on first use in each process."""

from __future__ import annotations

from functools import cached_property

from sqlalchemy import Engine

from etl.store.db import make_engine


class StateDB:
    def __init__(self, url: str) -> None:
        self.url = url

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.url)

    def dispose(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()
