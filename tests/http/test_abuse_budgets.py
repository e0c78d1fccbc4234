"""SMS floods, tried as an attacker: public registration and code requests send SMS to any Benin
number, so a loop over many numbers from one address, or over one number from many addresses, or
from everywhere at once, must stop at the budgets. Counted at the SMS simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from simveb.config import Settings, with_overrides
from tests import notifications_support as fixtures
from tests.http.test_notifications import seed as seed_notifications
from tests.notifications_support import Simulators
from tests.support import wait_for
from tests.users_support import make_user, npi, phone, seed_roles

simulators, sims, smtp_server = fixtures.simulators, fixtures.sims, fixtures.smtp_server


@pytest.fixture
def settings(base_settings: Settings, sims: Simulators, smtp_server: Any) -> Settings:
    s = fixtures.notifications_settings(base_settings, sims, smtp_server[1])
    # No cooldown: the budgets alone must stop the flood.
    return with_overrides(
        s,
        auth={
            "otp_resend_cooldown_s": 0,
            "otp_budget_address_hour": 3,
            "otp_budget_identifier_day": 2,
            "otp_budget_total_day": 6,
        },
    )


@pytest.fixture
async def world(runtime: Any) -> Any:
    await seed_roles(runtime)
    await seed_notifications(runtime)
    return runtime


@asynccontextmanager
async def client_from(runtime: Any, settings: Settings, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose TCP peer is `address`."""
    from simveb.http.app import create_app

    transport = httpx.ASGITransport(app=create_app(settings, runtime=runtime), client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://simveb.test") as c:
        yield c


async def hits(client: httpx.AsyncClient, budget: str) -> float:
    text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(f'simveb_abuse_budget_hits_total{{budget="{budget}"}}'):
            return float(line.split()[-1])
    return 0.0


async def settled(sims: Simulators, expected: int) -> int:
    """Wait until `expected` SMS reached the simulator, then a little longer for any straggler."""
    await wait_for(lambda: len(sims.sms()) >= expected, timeout=30)
    await asyncio.sleep(1.0)
    return len(sims.sms())


async def test_registration_flood_over_many_numbers_from_one_address(world, settings, sims, simveb_logs) -> None:
    async with client_from(world, settings, "41.138.90.7") as c:
        before = await hits(c, "address_hour")
        answers = []
        for _ in range(10):
            body = {"npi": npi(), "phone": phone(), "last_name": "Adjovi", "first_name": "Rose", "language": "fr"}
            answers.append(await c.post("/api/users", json=body))
        assert [r.status_code for r in answers] == [202] * 3 + [429] * 7
        assert answers[-1].json()["code"] == "code_budget_spent" and int(answers[-1].headers["Retry-After"]) > 0
        assert await settled(sims, 3) == 3
        assert await hits(c, "address_hour") == before + 7
    assert "ALERT abuse budget hit: code requests address_hour" in simveb_logs.text()


async def test_code_flood_over_one_number_from_many_addresses(world, settings, sims, simveb_logs) -> None:
    victim = await make_user(world, "citizen")
    answers = []
    for i in range(8):
        async with client_from(world, settings, f"197.234.{i}.{i + 1}") as c:
            answers.append(await c.post("/api/auth/request-otp", json={"identifier": victim.phone, "purpose": "login"}))
            if i == 0:
                before = await hits(c, "identifier_day")
    assert [r.status_code for r in answers] == [202] * 2 + [429] * 6
    assert await settled(sims, 2) == 2
    assert len(sims.sms(victim.phone)) == 2
    async with client_from(world, settings, "197.234.99.99") as c:
        assert await hits(c, "identifier_day") == before + 6
    assert "ALERT abuse budget hit: code requests identifier_day" in simveb_logs.text()


async def test_a_distributed_flood_stops_at_the_daily_total(world, settings, sims, simveb_logs) -> None:
    statuses = []
    for i in range(5):  # five addresses, each under its own budget, two numbers each
        async with client_from(world, settings, f"102.64.{i}.10") as c:
            for _ in range(2):
                r = await c.post("/api/auth/password/reset-request", json={"identifier": phone()})
                statuses.append(r.status_code)
    assert statuses == [202] * 6 + [429] * 4
    assert "ALERT abuse budget hit: code requests total_day" in simveb_logs.text()
