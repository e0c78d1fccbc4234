"""The users actor through the bus: seed, login resolution, registration life cycle, histories,
and the staff-creation saga's compensation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg
import pytest

from simveb.actors.auth.messages import CheckPasswordPolicy, SetPassword
from simveb.actors.integrations.actor import IntegrationsActor
from simveb.actors.notifications.actor import NotificationsActor
from simveb.actors.users.actor import UsersActor, normalise_name
from simveb.actors.users.messages import (
    SYSTEM,
    Caller,
    ConfirmRegistration,
    CreateUser,
    DeactivateUser,
    GetUserAuthz,
    ListRoles,
    RegisterCitizen,
    ResolveLogin,
    SeedUsers,
)
from simveb.bus import Actor, handler
from simveb.config import Settings
from simveb.errors import Conflict, Forbidden, Invalid, NotFound
from simveb.http.users import create_account
from simveb.runtime import Runtime
from tests.conftest import fresh_runtime
from tests.users_support import make_user, npi, phone, seed_roles


def _registration(**fields: str) -> RegisterCitizen:
    return RegisterCitizen(
        npi=fields.get("npi") or npi(),
        phone=fields.get("phone") or phone(),
        last_name="Adjovi",
        first_name="Rose",
    )


async def test_seed_is_the_readme_grid_and_idempotent(runtime):
    added = await runtime.bus.ask(SeedUsers())
    assert added == 8 + 25 + 56  # roles, permissions, role-permission pairs
    assert await runtime.bus.ask(SeedUsers()) == 0
    assert await runtime.bus.ask(SeedUsers(only_if_empty=True)) == 0
    roles = {r.code: r.permissions for r in await runtime.bus.ask(ListRoles())}
    assert roles["citizen"] == ["registrations:submit"]
    assert roles["affiliate"] == ["registrations:submit", "vehicles:file"]
    assert len(roles["admin"]) == 17


async def test_resolve_login_by_email_phone_or_npi(runtime):
    await seed_roles(runtime)
    user = await make_user(runtime, "citizen", email="rose@example.bj")
    for identifier in ("ROSE@example.bj", user.phone, f" {user.npi} "):
        found = await runtime.bus.ask(ResolveLogin(identifier=identifier))
        assert found.user_id == user.id and found.permissions == ["registrations:submit"]
    for identifier in ("nobody@example.bj", "+2290100000000", "0000000000", "'; DROP TABLE users.users; --"):
        with pytest.raises(NotFound):
            await runtime.bus.ask(ResolveLogin(identifier=identifier))
    authz = await runtime.bus.ask(GetUserAuthz(user_id=user.id))
    assert authz.kind == "person" and authz.status == "active"


async def test_registration_confirmation_and_its_refusals(runtime):
    await seed_roles(runtime)
    reg = await runtime.bus.ask(_registration())
    assert reg.created and reg.user_id is not None
    authz = await runtime.bus.ask(ConfirmRegistration(user_id=reg.user_id))
    assert authz.status == "active" and authz.roles == ["citizen"]
    again = await runtime.bus.ask(ConfirmRegistration(user_id=reg.user_id))  # idempotent
    assert again.status == "active"
    with pytest.raises(NotFound):
        await runtime.bus.ask(ConfirmRegistration(user_id=UUID(int=7)))
    await runtime.bus.ask(DeactivateUser(user_id=reg.user_id, caller=SYSTEM))
    with pytest.raises(Conflict):
        await runtime.bus.ask(ConfirmRegistration(user_id=reg.user_id))


async def test_stale_pending_registration_releases_its_npi(runtime):
    await seed_roles(runtime)
    n = npi()
    first = await runtime.bus.ask(_registration(npi=n))
    assert (await runtime.bus.ask(_registration(npi=n))).user_id is None  # someone else, too early
    async with runtime.db.pool.acquire() as con:
        await con.execute(
            "UPDATE users.users SET created_at = now() - interval '25 hours' WHERE id = $1", first.user_id
        )
    second = await runtime.bus.ask(_registration(npi=n))
    assert second.created and second.user_id != first.user_id
    async with runtime.db.pool.acquire() as con:
        old = await con.fetchrow("SELECT status, released FROM users.users WHERE id = $1", first.user_id)
        actions = await con.fetch("SELECT action FROM users.user_history WHERE user_id = $1 ORDER BY id", first.user_id)
    assert (old["status"], old["released"]) == ("inactive", True)
    assert [a["action"] for a in actions] == ["registered", "registration_expired"]


async def test_concurrent_registrations_make_one_account(runtime):
    await seed_roles(runtime)
    n = npi()
    replies = await asyncio.gather(*(runtime.bus.ask(_registration(npi=n)) for _ in range(6)))
    assert sum(1 for r in replies if r.created) == 1
    async with runtime.db.pool.acquire() as con:
        assert await con.fetchval("SELECT count(*) FROM users.users WHERE npi = $1", n) == 1


async def test_histories_are_append_only(runtime):
    await seed_roles(runtime)
    user = await make_user(runtime, "citizen")
    async with runtime.db.pool.acquire() as con:
        for table in ("users.role_history", "users.user_history"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await con.execute(f"UPDATE {table} SET actor = 'forger' WHERE user_id = $1", user.id)
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await con.execute(f"DELETE FROM {table} WHERE user_id = $1", user.id)


async def test_create_user_checks_the_caller(runtime):
    await seed_roles(runtime)
    writer = Caller(sub="w", permissions=frozenset({"users:write"}))
    with pytest.raises(Forbidden):
        await runtime.bus.ask(CreateUser(caller=Caller(sub="x"), roles=["agent"], email="a@simveb.test"))
    with pytest.raises(Forbidden):  # creating an admin needs users:roles too
        await runtime.bus.ask(CreateUser(caller=writer, roles=["admin"], email="a@simveb.test"))
    with pytest.raises(Invalid):
        await runtime.bus.ask(CreateUser(caller=writer, roles=["agent"], phone=phone()))  # staff need an email
    made = await runtime.bus.ask(CreateUser(caller=writer, roles=["agent"], email="a@simveb.test"))
    assert made.roles == ["agent"]


def test_name_comparison_ignores_case_accents_and_separators():
    assert normalise_name("HOUNGBÈDJI") == normalise_name("houngbedji")
    assert normalise_name("Jean-Marie  Sèna") == normalise_name("jean marie sena")
    assert normalise_name("Koffi") != normalise_name("Kofi")


# --- the staff-creation saga, with an auth that cannot store passwords ------------------------------


class BrokenPasswordStore(Actor):
    """Stands in for auth: accepts every password, then fails to store it (a database outage)."""

    name = "auth"

    @handler
    async def check(self, msg: CheckPasswordPolicy) -> None:
        return None

    @handler
    async def set_password(self, msg: SetPassword) -> None:
        raise Conflict("password store unavailable", code="password_store_down")


@pytest.fixture
async def broken_auth_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    actors = [UsersActor, IntegrationsActor, NotificationsActor, BrokenPasswordStore]
    async with fresh_runtime(settings, actors=actors) as rt:
        yield rt


async def test_failed_password_step_releases_the_new_account(broken_auth_runtime):
    rt = broken_auth_runtime
    await seed_roles(rt)
    message = CreateUser(caller=SYSTEM, roles=["agent"], email="late@simveb.test")
    with pytest.raises(Conflict, match="password store"):
        await create_account(rt.bus, message, "a long enough passphrase")
    with pytest.raises(NotFound):  # the email is free again ...
        await rt.bus.ask(ResolveLogin(identifier="late@simveb.test"))
    async with rt.db.pool.acquire() as con:
        row = await con.fetchrow("SELECT id, status, released FROM users.users WHERE email = 'late@simveb.test'")
        actions = await con.fetch("SELECT action FROM users.user_history WHERE user_id = $1 ORDER BY id", row["id"])
    assert (row["status"], row["released"]) == ("inactive", True)  # ... and nothing was erased
    assert [a["action"] for a in actions] == ["created", "creation_aborted"]
    user, password_set = await create_account(rt.bus, message, None)  # without a password: no saga step
    assert user.status == "active" and password_set is False
