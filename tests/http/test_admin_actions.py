"""The administrators' security routes over HTTP, tried by those who must not use them: a citizen or an
agent resetting someone's second factor (to bind their own authenticator after phishing a password)
or releasing someone's NPI (to take it over). Only `users:write` may; the act is recorded and the
account's sessions end, as the code promises.

- `POST /api/auth/users/{id}/2fa/reset` (reason): TOTP and recovery codes removed, a row in
  auth.admin_actions (who, whom, why), every session of the user revoked.
- `POST /api/users/{id}/release-npi` (reason): the account deactivated and its NPI, phone and email
  freed, an `npi_released` entry in the user history (who, why), its sessions revoked; never the
  last active admin.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from simveb.actors.auth.messages import SetPassword
from simveb.runtime import Runtime
from tests.actors.test_auth import PASSWORD, db_fetch
from tests.actors.test_auth import make_user as make_staff
from tests.actors.test_auth_hardening import with_totp
from tests.support import wait_for
from tests.users_support import make_user, seed_roles

CITIZEN: tuple[str, ...] = ()
AGENT = ("users:read", "users:kyc")
ADMIN = ("users:read", "users:write", "users:roles", "users:kyc")


@pytest.fixture
def headers(auth: Any) -> dict[str, dict[str, str]]:
    admin_id = str(uuid.uuid4())
    return {
        "citizen": auth(*CITIZEN, sub=str(uuid.uuid4()), roles=("citizen",)),
        "agent": auth(*AGENT, sub=str(uuid.uuid4()), roles=("agent",)),
        "admin": auth(*ADMIN, sub=admin_id, roles=("admin",)),
        "admin_id": {"sub": admin_id},
    }


async def signed_in(client: httpx.AsyncClient, email: str, totp: Any = None) -> dict[str, str]:
    """Bearer headers of a real session (both factors when the account has TOTP)."""
    r = await client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    if totp is not None:
        body = {"challenge_id": r.json()["challenge"]["challenge_id"], "code": totp.at(time.time() + 30)}
        r = await client.post("/api/auth/verify-otp", json=body)
        assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['tokens']['access_token']}"}


def assert_forbidden(r: httpx.Response) -> None:
    assert r.status_code == 403, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_only_users_write_resets_a_second_factor_recorded_and_sessions_end(
    runtime: Runtime, client: httpx.AsyncClient, headers: dict[str, dict[str, str]]
) -> None:
    user_id, email, totp = await with_totp(runtime, "agent")
    session = await signed_in(client, email, totp)
    route = f"/api/auth/users/{user_id}/2fa/reset"
    body = {"reason": "lost phone, identity checked at the counter"}
    assert (await client.post(route, json=body)).status_code == 401
    for who in ("citizen", "agent"):
        assert_forbidden(await client.post(route, json=body, headers=headers[who]))
    # Refused means nothing happened: the factor is there, nothing recorded, the session lives.
    assert await db_fetch(runtime, "SELECT 1 FROM auth.totp WHERE user_id = $1", user_id)
    assert await db_fetch(runtime, "SELECT 1 FROM auth.admin_actions") == []
    assert (await client.get("/api/auth/me", headers=session)).status_code == 200
    # A reason is required.
    assert (await client.post(route, json={}, headers=headers["admin"])).status_code == 400
    r = await client.post(route, json=body, headers=headers["admin"])
    assert r.status_code == 204, r.text
    (row,) = await db_fetch(runtime, "SELECT action, user_id, actor, reason FROM auth.admin_actions")
    assert dict(row) == {
        "action": "totp_reset",
        "user_id": user_id,
        "actor": headers["admin_id"]["sub"],
        "reason": body["reason"],
    }
    assert await db_fetch(runtime, "SELECT 1 FROM auth.totp WHERE user_id = $1", user_id) == []
    assert await db_fetch(runtime, "SELECT 1 FROM auth.recovery_codes WHERE user_id = $1", user_id) == []
    # Sessions proved with the old factor end; the password alone signs in again (then set a new one).
    assert (await client.get("/api/auth/me", headers=session)).status_code == 401
    r = await client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200 and r.json()["status"] == "authenticated"


async def test_only_users_write_releases_an_npi_recorded_and_the_squatter_is_signed_out(
    runtime: Runtime, client: httpx.AsyncClient, headers: dict[str, dict[str, str]]
) -> None:
    await seed_roles(runtime)
    squatter = await make_user(runtime, "citizen", email="squatter@example.bj")
    assert runtime.bus is not None
    await runtime.bus.ask(SetPassword(user_id=squatter.id, password=PASSWORD, by="test"))
    session = await signed_in(client, "squatter@example.bj")
    route = f"/api/users/{squatter.id}/release-npi"
    body = {"reason": "NPI claimed by its owner, ANIP record checked"}
    assert (await client.post(route, json=body)).status_code == 401
    for who in ("citizen", "agent"):
        assert_forbidden(await client.post(route, json=body, headers=headers[who]))
    # The squatter cannot release it either (to move it to another account of theirs).
    assert_forbidden(await client.post(route, json=body, headers=session))
    r = await client.get(f"/api/users/{squatter.id}", headers=headers["admin"])
    assert r.json()["status"] == "active" and r.json()["npi"] == squatter.npi
    assert await db_fetch(runtime, "SELECT 1 FROM users.user_history WHERE action = 'npi_released'") == []
    assert (await client.post(route, json={"reason": ""}, headers=headers["admin"])).status_code == 400
    r = await client.post(route, json=body, headers=headers["admin"])
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "inactive"
    # The row keeps its identifiers for the record, released: the owner's account can now hold the NPI.
    owner = await make_user(runtime, "citizen", npi=squatter.npi)
    assert owner.npi == squatter.npi
    (entry,) = await db_fetch(
        runtime, "SELECT actor, old_value, new_value FROM users.user_history WHERE action = 'npi_released'"
    )
    assert entry["actor"] == headers["admin_id"]["sub"]
    assert squatter.npi in str(entry["old_value"]) and body["reason"] in str(entry["new_value"])

    # UserDeactivated reaches auth, which revokes the squatter's sessions; verifiers follow the deny list.
    async def signed_out() -> bool:
        return (await client.get("/api/auth/me", headers=session)).status_code == 401

    await wait_for(signed_out, 15, interval=0.2)
    r = await client.post("/api/auth/login", json={"email": "squatter@example.bj", "password": PASSWORD})
    assert r.status_code == 401


async def test_the_last_active_admin_cannot_be_released(
    runtime: Runtime, client: httpx.AsyncClient, headers: dict[str, dict[str, str]]
) -> None:
    admin_id, _ = await make_staff(runtime, "admin")
    r = await client.post(
        f"/api/users/{admin_id}/release-npi", json={"reason": "mistaken release"}, headers=headers["admin"]
    )
    assert r.status_code == 409 and r.json()["code"] == "last_admin", r.text
    (row,) = await db_fetch(runtime, "SELECT status FROM users.users WHERE id = $1", admin_id)
    assert row["status"] == "active"
