"""The per-address sign-in throttle over HTTP, tried as the attacker: one address cycling through
many accounts (a few guesses each, under every account's own limit) spends its burst and is then
held to the refill rate, in the password and the second-factor paths; a forged X-Forwarded-For from
an untrusted peer gets no fresh bucket; clients behind a trusted proxy have buckets of their own; a
legitimate user behind the throttled address who waits Retry-After (seconds, not a lockout) gets in.

The buckets live in PostgreSQL (auth.address_buckets): a second server process on the same
database sees the same throttle (checked with a second app on the same database).
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
from tests.actors.test_auth import PASSWORD, db_fetch, make_user, runtime_with
from tests.actors.test_auth_hardening import with_totp, wrong

BURST = 6  # auth.address_burst for these tests (every account's own limit stays 5)
REFILL_S = 60.0  # slow enough that nothing flows back while a test runs, unless it waits for it
PROXY = "10.0.0.5"


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    return with_overrides(
        base_settings,
        auth={"address_burst": BURST, "address_refill_s": REFILL_S},
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


def assert_throttled(r: httpx.Response, refill_s: float = REFILL_S) -> int:
    """A throttle refusal, whose Retry-After is the wait for one token (never a lockout's minutes)."""
    assert r.status_code == 429, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "throttled"
    wait = int(r.headers["Retry-After"])
    assert 1 <= wait <= max(1, round(refill_s)), wait
    return wait


async def throttle_metric(client: httpx.AsyncClient, event: str) -> float:
    text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(f'simveb_address_throttle_total{{event="{event}"}}'):
            return float(line.split()[-1])
    return 0.0


async def throttle_audit(runtime: Runtime) -> list[Any]:
    return await db_fetch(
        runtime, "SELECT actor, subject, detail FROM auth.audit WHERE action = 'address_throttled' ORDER BY seq"
    )


async def test_one_address_cycling_accounts_is_throttled_and_forged_headers_do_not_help(
    runtime: Runtime, settings: Settings
) -> None:
    victims = [(await make_user(runtime))[1] for _ in range(8)]
    _, mine = await make_user(runtime)
    attacker = "41.138.9.9"  # not a trusted proxy: its forwarded headers are the attacker's own words
    statuses = []
    async with client_from(runtime, settings, attacker) as c:
        # Counters are process-wide (other tests raise them too): compare before and after.
        emptied, refused = await throttle_metric(c, "emptied"), await throttle_metric(c, "refused")
        for i in range(BURST + 2):
            body = {"email": victims[i % len(victims)], "password": f"guess number {i}"}
            statuses.append(await c.post("/api/auth/login", json=body, headers=forged(i)))
        # Every victim got at most one guess: no account limit was reached, the address's burst was.
        assert [r.status_code for r in statuses] == [401] * (BURST - 1) + [429] * 3
        for r in statuses[BURST - 1 :]:
            assert_throttled(r)
        # The attacker's own correct password, with yet another forged address: still refused
        # (a success never refills a bucket, and the header is not believed).
        r = await c.post("/api/auth/login", json={"email": mine, "password": PASSWORD}, headers=forged(99))
        assert_throttled(r)
        # The emptying counted once; every refusal (the emptying attempt's answer included) counted.
        assert await throttle_metric(c, "emptied") == emptied + 1
        assert await throttle_metric(c, "refused") == refused + 4
    # Another server process on the same database refuses the address too (shared, not in memory).
    async with client_from(runtime, settings, attacker) as other:
        assert_throttled(await other.post("/api/auth/login", json={"email": mine, "password": PASSWORD}))
    # Anyone else signs in, the victims included: only the address is slowed.
    async with client_from(runtime, settings, "41.138.9.10") as c:
        r = await c.post("/api/auth/login", json={"email": victims[0], "password": PASSWORD})
        assert r.status_code == 200, r.text
    # One bucket, the real peer's: none of the forged addresses got one of its own.
    buckets = await db_fetch(runtime, "SELECT address, tokens FROM auth.address_buckets")
    assert [r["address"] for r in buckets] == [attacker] and buckets[0]["tokens"] < 1
    # Nothing locked; the emptying audited once, not at each of the four refusals after it.
    assert await db_fetch(runtime, "SELECT scope FROM auth.lockouts") == []
    [entry] = await throttle_audit(runtime)
    assert entry["actor"] == "system" and entry["subject"] == f"address:{attacker}"
    assert entry["detail"]["burst"] == BURST


async def test_second_factor_guesses_across_accounts_throttle_the_client_behind_a_trusted_proxy(
    runtime: Runtime, settings: Settings
) -> None:
    """The attacker holds the passwords of several accounts with TOTP and guesses their codes, a
    few per account; behind the TLS proxy the bucket is the attacker's real address (the hop the
    proxy appended), whatever the attacker puts on the left, and spares the proxy's other clients."""
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
        assert_throttled(last)
        assert failures == BURST - 1
        # The right password now, from the throttled client, with a new forged left part: refused.
        email, totp = accounts[-1]
        r = await c.post("/api/auth/login", json={"email": email, "password": PASSWORD}, headers=headers)
        assert_throttled(r)
        # A neighbour behind the same proxy signs in with both factors.
        neighbour = {"X-Forwarded-For": "203.0.113.8"}
        r = await c.post("/api/auth/login", json={"email": email, "password": PASSWORD}, headers=neighbour)
        assert r.status_code == 200, r.text
        # The next step's code: the current one was used when TOTP was enabled.
        body = {"challenge_id": r.json()["challenge"]["challenge_id"], "code": totp.at(time.time() + 30)}
        r = await c.post("/api/auth/verify-otp", json=body, headers=neighbour)
        assert r.status_code == 200 and r.json()["tokens"]["access_token"], r.text
    buckets = await db_fetch(runtime, "SELECT address FROM auth.address_buckets")
    assert [r["address"] for r in buckets] == [real]
    assert await db_fetch(runtime, "SELECT scope FROM auth.lockouts") == []
    assert [e["subject"] for e in await throttle_audit(runtime)] == [f"address:{real}"]


async def test_a_parallel_burst_from_one_address_gets_no_more_guesses_than_the_burst(
    runtime: Runtime, settings: Settings
) -> None:
    """Thirty guesses at once at thirty accounts: the bucket of one address is taken from under a
    lock, so no more than the burst are judged (the rest are refused as throttled), however the
    requests interleave."""
    victims = [(await make_user(runtime))[1] for _ in range(30)]
    async with client_from(runtime, settings, "41.138.7.7") as c:
        replies = await asyncio.gather(
            *(c.post("/api/auth/login", json={"email": v, "password": "a wrong guess!"}) for v in victims)
        )
    codes = sorted(r.status_code for r in replies)
    assert codes.count(401) <= BURST - 1, codes
    assert set(codes) == {401, 429}
    for r in replies:
        if r.status_code == 429:
            assert_throttled(r)
    assert len(await throttle_audit(runtime)) == 1


async def test_the_attackers_loop_is_held_to_the_refill_rate_and_a_user_who_waits_gets_in(
    base_settings: Settings,
) -> None:
    """After the burst an attacker hammering from one address is judged no faster than one guess
    per refill: in N seconds, at most N / refill guesses beyond the burst (and some: a throttle,
    not a lockout). A citizen behind the same address, refused, waits Retry-After and signs in."""
    refill = 0.5
    async with runtime_with(base_settings, address_burst=BURST, address_refill_s=refill) as runtime:
        victims = [(await make_user(runtime))[1] for _ in range(40)]  # a few requests each, under 5
        _, citizen = await make_user(runtime)
        cafe = "41.138.5.5"
        refused = 0
        async with client_from(runtime, runtime.settings, cafe) as c:
            started = time.monotonic()
            i = 0
            while time.monotonic() - started < 4.0:  # N = 4 s of hammering, Retry-After ignored
                body = {"email": victims[i % len(victims)], "password": f"guess {i} !!"}
                r = await c.post("/api/auth/login", json=body)
                i += 1
                if r.status_code != 401:
                    assert_throttled(r, refill)
                    refused += 1
                await asyncio.sleep(0.02)
            elapsed = time.monotonic() - started
            # Every guess judged took a token (the ones that emptied the bucket were answered 429).
            [row] = await db_fetch(
                runtime, "SELECT count(*) AS n FROM auth.login_attempts WHERE client_ip = $1 AND NOT success", cafe
            )
            beyond = row["n"] - BURST
            assert 1 <= beyond <= elapsed / refill, (beyond, elapsed, refused)
            assert refused > 0
            # A citizen behind the same address arrives just as the attacker has emptied it again:
            # refused, told to wait a token's time, and in once that time has passed.
            while True:
                body = {"email": victims[i % len(victims)], "password": f"guess {i} !!"}
                i += 1
                if (await c.post("/api/auth/login", json=body)).status_code == 429:
                    break
            r = await c.post("/api/auth/login", json={"email": citizen, "password": PASSWORD})
            # (Under a slow machine a token may come back before the citizen's first try: then no wait.)
            if r.status_code == 429:
                await asyncio.sleep(assert_throttled(r, refill))
                r = await c.post("/api/auth/login", json={"email": citizen, "password": PASSWORD})
            assert r.status_code == 200 and r.json()["tokens"]["access_token"], r.text
