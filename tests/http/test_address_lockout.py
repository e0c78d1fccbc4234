"""The per-address sign-in lockout over HTTP, tried as the attacker: one address cycling through many
accounts (a few guesses each, under every account's own limit) is locked across accounts, in the
password and the second-factor paths; a forged X-Forwarded-For from an untrusted peer neither
escapes nor resets it; clients behind a trusted proxy are counted on their own address.

The counts live in PostgreSQL (auth.login_attempts, auth.lockouts): a second server process on
the same database sees the same lockout (checked with a second app on the same database).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from simveb.config import Settings, with_overrides
from simveb.runtime import Runtime
from tests.actors.test_auth import PASSWORD, db_fetch, make_user
from tests.actors.test_auth_hardening import with_totp, wrong

LIMIT = 6  # auth.address_max_failures for these tests (every account's own limit stays 5)
PROXY = "10.0.0.5"


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    return with_overrides(
        base_settings,
        auth={"address_max_failures": LIMIT, "address_lockout_s": 120},
        server={"trusted_proxies": ["10.0.0.0/8"]},
    )


@contextlib.asynccontextmanager
async def client_from(runtime: Runtime, settings: Settings, peer: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose TCP peer is `peer` (each call builds a new app: another server process)."""
    from simveb.http.app import create_app

    transport = httpx.ASGITransport(app=create_app(settings, runtime=runtime), client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://simveb.test") as c:
        yield c


def forged(i: int) -> dict[str, str]:
    """A different made-up client address at every request, in both header forms."""
    return {"X-Forwarded-For": f"198.51.100.{i}", "Forwarded": f"for=192.0.2.{i}"}


def assert_locked(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "locked_out"
    assert int(r.headers["Retry-After"]) > 0


async def test_one_address_cycling_accounts_is_locked_and_forged_headers_do_not_help(
    runtime: Runtime, settings: Settings
) -> None:
    victims = [(await make_user(runtime))[1] for _ in range(8)]
    _, mine = await make_user(runtime)
    attacker = "41.138.9.9"  # not a trusted proxy: its forwarded headers are the attacker's own words
    statuses = []
    async with client_from(runtime, settings, attacker) as c:
        for i in range(LIMIT + 2):
            body = {"email": victims[i % len(victims)], "password": f"guess number {i}"}
            statuses.append(await c.post("/api/auth/login", json=body, headers=forged(i)))
        # Every victim got at most one guess: no account limit was reached, the address's was.
        assert [r.status_code for r in statuses] == [401] * (LIMIT - 1) + [429] * 3
        for r in statuses[LIMIT - 1 :]:
            assert_locked(r)
        # The attacker's own correct password, with yet another forged address: still locked
        # (a success never resets an address, and the header is not believed).
        r = await c.post("/api/auth/login", json={"email": mine, "password": PASSWORD}, headers=forged(99))
        assert_locked(r)
    # Another server process on the same database refuses the address too (shared, not in memory).
    async with client_from(runtime, settings, attacker) as other:
        assert_locked(await other.post("/api/auth/login", json={"email": mine, "password": PASSWORD}))
    # Anyone else signs in, the victims included: only the address is locked.
    async with client_from(runtime, settings, "41.138.9.10") as c:
        r = await c.post("/api/auth/login", json={"email": victims[0], "password": PASSWORD})
        assert r.status_code == 200, r.text
    rows = await db_fetch(runtime, "SELECT scope, key FROM auth.lockouts")
    assert [(r["scope"], r["key"]) for r in rows] == [("address", attacker)]


async def test_second_factor_guesses_across_accounts_lock_the_client_behind_a_trusted_proxy(
    runtime: Runtime, settings: Settings
) -> None:
    """The attacker holds the passwords of several accounts with TOTP and guesses their codes, a
    few per account; behind the TLS proxy the lockout keys on the attacker's real address (the hop
    the proxy appended), whatever the attacker puts on the left, and spares the proxy's other clients."""
    accounts: list[tuple[str, Any]] = []
    for _ in range(3):
        _, email, totp = await with_totp(runtime)
        accounts.append((email, totp))
    real = "203.0.113.7"
    headers = {"X-Forwarded-For": f"6.6.6.6, {real}"}
    failures = 0
    last = None
    async with client_from(runtime, settings, PROXY) as c:
        for email, totp in accounts:
            r = await c.post("/api/auth/login", json={"email": email, "password": PASSWORD}, headers=headers)
            if r.status_code == 429:
                last = r
                break
            assert r.status_code == 200 and r.json()["status"] == "two_factor_required", r.text
            challenge = r.json()["challenge"]["challenge_id"]
            for _ in range(3):  # under each account's second-factor limit (5)
                last = await c.post(
                    "/api/auth/verify-otp", json={"challenge_id": challenge, "code": wrong(totp)}, headers=headers
                )
                if last.status_code == 429:
                    break
                assert last.status_code == 401, last.text
                failures += 1
            if last.status_code == 429:
                break
        assert last is not None
        assert_locked(last)
        assert failures == LIMIT - 1
        # The right code now, from the locked client, with a new forged left part: refused.
        email, totp = accounts[-1]
        r = await c.post("/api/auth/login", json={"email": email, "password": PASSWORD}, headers=headers)
        assert_locked(r)
        # A neighbour behind the same proxy signs in with both factors.
        neighbour = {"X-Forwarded-For": "203.0.113.8"}
        r = await c.post("/api/auth/login", json={"email": email, "password": PASSWORD}, headers=neighbour)
        assert r.status_code == 200, r.text
        # The next step's code: the current one was used when TOTP was enabled.
        body = {"challenge_id": r.json()["challenge"]["challenge_id"], "code": totp.at(time.time() + 30)}
        r = await c.post("/api/auth/verify-otp", json=body, headers=neighbour)
        assert r.status_code == 200 and r.json()["tokens"]["access_token"], r.text
    rows = await db_fetch(runtime, "SELECT scope, key FROM auth.lockouts")
    assert [(r["scope"], r["key"]) for r in rows] == [("address", real)]


async def test_a_parallel_burst_from_one_address_gets_no_more_guesses_than_the_limit(
    runtime: Runtime, settings: Settings
) -> None:
    """Thirty guesses at once at thirty accounts: the count of one address is serialised, so no more
    than the limit are judged (the rest are refused as locked), however the requests interleave."""
    victims = [(await make_user(runtime))[1] for _ in range(30)]
    async with client_from(runtime, settings, "41.138.7.7") as c:
        replies = await asyncio.gather(
            *(c.post("/api/auth/login", json={"email": v, "password": "a wrong guess!"}) for v in victims)
        )
    codes = sorted(r.status_code for r in replies)
    assert codes.count(401) <= LIMIT - 1, codes
    assert set(codes) == {401, 429}
