"""The users actor through the bus: seed, login resolution, registration life cycle, histories,
and the account-creation saga's compensation (run by auth, which asks users)."""

from __future__ import annotations

import asyncio
from uuid import UUID

import asyncpg
import pytest

from simveb.actors.auth.messages import CreateAccount, Login
from simveb.actors.users.actor import normalise_name
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
from simveb.errors import Forbidden, Invalid, NotFound
from simveb.runtime import Runtime
from tests.support import ROOT
from tests.users_support import events, make_user, npi, phone, seed_roles


def _registration(**fields: str) -> RegisterCitizen:
    return RegisterCitizen(
        npi=fields.get("npi") or npi(),
        phone=fields.get("phone") or phone(),
        last_name="Adjovi",
        first_name="Rose",
    )


def readme_grid() -> dict[str, set[str]]:
    """The "Roles and permissions" table of README.md as {role: {permission, ...}}."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Roles and permissions") :]
    grid: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and ":" in cells[0]:
            for role in cells[2].split(","):
                grid.setdefault(role.strip(), set()).add(cells[0].strip("`"))
        elif grid and not line.startswith("|"):
            break
    return grid


async def test_seed_is_the_readme_grid_and_idempotent(runtime):
    grid = readme_grid()
    permissions = set().union(*grid.values())
    added = await runtime.bus.ask(SeedUsers())
    # roles, permissions, role-permission pairs: exactly what the README's grid lists
    assert added == len(grid) + len(permissions) + sum(len(p) for p in grid.values())
    assert await runtime.bus.ask(SeedUsers()) == 0
    assert await runtime.bus.ask(SeedUsers(only_if_empty=True)) == 0
    roles = {r.code: set(r.permissions) for r in await runtime.bus.ask(ListRoles())}
    assert roles == grid
    assert roles["citizen"] == {"registrations:submit"}
    assert roles["police"] == {"vehicles:lookup"}


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
    with pytest.raises(NotFound):  # deactivated and released: the account holds nothing any more
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
    # On the audit trail: both creations, and the expiry (released NPI) by the system, in that order.
    async with runtime.db.pool.acquire() as con:
        trail = await con.fetch("SELECT actor, subject, action, detail FROM users.audit ORDER BY seq")
    assert [(t["subject"], t["action"]) for t in trail] == [
        (str(first.user_id), "user_created"),
        (str(first.user_id), "status_changed"),
        (str(second.user_id), "user_created"),
    ]
    assert trail[1]["actor"] == "system" and trail[1]["detail"]["npi_released"] is True


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


# --- the account-creation saga (auth's CreateAccount) and its compensation ---------------------------


async def _account_rows(rt: Runtime, email: str) -> list[asyncpg.Record]:
    async with rt.db.connection() as con:
        return await con.fetch(
            "SELECT u.id, u.status, u.released, array_agg(h.action ORDER BY h.id) AS actions,"
            " EXISTS (SELECT 1 FROM auth.credentials c WHERE c.user_id = u.id) AS has_password"
            " FROM users.users u JOIN users.user_history h ON h.user_id = u.id WHERE u.email = $1"
            " GROUP BY u.id ORDER BY u.created_at",
            email,
        )


async def test_password_refused_once_the_account_exists_releases_it(runtime):
    rt = runtime
    await seed_roles(rt)
    email = "awa.dossou@simveb.test"
    message = CreateUser(caller=SYSTEM, roles=["agent"], email=email)
    # Long enough for the check made before creating anything, but it contains the account's own
    # email: refused once users created the account, so auth releases the account again.
    with pytest.raises(Invalid) as refused:
        await rt.bus.ask(CreateAccount(user=message, password="Awa.Dossou is my passphrase"))
    assert refused.value.code == "password_policy"
    assert refused.value.extra["rules"] == ["not containing the account's email, phone or NPI"]
    with pytest.raises(NotFound):  # the email is free again ...
        await rt.bus.ask(ResolveLogin(identifier=email))
    (row,) = await _account_rows(rt, email)  # ... and nothing was erased
    assert (row["status"], row["released"], row["has_password"]) == ("inactive", True, False)
    assert row["actions"] == ["created", "creation_aborted"]
    # Created pending by the saga, it was never active: nobody welcomes it.
    assert [e for e in await events(rt, "UserRegistered") if e["user_id"] == str(row["id"])] == []

    # A plainly bad password creates nothing at all.
    with pytest.raises(Invalid):
        await rt.bus.ask(
            CreateAccount(user=CreateUser(caller=SYSTEM, roles=["agent"], email="x@simveb.test"), password="short")
        )
    assert await _account_rows(rt, "x@simveb.test") == []

    # The same email with an acceptable password: created, active, password set, signs in.
    created = await rt.bus.ask(CreateAccount(user=message, password="a long enough passphrase"))
    assert created.password_set and created.user.status == "active"
    result = await rt.bus.ask(Login(identifier=email, password="a long enough passphrase"))
    assert result.status == "authenticated"
    rows = await _account_rows(rt, email)
    assert [(r["status"], r["has_password"]) for r in rows] == [("inactive", False), ("active", True)]
    assert rows[1]["actions"] == ["created", "registration_confirmed"]
    welcomed = [e["user_id"] for e in await events(rt, "UserRegistered")]
    assert welcomed == [str(created.user.id)]


async def test_account_without_a_password(runtime):
    await seed_roles(runtime)
    message = CreateUser(caller=SYSTEM, roles=["agent"], email="later@simveb.test")
    created = await runtime.bus.ask(CreateAccount(user=message))
    assert created.user.status == "active" and created.password_set is False
    (row,) = await _account_rows(runtime, "later@simveb.test")
    assert row["has_password"] is False
