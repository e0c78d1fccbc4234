"""Reference data for every domain: which seed message each actor answers, in order.

`simveb seed` sends them all (idempotent: existing rows are kept); `simveb serve` in development sends
them with `only_if_empty`, so a first run shows real content and a later run changes nothing.
Each actor owns its data and its seed handler; this module only lists them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from simveb.actors.config.messages import SeedConfig
from simveb.actors.documents.messages import SeedDocuments
from simveb.actors.notifications.messages import SeedNotifications
from simveb.actors.registrations.messages import SeedRegistrations
from simveb.actors.users.messages import SeedUsers
from simveb.actors.vehicles.messages import SeedVehicles

if TYPE_CHECKING:
    from simveb.runtime import Runtime

# (actor name, message factory). An actor that is not running in this process is skipped.
SEEDS: list[tuple[str, Any]] = [
    ("config", SeedConfig),
    ("users", SeedUsers),
    ("notifications", SeedNotifications),
    ("vehicles", SeedVehicles),
    ("registrations", SeedRegistrations),
    ("documents", SeedDocuments),
]


async def seed(runtime: Runtime, *, only_if_empty: bool = False) -> dict[str, int]:
    """Send every seed message; return rows inserted per actor."""
    assert runtime.bus is not None
    inserted: dict[str, int] = {}
    for name, factory in SEEDS:
        if name in runtime.bus.cells and runtime.bus.handles(factory):
            inserted[name] = await runtime.bus.ask(factory(only_if_empty=only_if_empty), timeout=120)
    return inserted


async def seed_if_empty(runtime: Runtime) -> dict[str, int]:
    return await seed(runtime, only_if_empty=True)
