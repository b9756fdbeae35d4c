"""The ESC Router as a Dagster resource: a client per university, with the university's own key
(from the environment, never from configuration) and its request rate shared through the state DB."""

from __future__ import annotations

import logging

from etl.config import Settings
from etl.errors import ExitCode, UniversityError
from etl.resources.router import RouterClient
from etl.resources.state_db import StateDB
from etl.resources.throttle import SharedThrottle

# httpx logs every request URL at INFO, and Router URLs carry ESIs (personal identifiers).
logging.getLogger("httpx").setLevel(logging.WARNING)


class RouterClients:
    def __init__(self, settings: Settings, state_db: StateDB) -> None:
        self.settings = settings
        self.state_db = state_db

    def of(self, institution: str) -> RouterClient:
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
            throttle=SharedThrottle(self.state_db.engine, institution, r.requests_per_second)
            if r.requests_per_second
            else None,
        )
