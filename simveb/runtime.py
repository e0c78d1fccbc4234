"""One process's assembly: database (embedded or by URL), migrations, key ring, bus, actors, relay.

The server's lifespan, the CLI commands and the tests all start the same `Runtime`, so what runs in
tests is what runs in production.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from simveb import migrate
from simveb.bus import Actor, Bus
from simveb.config import Settings
from simveb.db import Database, DatabaseProvider
from simveb.keys import KeyRing
from simveb.outbox import OutboxRelay

log = logging.getLogger("simveb.runtime")


class Runtime:
    """Starts and stops everything a process needs, in order, and undoes it in reverse."""

    def __init__(
        self,
        settings: Settings,
        *,
        actors: Iterable[type[Actor]] | None = None,
        graph: Mapping[str, Iterable[str]] | None = None,
        relay: bool = True,
    ) -> None:
        from simveb.actors import ACTORS, ASK_GRAPH

        self.settings = settings
        self.actor_classes = list(ACTORS if actors is None else actors)
        self.graph = ASK_GRAPH if graph is None else graph
        self.with_relay = relay
        self.provider = DatabaseProvider(settings)
        self.db: Database | None = None
        self.bus: Bus | None = None
        self.relay: OutboxRelay | None = None
        self.keys: KeyRing | None = None
        self.extras: dict[str, Any] = {}

    async def start(self, *, migrate_first: bool | None = None, seed_if_empty: bool | None = None) -> Runtime:
        settings = self.settings
        url = self.provider.__enter__()
        try:
            if settings.database.migrate_on_start if migrate_first is None else migrate_first:
                applied = await migrate.migrate(url)
                if applied:
                    log.info("applied %d migration(s)", len(applied))
            self.db = await Database.connect(
                url,
                min_size=settings.database.pool_min,
                max_size=settings.database.pool_max,
                timeout=settings.database.command_timeout_s,
                acquire_timeout=settings.database.acquire_timeout_s,
            )
            self.keys = KeyRing.for_settings(settings)
            self.bus = Bus(settings, self.db)
            for cls in self.actor_classes:
                self.bus.add(cls)
            self.bus.declare_graph({k: v for k, v in self.graph.items() if k in self.bus.cells})
            await self.bus.start()
            if self.with_relay:
                self.relay = OutboxRelay(self.bus, self.db)
                await self.relay.start()
            seed = (not settings.is_production) if seed_if_empty is None else seed_if_empty
            if seed:
                from simveb.seed import seed_if_empty as run_seed

                await run_seed(self)
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        if self.relay is not None:
            await self.relay.stop()
            self.relay = None
        if self.bus is not None and self.bus.started:
            await self.bus.stop()
        if self.db is not None:
            await self.db.close()
            self.db = None
        self.provider.__exit__(None, None, None)

    async def __aenter__(self) -> Runtime:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
