"""Client addresses behind proxies, tried as an attacker: a forged X-Forwarded-For from an untrusted
peer does not escape the rate limit, clients behind a trusted proxy are limited separately, and a
shared limit store that is down neither fails nor stalls requests (local limits, and a metric)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from simveb.config import Settings, with_overrides
from simveb.http.forwarded import ClientAddresses
from tests.support import free_port

ROUTE = "/api/auth/.well-known/jwks.json"  # public, cheap, behind the rate limit


@asynccontextmanager
async def client_from(runtime: Any, settings: Settings, peer: str) -> AsyncIterator[httpx.AsyncClient]:
    from simveb.http.app import create_app

    transport = httpx.ASGITransport(app=create_app(settings, runtime=runtime), client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://simveb.test") as c:
        yield c


def limited(settings: Settings, **server: Any) -> Settings:
    return with_overrides(settings, ratelimit={"per_minute": 5}, server=server)


def test_right_most_untrusted_hop() -> None:
    addresses = ClientAddresses(["10.0.0.0/8", "2001:db8::/32"])
    h = [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.9, 10.1.1.1")]
    assert addresses.resolve("10.0.0.2", h) == "203.0.113.9"
    assert addresses.resolve("41.1.1.1", h) == "41.1.1.1"  # the peer is no proxy: headers ignored
    forwarded = [(b"forwarded", b'for=6.6.6.6, for="[2001:db8::7]:4711";proto=https, for=198.51.100.4:80')]
    assert addresses.resolve("2001:db8::1", forwarded) == "198.51.100.4"
    assert addresses.resolve("10.0.0.2", [(b"x-forwarded-for", b"6.6.6.6, not-an-ip")]) == "10.0.0.2"
    assert ClientAddresses([]).resolve("10.0.0.2", h) == "10.0.0.2"


async def test_forged_forwarded_for_from_an_untrusted_peer_is_ignored(runtime, settings) -> None:
    s = limited(settings, trusted_proxies=["10.0.0.0/8"])
    async with client_from(runtime, s, "41.138.1.1") as c:
        codes = [
            (await c.get(ROUTE, headers={"X-Forwarded-For": f"198.51.100.{i}", "Forwarded": f"for=192.0.2.{i}"}))
            for i in range(8)
        ]
    assert [r.status_code for r in codes] == [200] * 5 + [429] * 3
    assert int(codes[-1].headers["Retry-After"]) > 0


async def test_clients_behind_a_trusted_proxy_are_limited_separately(runtime, settings) -> None:
    s = limited(settings, trusted_proxies=["10.0.0.0/8"])
    async with client_from(runtime, s, "10.0.0.5") as proxy:
        # Client A rotates a forged left part; the proxy appends A's real address on the right.
        a = [
            (await proxy.get(ROUTE, headers={"X-Forwarded-For": f"1.1.1.{i}, 203.0.113.1"})).status_code
            for i in range(7)
        ]
        b = [(await proxy.get(ROUTE, headers={"X-Forwarded-For": "203.0.113.2"})).status_code for _ in range(5)]
        c = (await proxy.get(ROUTE, headers={"Forwarded": "for=203.0.113.3"})).status_code
    assert a == [200] * 5 + [429] * 2
    assert b == [200] * 5 and c == 200


async def test_limit_store_down_serves_with_local_limits_and_says_so(runtime, settings) -> None:
    closed = free_port()  # nothing listens there
    s = with_overrides(limited(settings), redis={"url": f"redis://127.0.0.1:{closed}/0"})
    async with client_from(runtime, s, "41.138.2.2") as c:
        started = time.monotonic()
        codes = [(await c.get(ROUTE)).status_code for _ in range(8)]
        elapsed = time.monotonic() - started
        metrics = (await c.get("/metrics")).text
    assert codes == [200] * 5 + [429] * 3  # still limited, by the local counts
    assert elapsed < 3.0, f"8 requests took {elapsed:.2f} s with the store down"
    fallback = [line for line in metrics.splitlines() if line.startswith("simveb_ratelimit_local_fallback_total")]
    assert fallback and float(fallback[0].split()[-1]) >= 8
