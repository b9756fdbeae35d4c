"""The universities' Esse3 databases as a Dagster resource: one source per university, opened on
first use and kept for the process."""

from __future__ import annotations

from etl.config import Settings
from etl.resources.esse3 import Esse3Source


class Esse3Sources:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._sources: dict[str, Esse3Source] = {}

    def of(self, institution: str) -> Esse3Source:
        if institution not in self._sources:
            ateneo = self.settings.ateneo(institution)
            self._sources[institution] = Esse3Source(
                institution, ateneo.esse3_url, sql_dir=self.settings.esse3_sql_dir
            )
        return self._sources[institution]

    def dispose(self) -> None:
        for source in self._sources.values():
            source.dispose()
        self._sources.clear()
