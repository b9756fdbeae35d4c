"""The one resource assets receive: settings plus lazily opened connections (state DB, Esse3 sources).

A plain object rather than a ConfigurableResource: its configuration is the TOML file and the
environment, which every Dagster process reads the same way when it loads the definitions."""

from __future__ import annotations

import logging
from functools import cached_property

from sqlalchemy import Engine

from etl.config import Settings
from etl.errors import ExitCode, UniversityError
from etl.resources.esse3 import Esse3Source
from etl.resources.router import RouterClient
from etl.resources.throttle import SharedThrottle
from etl.store.db import make_engine

# httpx logs every request URL at INFO, and Router URLs carry ESIs (personal identifiers).
logging.getLogger("httpx").setLevel(logging.WARNING)


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
            self._sources[institution] = Esse3Source(
                institution, ateneo.esse3_url, sql_dir=self.settings.esse3_sql_dir
            )
        return self._sources[institution]

    def router_client(self, institution: str) -> RouterClient:
        """A client for one university; its key comes from the environment, never from config."""
        ateneo = self.settings.ateneo(institution)
        key = ateneo.router_api_key()
        if not key:
            raise UniversityError(
                f"university {institution}: Router API key missing: set the environment variable "
                f"{ateneo.router_api_key_env}",
                exit_code=ExitCode.ROUTER,
            )
        r = self.settings.router
        return RouterClient(
            base_url=r.url,
            api_key=key,
            institution=institution,
            pic=ateneo.pic,
            api_key_env=ateneo.router_api_key_env,
            concurrency=r.concurrency,
            timeout_s=r.timeout_s,
            max_retries=r.max_retries,
            # the Router limits each organisation key: one schedule for all of the university's workers
            throttle=SharedThrottle(self.engine, institution, r.requests_per_second)
            if r.requests_per_second
            else None,
        )

    def dispose(self) -> None:
        for source in self._sources.values():
            source.dispose()
        self._sources.clear()
        if "engine" in self.__dict__:
            self.engine.dispose()
