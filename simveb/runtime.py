"""One process's assembly: database (embedded or by URL), migrations, key ring, bus, actors, relay.

`[placement]` decides which actors this process hosts; with `placement.redis_url` set, the others
are reached through the remote transport (`simveb.remote`). Without it, this process hosts all.

The server's lifespan, the CLI commands and the tests all start the same `Runtime`, so what runs in
tests is what runs in production.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from simveb import migrate
from simveb.bus import Actor, Bus
from simveb.config import ConfigError, Settings
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
        self.transport: Any = None
        self.hosted, self.remote = self._placement()
        self.keys: KeyRing | None = None
        self.extras: dict[str, Any] = {}

    def _placement(self) -> tuple[list[type[Actor]], list[type[Actor]]]:
        """(hosted here, hosted elsewhere) from `placement.actors`; placement is configuration only."""
        placement = self.settings.placement
        if not placement.actors:
            return self.actor_classes, []
        known = {cls.name for cls in self.actor_classes}
        unknown = sorted(set(placement.actors) - known)
        if unknown:
            raise ConfigError(
                f"placement.actors: unknown actor(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        if not placement.redis_url:
            raise ConfigError(
                "placement.actors: hosting only some actors needs placement.redis_url (the transport to the others)"
            )
        hosted = [cls for cls in self.actor_classes if cls.name in placement.actors]
        return hosted, [cls for cls in self.actor_classes if cls.name not in placement.actors]

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
            for cls in self.hosted:
                self.bus.add(cls)
            for cls in self.remote:
                self.bus.add_remote(cls)
            # The whole graph is checked (no cycle across processes either); an actor hosted nowhere
            # is just remote: its asks wait for a host until their timeout.
            known = {*self.bus.cells, *self.bus.remote_cells}
            self.bus.declare_graph({k: v for k, v in self.graph.items() if k in known})
            await self.bus.start()
            if settings.placement.redis_url:
                from simveb.remote import RemoteTransport

                self.transport = RemoteTransport(
                    self.bus, settings.placement, hosted=list(self.bus.cells), known=sorted(known)
                )
                self.bus.transport = self.transport
                await self.transport.start()
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
        if self.transport is not None:
            await self.transport.stop()
            self.transport = None
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
