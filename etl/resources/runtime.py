"""The one resource assets receive: settings plus lazily opened connections (state DB, Esse3 sources).

A plain object rather than a ConfigurableResource: its configuration is the TOML file and the
environment, which every Dagster process reads the same way when it loads the definitions."""

from __future__ import annotations

from functools import cached_property

from sqlalchemy import Engine

from etl.config import Settings
from etl.resources.esse3 import Esse3Source
from etl.store.db import make_engine


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._sources: dict[str, Esse3Source] = {}

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.database_url)

    def esse3(self, institution: str) -> Esse3Source:
        if institution not in self._sources:
            ateneo = self.settings.ateneo(institution)
            self._sources[institution] = Esse3Source(institution, ateneo.esse3_url)
        return self._sources[institution]

    def dispose(self) -> None:
        for source in self._sources.values():
            source.dispose()
        self._sources.clear()
        if "engine" in self.__dict__:
            self.engine.dispose()
