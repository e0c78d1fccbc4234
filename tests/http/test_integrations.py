"""HTTP routes of the integrations service: verify-npi, check-tax and status, against the simulator."""

from __future__ import annotations

import time

import httpx
import pytest

from simveb.config import Settings
from simveb.sandbox.xroad import fake_citizen, fake_company
from tests import xroad_support as xroad
from tests.xroad_support import Simulator, settings_for

NPI = "1234567890"
IFU = "3201234567891"
PROBLEM = "application/problem+json"


sim_url, sim = xroad.sim_url, xroad.sim


@pytest.fixture
def settings(base_settings: Settings, sim_url: str) -> Settings:
    # A long cool-down: an open breaker must still be open when the status is read.
    return settings_for(base_settings, sim_url, breaker_cooldown_s=30.0)


async def test_verify_npi_compares_the_declared_details(client: httpx.AsyncClient, auth, sim: Simulator) -> None:
    fake = fake_citizen(NPI)
    headers = auth("integrations:lookup", sub="agent-1")
    r = await client.post(
        "/api/integrations/anip/verify-npi",
        json={
            "npi": NPI,
            "last_name": fake["nom"].title(),  # case and accents do not matter
            "first_name": fake["prenoms"].split()[0].upper(),
            "birth_date": fake["date_naissance"],
        },
        headers=headers,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["verified"] is True
    assert body["matches"] == {"last_name": True, "first_name": True, "birth_date": True}
    assert body["citizen"]["npi"] == NPI and body["citizen"]["last_name"] == fake["nom"]
    assert sim.state()["last"]["anip"]["x_road_user_id"] == "agent-1"

    r = await client.post(
        "/api/integrations/anip/verify-npi",
        json={"npi": NPI, "last_name": "SOMEONE-ELSE", "birth_date": "1900-01-01"},
        headers=headers,
    )
    assert r.status_code == 200
    assert r.json()["verified"] is False
    assert r.json()["matches"] == {"last_name": False, "birth_date": False}


async def test_check_tax(client: httpx.AsyncClient, auth, sim: Simulator) -> None:
    r = await client.post("/api/integrations/dgi/check-tax", json={"ifu": IFU}, headers=auth("integrations:lookup"))
    assert r.status_code == 200, r.text
    body = r.json()
    fake = fake_company(IFU)
    assert body["company"]["name"] == fake["raison_sociale"]
    assert body["active"] is (fake["etat"] == "ACTIF")


async def test_invalid_identifiers_are_422_problems(client: httpx.AsyncClient, auth, sim: Simulator) -> None:
    for path, payload, code in [
        ("/api/integrations/anip/verify-npi", {"npi": "12345"}, "invalid_npi"),
        ("/api/integrations/anip/verify-npi", {"npi": "12345678 0"}, "invalid_npi"),
        ("/api/integrations/dgi/check-tax", {"ifu": "1234567890"}, "invalid_ifu"),
    ]:
        r = await client.post(path, json=payload, headers=auth("integrations:lookup"))
        assert r.status_code == 422
        assert r.headers["content-type"].startswith(PROBLEM)
        assert r.json()["code"] == code and r.json()["status"] == 422
    assert sim.state()["calls"] == {"anip": 0, "dgi": 0}


async def test_unknown_fields_and_npi_not_found(client: httpx.AsyncClient, auth, sim: Simulator) -> None:
    headers = auth("integrations:lookup")
    r = await client.post("/api/integrations/anip/verify-npi", json={"npi": NPI, "nmae": "x"}, headers=headers)
    assert r.status_code == 400 and r.headers["content-type"].startswith(PROBLEM)
    r = await client.post("/api/integrations/anip/verify-npi", json={"npi": "1234567800"}, headers=headers)
    assert r.status_code == 404 and r.json()["code"] == "npi_not_found"


async def test_permissions(client: httpx.AsyncClient, auth, sim: Simulator) -> None:
    for method, path in [
        ("POST", "/api/integrations/anip/verify-npi"),
        ("POST", "/api/integrations/dgi/check-tax"),
        ("GET", "/api/integrations/status"),
    ]:
        body = {"npi": NPI} if "npi" in path else {"ifu": IFU}
        r = await client.request(method, path, json=body if method == "POST" else None)
        assert r.status_code == 401 and r.headers["content-type"].startswith(PROBLEM)
        r = await client.request(method, path, json=body if method == "POST" else None, headers=auth("users:read"))
        assert r.status_code == 403 and r.json()["code"] == "missing_permission"
    # Lookup permission does not show the status, and the other way round.
    r = await client.get("/api/integrations/status", headers=auth("integrations:lookup"))
    assert r.status_code == 403
    r = await client.post("/api/integrations/dgi/check-tax", json={"ifu": IFU}, headers=auth("integrations:status"))
    assert r.status_code == 403
    assert sim.state()["calls"] == {"anip": 0, "dgi": 0}


async def test_open_breaker_is_a_fast_503_and_shows_in_status(client: httpx.AsyncClient, auth, sim: Simulator) -> None:
    lookup = auth("integrations:lookup")
    sim.behave("error", service="dgi")
    for _ in range(2):
        r = await client.post("/api/integrations/dgi/check-tax", json={"ifu": IFU}, headers=lookup)
        assert r.status_code == 503 and r.json()["code"] == "registry_error"
    started = time.perf_counter()
    r = await client.post("/api/integrations/dgi/check-tax", json={"ifu": IFU}, headers=lookup)
    assert time.perf_counter() - started < 0.1
    assert r.status_code == 503 and r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["code"] == "breaker_open" and r.json()["service"] == "dgi"
    assert int(r.headers["Retry-After"]) >= 1

    r = await client.get("/api/integrations/status", headers=auth("integrations:status"))
    assert r.status_code == 200, r.text
    services = {s["service"]: s for s in r.json()["services"]}
    assert services["dgi"]["breaker"]["state"] == "open"
    assert services["dgi"]["breaker"]["probe_at"] is not None
    assert services["dgi"]["last_change"]["to_state"] == "open"
    assert services["dgi"]["calls"] == 4 and services["dgi"]["errors"] == 4 and services["dgi"]["error_rate"] == 1.0
    assert services["dgi"]["p50_ms"] is not None and services["dgi"]["p95_ms"] is not None
    assert services["anip"]["breaker"]["state"] == "closed" and services["anip"]["calls"] == 0


async def test_simulator_is_mounted_in_development(client: httpx.AsyncClient) -> None:
    r = await client.get("/sandbox/xroad/_control")
    assert r.status_code == 200 and r.json()["simulator"] == "X-Road security server simulator"
