"""The three systems esc-sync speaks to, together: what the CLI, the demo, the sensors and the
nightly checks work with. Assets receive them one by one, as the Dagster resources ``state_db``,
``esse3`` and ``router`` (etl.definitions).

Plain objects rather than ConfigurableResources: their configuration is the TOML file and the
environment, which every Dagster process reads the same way when it loads the definitions."""

from __future__ import annotations

from sqlalchemy import Engine

from etl.config import Settings
from etl.resources.esse3 import Esse3Source
from etl.resources.esse3_sources import Esse3Sources
from etl.resources.router import RouterClient
from etl.resources.router_clients import RouterClients
from etl.resources.state_db import StateDB


class Runtime:
    def __init__(
        self,
        settings: Settings,
        state_db: StateDB | None = None,
        esse3_sources: Esse3Sources | None = None,
        router_clients: RouterClients | None = None,
    ) -> None:
        self.settings = settings
        self.state_db = state_db or StateDB(settings.database_url)
        self.esse3_sources = esse3_sources or Esse3Sources(settings)
        self.router_clients = router_clients or RouterClients(settings, self.state_db)

    @property
    def engine(self) -> Engine:
        return self.state_db.engine

    def esse3(self, institution: str) -> Esse3Source:
        return self.esse3_sources.of(institution)

    def router_client(self, institution: str) -> RouterClient:
        return self.router_clients.of(institution)

    def resources(self) -> dict[str, object]:
        """The Dagster resources, by the names the assets ask for."""
        return {"state_db": self.state_db, "esse3": self.esse3_sources, "router": self.router_clients}

    def dispose(self) -> None:
        self.esse3_sources.dispose()
        self.state_db.dispose()
