"""The integrations actor against the X-Road simulator over real HTTP: lookups, failures, breaker, queue."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from simveb.actors.integrations.actor import IntegrationsActor
from simveb.actors.integrations.breaker import CircuitBreaker
from simveb.actors.integrations.messages import (
    CitizenLookupCompleted,
    GetIntegrationsStatus,
    LookupCitizen,
    LookupCompany,
    ProcessRetryQueue,
)
from simveb.config import Settings
from simveb.errors import Invalid, NotFound, Unavailable
from simveb.runtime import Runtime
from simveb.sandbox.xroad import fake_citizen, fake_company
from tests import xroad_support as xroad
from tests.support import wait_for
from tests.xroad_support import Simulator, settings_for

NPI = "1234567890"
IFU = "3201234567891"
OWN_TABLES = [
    "integrations.integration_logs",
    "integrations.retry_queue",
    "integrations.breaker_transitions",
    "bus.outbox",
    "bus.inbox",
]


sim_url, sim = xroad.sim_url, xroad.sim


@pytest.fixture
def settings(base_settings: Settings, sim_url: str) -> Settings:
    return settings_for(base_settings, sim_url)


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """Only the actor under test (it asks nobody), on its emptied tables: a fraction of a full start."""
    assert settings.database.url
    con = await asyncpg.connect(settings.database.url)
    try:
        await con.execute(f"TRUNCATE {', '.join(OWN_TABLES)} RESTART IDENTITY")
    finally:
        await con.close()
    rt = Runtime(settings, actors=[IntegrationsActor])
    await rt.start(migrate_first=False, seed_if_empty=False)
    try:
        yield rt
    finally:
        await rt.stop()


async def fetch(settings: Settings, sql: str, *args: object) -> list[asyncpg.Record]:
    con = await asyncpg.connect(settings.database.url)
    try:
        return await con.fetch(sql, *args)
    finally:
        await con.close()


# --- happy paths -------------------------------------------------------------------------------------


async def test_citizen_lookup_over_xroad(runtime: Runtime, sim: Simulator) -> None:
    citizen = await runtime.bus.ask(LookupCitizen(npi=NPI, requested_by="agent-7"))
    fake = fake_citizen(NPI)
    assert (citizen.npi, citizen.last_name, citizen.first_name) == (NPI, fake["nom"], fake["prenoms"])
    assert citizen.birth_date is not None and citizen.birth_date.isoformat() == fake["date_naissance"]
    assert citizen.phone is not None and citizen.phone.startswith("+22901") and citizen.nationality == "BENINOISE"
    last = sim.state()["last"]["anip"]
    assert last["service_id"] == "BJ/GOV/ANIP/RNP/CITIZEN_BY_NPI_LITE"
    assert last["x_road_client"] == "BJ/GOV/ANATT/SIMVEB"
    assert uuid.UUID(last["x_road_id"]) and last["x_road_user_id"] == "agent-7"
    # Deterministic: the same NPI is the same person.
    assert await runtime.bus.ask(LookupCitizen(npi=NPI)) == citizen


async def test_company_lookup_over_xroad(runtime: Runtime, sim: Simulator) -> None:
    company = await runtime.bus.ask(LookupCompany(ifu=IFU))
    fake = fake_company(IFU)
    assert (company.ifu, company.name, company.rccm) == (IFU, fake["raison_sociale"], fake["rccm"])
    assert company.tax_status in ("active", "suspended", "closed")
    last = sim.state()["last"]["dgi"]
    assert (last["service_id"], last["path"]) == ("BJ/GOV/DGI/CFISC/DETAIL-IFU", "V1")
    assert last["x_road_user_id"] is None


async def test_every_xroad_code_comes_from_settings(settings: Settings, sim: Simulator) -> None:
    custom = settings_for(
        settings,
        settings.integrations.xroad_url.removesuffix("/sandbox/xroad"),
        xroad_instance="BJ-TEST",
        client_member_code="ANATT 2",
        client_subsystem="SIM/VEB",
        anip_member_code="ANIP2",
        anip_subsystem="RNP2",
        anip_service="CITIZEN_V2",
        anip_path="lite/v2",
    )
    async with Runtime(custom, actors=[IntegrationsActor], graph={"integrations": set()}) as rt:
        assert rt.bus is not None
        await rt.bus.ask(LookupCitizen(npi=NPI))
    last = sim.state()["last"]["anip"]
    assert last["service_id"] == "BJ-TEST/GOV/ANIP2/RNP2/CITIZEN_V2" and last["path"] == "lite/v2"
    # Each part percent-encoded: a slash inside a part cannot be taken for a separator.
    assert last["x_road_client"] == "BJ-TEST/GOV/ANATT%202/SIM%2FVEB"


async def test_unknown_identifiers_are_not_found(runtime: Runtime, sim: Simulator) -> None:
    for npi in ("1234567800", "1234567801"):  # simulator: 404, and an empty 200 answer
        with pytest.raises(NotFound) as err:
            await runtime.bus.ask(LookupCitizen(npi=npi))
        assert err.value.code == "npi_not_found"
    with pytest.raises(NotFound) as err:
        await runtime.bus.ask(LookupCompany(ifu="3201234567800"))
    assert err.value.code == "ifu_not_found"
    assert sim.calls("anip") == 2, "not found is an answer: never retried"
    status = await runtime.bus.ask(GetIntegrationsStatus())
    anip = next(s for s in status.services if s.service == "anip")
    assert anip.breaker.state == "closed" and anip.errors == 0 and anip.calls == 2


async def test_invalid_identifiers_are_refused_before_any_call(runtime: Runtime, sim: Simulator) -> None:
    for npi in ["12345", "12345678901", "12345abcde", "١٢٣٤٥٦٧٨٩٠", " 1234567890", ""]:
        with pytest.raises(Invalid) as err:
            await runtime.bus.ask(LookupCitizen(npi=npi))
        assert err.value.status == 422 and err.value.code == "invalid_npi", npi
    for ifu in ["320123456789", "32012345678901", "320123456789X"]:
        with pytest.raises(Invalid) as err:
            await runtime.bus.ask(LookupCompany(ifu=ifu))
        assert err.value.code == "invalid_ifu", ifu
    assert sim.state()["calls"] == {"anip": 0, "dgi": 0}


# --- failures ----------------------------------------------------------------------------------------


async def test_timeout_is_retried_then_unavailable(runtime: Runtime, sim: Simulator, settings: Settings) -> None:
    sim.behave("slow", delay_ms=800, service="anip")  # read timeout is 0.3 s
    started = time.monotonic()
    with pytest.raises(Unavailable) as err:
        await runtime.bus.ask(LookupCitizen(npi=NPI))
    assert err.value.code == "registry_timeout" and err.value.status == 503
    assert time.monotonic() - started < 2.0
    assert sim.calls("anip") == 1 + settings.integrations.retries
    rows = await fetch(settings, "SELECT outcome, attempt FROM integrations.integration_logs ORDER BY id")
    assert [(r["outcome"], r["attempt"]) for r in rows] == [("timeout", 1), ("timeout", 2), ("timeout", 3)]


async def test_server_error_retries_are_bounded(runtime: Runtime, sim: Simulator, settings: Settings) -> None:
    sim.behave("error", service="anip")
    with pytest.raises(Unavailable) as err:
        await runtime.bus.ask(LookupCitizen(npi=NPI))
    assert err.value.code == "registry_error"
    assert sim.calls("anip") == 3, "one call plus two retries, no more"
    rows = await fetch(settings, "SELECT outcome, http_status FROM integrations.integration_logs")
    assert {(r["outcome"], r["http_status"]) for r in rows} == {("server_error", 500)}


async def test_transient_failure_recovers_within_the_retries(runtime: Runtime, sim: Simulator) -> None:
    sim.behave("error", times=2, service="dgi")
    company = await runtime.bus.ask(LookupCompany(ifu=IFU))
    assert company.ifu == IFU
    assert sim.calls("dgi") == 3


async def test_malformed_body_is_bad_gateway_and_not_retried(runtime: Runtime, sim: Simulator) -> None:
    sim.behave("garbage", service="anip")
    with pytest.raises(Unavailable) as err:
        await runtime.bus.ask(LookupCitizen(npi=NPI))
    assert err.value.code == "registry_bad_response"
    assert sim.calls("anip") == 1


async def test_xroad_error_header(runtime: Runtime, sim: Simulator, settings: Settings) -> None:
    sim.behave("xroad_error", service="anip")  # Server.ServerProxy.ServiceFailed: may pass, retried
    with pytest.raises(Unavailable) as err:
        await runtime.bus.ask(LookupCitizen(npi=NPI))
    assert err.value.code == "xroad_error" and "Server.ServerProxy.ServiceFailed" in err.value.detail
    assert sim.calls("anip") == 3
    sim.behave("xroad_error", service="dgi", error_type="Client.AccessDenied")  # our fault: not retried
    with pytest.raises(Unavailable) as err:
        await runtime.bus.ask(LookupCompany(ifu=IFU))
    assert err.value.code == "xroad_error"
    assert sim.calls("dgi") == 1
    rows = await fetch(settings, "SELECT DISTINCT error_code FROM integrations.integration_logs")
    assert {r["error_code"] for r in rows} == {"Server.ServerProxy.ServiceFailed", "Client.AccessDenied"}


async def test_unreachable_security_server(base_settings: Settings, sim: Simulator) -> None:
    custom = settings_for(base_settings, "http://127.0.0.1:9", retries=1)  # nothing listens on port 9
    async with Runtime(custom, actors=[IntegrationsActor], graph={"integrations": set()}) as rt:
        assert rt.bus is not None
        with pytest.raises(Unavailable) as err:
            await rt.bus.ask(LookupCitizen(npi=NPI))
    assert err.value.code == "registry_unreachable"


# --- circuit breaker ---------------------------------------------------------------------------------


async def test_breaker_opens_fails_fast_half_opens_and_closes(
    runtime: Runtime, sim: Simulator, settings: Settings
) -> None:
    bus = runtime.bus
    assert bus is not None
    sim.behave("error", service="anip")
    for _ in range(2):  # 3 failed calls, then the 4th opens the breaker and stops the retries
        with pytest.raises(Unavailable):
            await bus.ask(LookupCitizen(npi=NPI))
    assert sim.calls("anip") == 4

    started = time.perf_counter()
    with pytest.raises(Unavailable) as err:
        await bus.ask(LookupCitizen(npi=NPI))
    assert err.value.code == "breaker_open" and err.value.headers["Retry-After"] == "1"
    assert time.perf_counter() - started < 0.05, "an open breaker answers at once"
    assert sim.calls("anip") == 4, "no network call while open"
    # One breaker per registry: DGI is unaffected.
    assert (await bus.ask(LookupCompany(ifu=IFU))).ifu == IFU

    # Half-open: after the cool-down one probe goes; it fails, so the breaker opens again.
    await wait_for(lambda: _breaker(bus, "anip", "half_open"), timeout=2)
    with pytest.raises(Unavailable) as err:
        await bus.ask(LookupCitizen(npi=NPI))
    assert err.value.code == "registry_error" and sim.calls("anip") == 5, "exactly one probe, no retry"
    with pytest.raises(Unavailable) as err:
        await bus.ask(LookupCitizen(npi=NPI))
    assert err.value.code == "breaker_open"

    # The registry is back: the next probe succeeds and closes the breaker.
    sim.behave("normal")
    await wait_for(lambda: _breaker(bus, "anip", "half_open"), timeout=2)
    assert (await bus.ask(LookupCitizen(npi=NPI))).npi == NPI
    assert await _breaker(bus, "anip", "closed")

    rows = await fetch(
        settings, "SELECT from_state, to_state FROM integrations.breaker_transitions WHERE service = 'anip' ORDER BY id"
    )
    assert [(r["from_state"], r["to_state"]) for r in rows] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    status = await bus.ask(GetIntegrationsStatus())
    anip = next(s for s in status.services if s.service == "anip")
    assert anip.last_change is not None and anip.last_change.to_state == "closed"
    assert anip.breaker.rejected == 2


async def test_half_open_lets_a_single_probe_through(runtime: Runtime, sim: Simulator) -> None:
    import asyncio

    bus = runtime.bus
    assert bus is not None
    sim.behave("error", service="anip")
    for _ in range(2):
        with pytest.raises(Unavailable):
            await bus.ask(LookupCitizen(npi=NPI))
    sim.behave("slow", delay_ms=200, service="anip")
    await wait_for(lambda: _breaker(bus, "anip", "half_open"), timeout=2)
    calls_before = sim.calls("anip")
    results = await asyncio.gather(*(bus.ask(LookupCitizen(npi=NPI)) for _ in range(4)), return_exceptions=True)
    assert sum(1 for r in results if not isinstance(r, Exception)) == 1
    assert all(isinstance(r, Unavailable) and r.code == "breaker_open" for r in results if isinstance(r, Exception))
    assert sim.calls("anip") == calls_before + 1


async def _breaker(bus, service: str, state: str) -> bool:
    status = await bus.ask(GetIntegrationsStatus())
    return next(s for s in status.services if s.service == service).breaker.state == state


# --- retry queue -------------------------------------------------------------------------------------


async def test_non_urgent_lookup_is_queued_and_completed_later(
    runtime: Runtime, sim: Simulator, settings: Settings
) -> None:
    sim.behave("error", service="anip")
    with pytest.raises(Unavailable) as err:
        await runtime.bus.ask(LookupCitizen(npi=NPI, urgent=False, requested_by="user-1"))
    assert err.value.code == "lookup_queued" and err.value.extra["reason"] == "registry_error"
    queued = await fetch(settings, "SELECT service, identifier, requested_by FROM integrations.retry_queue")
    assert [tuple(r) for r in queued] == [("anip", NPI, "user-1")]
    with pytest.raises(Unavailable):  # asking again does not queue twice
        await runtime.bus.ask(LookupCitizen(npi=NPI, urgent=False))
    assert len(await fetch(settings, "SELECT 1 FROM integrations.retry_queue")) == 1

    sim.behave("normal")

    async def done() -> bool:
        return not await fetch(settings, "SELECT 1 FROM integrations.retry_queue")

    await wait_for(done, timeout=5)
    events = await fetch(
        settings, "SELECT payload::text AS p FROM bus.outbox WHERE type = $1", CitizenLookupCompleted.__name__
    )
    assert len(events) == 1 and '"outcome":"found"' in events[0]["p"].replace(" ", "")
    assert '"requested_by":"user-1"' in events[0]["p"].replace(" ", "")
    origins = await fetch(settings, "SELECT DISTINCT origin FROM integrations.integration_logs WHERE outcome = 'ok'")
    assert [r["origin"] for r in origins] == ["queue"]


async def test_queued_lookup_is_abandoned_after_max_attempts(
    runtime: Runtime, sim: Simulator, settings: Settings
) -> None:
    sim.behave("error", service="dgi")
    with pytest.raises(Unavailable):
        await runtime.bus.ask(LookupCompany(ifu=IFU, urgent=False))

    async def dead() -> list[asyncpg.Record]:
        return await fetch(settings, "SELECT attempts FROM integrations.retry_queue WHERE dead_at IS NOT NULL")

    rows = await wait_for(dead, timeout=8)
    assert rows[0]["attempts"] == settings.integrations.queue_max_attempts
    events = await fetch(settings, "SELECT payload::text AS p FROM bus.outbox WHERE type = 'CompanyLookupCompleted'")
    assert len(events) == 1 and "abandoned" in events[0]["p"]
    status = await runtime.bus.ask(GetIntegrationsStatus())
    dgi = next(s for s in status.services if s.service == "dgi")
    assert (dgi.queued, dgi.abandoned) == (0, 1)


async def test_urgent_lookup_is_never_queued(runtime: Runtime, sim: Simulator, settings: Settings) -> None:
    sim.behave("error", service="anip")
    with pytest.raises(Unavailable) as err:
        await runtime.bus.ask(LookupCitizen(npi=NPI))
    assert err.value.code == "registry_error"
    assert not await fetch(settings, "SELECT 1 FROM integrations.retry_queue")
    assert await runtime.bus.ask(ProcessRetryQueue()) == 0


# --- logs hold no personal data ----------------------------------------------------------------------


async def test_logs_hold_hashed_identifiers_only(
    runtime: Runtime, sim: Simulator, settings: Settings, simveb_logs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, third-party ones included (httpx logs URLs)
    citizen = await runtime.bus.ask(LookupCitizen(npi=NPI))
    sim.behave("error", times=1, service="dgi")
    await runtime.bus.ask(LookupCompany(ifu=IFU))
    rows = await fetch(settings, "SELECT * FROM integrations.integration_logs ORDER BY id")
    assert len(rows) == 3
    dump = repr([dict(r) for r in rows])
    for secret in (NPI, IFU, citizen.last_name, citizen.first_name):
        assert secret not in dump
    assert rows[0]["identifier_hash"] == hashlib.sha256(NPI.encode()).hexdigest()
    assert rows[1]["identifier_hash"] == rows[2]["identifier_hash"] == hashlib.sha256(IFU.encode()).hexdigest()
    assert {r["service"] for r in rows} == {"anip", "dgi"}
    assert all(isinstance(r["x_road_id"], uuid.UUID) and r["duration_ms"] >= 0 for r in rows)
    assert [r["outcome"] for r in rows] == ["ok", "server_error", "ok"]
    assert len({r["x_road_id"] for r in rows}) == 3, "a fresh X-Road-Id per call"
    text = simveb_logs.text() + caplog.text
    assert NPI not in text and IFU not in text and citizen.last_name not in text


async def test_hash_key_makes_the_hash_an_hmac(base_settings: Settings, sim_url: str, sim: Simulator) -> None:
    custom = settings_for(base_settings, sim_url, hash_key="pepper")
    async with Runtime(custom, actors=[IntegrationsActor], graph={"integrations": set()}) as rt:
        assert rt.bus is not None
        await rt.bus.ask(LookupCitizen(npi="5556667778"))
    rows = await fetch(custom, "SELECT identifier_hash FROM integrations.integration_logs ORDER BY id DESC LIMIT 1")
    assert rows[0]["identifier_hash"] == hmac.new(b"pepper", b"5556667778", hashlib.sha256).hexdigest()


async def test_status_reports_error_rate_and_latency(runtime: Runtime, sim: Simulator) -> None:
    await runtime.bus.ask(LookupCitizen(npi=NPI))
    sim.behave("error", times=1, service="anip")
    await runtime.bus.ask(LookupCitizen(npi=NPI))
    status = await runtime.bus.ask(GetIntegrationsStatus())
    anip, dgi = sorted(status.services, key=lambda s: s.service)
    assert (anip.calls, anip.errors, anip.error_rate) == (3, 1, round(1 / 3, 4))
    assert anip.p50_ms is not None and anip.p95_ms is not None and anip.p95_ms >= anip.p50_ms
    assert anip.breaker.state == "closed" and anip.breaker.recent_failures == 1
    assert (dgi.calls, dgi.error_rate, dgi.p50_ms) == (0, 0.0, None)


def test_breaker_counts_failures_inside_its_window_only() -> None:
    now = [0.0]
    breaker = CircuitBreaker("anip", failures=3, window_s=10.0, cooldown_s=5.0, clock=lambda: now[0])
    for t in (0.0, 4.0, 11.0):  # the first failure has left the window when the third comes
        now[0] = t
        breaker.failed()
    assert breaker.state == "closed" and breaker.status().recent_failures == 2
    breaker.succeeded()  # a success while closed does not wipe the window
    now[0] = 12.0
    breaker.failed()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 17.0
    assert breaker.allow() and breaker.state == "half_open"
    assert not breaker.allow(), "one probe at a time"
    breaker.released()  # the probe's caller went away without a verdict
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.status().recent_failures == 0
