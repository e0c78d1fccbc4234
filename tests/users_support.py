"""Helpers of the users tests: seed roles, create accounts through the bus, read the outbox."""

from __future__ import annotations

import itertools
from typing import Any

from simveb.actors.users.messages import SYSTEM, CreateUser, SeedUsers, User
from simveb.runtime import Runtime

_serial = itertools.count(1)


def npi() -> str:
    return f"{next(_serial):010d}"


def phone() -> str:
    return f"+22901{next(_serial):08d}"


async def seed_roles(runtime: Runtime) -> None:
    assert runtime.bus is not None
    await runtime.bus.ask(SeedUsers())


async def make_user(runtime: Runtime, *roles: str, kind: str = "person", **fields: Any) -> User:
    """An active account created as an admin would (the system caller holds every users permission)."""
    assert runtime.bus is not None
    roles = roles or ("citizen",)
    if kind == "staff":
        fields.setdefault("email", f"staff{next(_serial)}@simveb.test")
    else:
        fields.setdefault("phone", phone())
    if kind == "person":
        fields.setdefault("npi", npi())
        fields.setdefault("last_name", "Dossou")
        fields.setdefault("first_name", "Koffi")
    return await runtime.bus.ask(CreateUser(caller=SYSTEM, kind=kind, roles=list(roles), **fields))  # type: ignore[arg-type]


async def events(runtime: Runtime, event_type: str) -> list[dict[str, Any]]:
    """Payloads of the outbox rows of one event type, oldest first."""
    assert runtime.db is not None
    async with runtime.db.pool.acquire() as con:
        rows = await con.fetch("SELECT payload FROM bus.outbox WHERE type = $1 ORDER BY id", event_type)
    return [r["payload"] for r in rows]
