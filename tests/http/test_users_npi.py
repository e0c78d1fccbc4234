"""NPI verification through the integrations actor against the X-Road simulator over real HTTP:
the happy path, a mismatch (409 naming the fields), an unknown NPI, and a registry that is down
(open breaker -> fast 503, then recovery after the cool-down)."""

from __future__ import annotations

import asyncio
import re
import time
import unicodedata
from datetime import date

import httpx
import pytest

from simveb.actors.auth.messages import RequestOtp
from simveb.actors.notifications.messages import SeedNotifications
from simveb.config import Settings, with_overrides
from simveb.sandbox.xroad import fake_citizen
from tests import xroad_support as xroad
from tests.support import wait_for
from tests.users_support import make_user, npi, phone, seed_roles
from tests.xroad_support import settings_for

AGENT = ("users:read", "users:kyc")


sim_url, sim = xroad.sim_url, xroad.sim


@pytest.fixture
def settings(base_settings: Settings, sim_url: str) -> Settings:
    # One simulator server plays ANIP behind X-Road and the SMS gateway.
    return with_overrides(settings_for(base_settings, sim_url), notifications={"sms_url": f"{sim_url}/sandbox/sms"})


def _known_npi() -> str:
    """An NPI the simulator knows (those ending in 00 or 01 are unknown)."""
    while True:
        value = npi()
        if value[-2:] not in ("00", "01"):
            return value


def _plain(text: str) -> str:
    """The name as a person might type it: lower case, without accents."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()


async def _citizen_like_registry(runtime, **overrides):
    """A citizen whose profile matches the simulated registry (typed without accents or capitals)."""
    value = overrides.pop("npi", None) or _known_npi()
    rec = fake_citizen(value)
    fields = {
        "npi": value,
        "last_name": _plain(rec["nom"]),
        "first_name": _plain(rec["prenoms"]),
        **overrides,
    }
    user = await make_user(runtime, "citizen", **fields)
    return user, rec


async def _set_birth_date(client, user, headers, born: str) -> None:
    r = await client.put(f"/api/users/{user.id}/profile", json={"birth_date": born}, headers=headers)
    assert r.status_code == 200, r.text


async def test_npi_verification_happy_path_then_kyc(runtime, client, auth, sim):
    await seed_roles(runtime)
    user, rec = await _citizen_like_registry(runtime)
    me = auth(sub=str(user.id), roles=("citizen",))
    await _set_birth_date(client, user, me, rec["date_naissance"])
    r = await client.post(f"/api/users/{user.id}/verify-npi", headers=me)
    assert r.status_code == 200, r.text
    assert r.json()["kyc_status"] == "npi_verified"
    assert sim.calls("anip") == 1
    profile = (await client.get(f"/api/users/{user.id}/profile", headers=me)).json()
    assert profile["sex"] == rec["sexe"]  # filled from the registry when it was missing
    # Verifying again asks the registry nothing.
    r = await client.post(f"/api/users/{user.id}/verify-npi", headers=me)
    assert r.status_code == 200 and sim.calls("anip") == 1
    # The verified names are locked for the user.
    r = await client.put(f"/api/users/{user.id}/profile", json={"first_name": "Someone"}, headers=me)
    assert r.status_code == 409 and r.json()["code"] == "identity_locked"
    agent = auth(*AGENT, sub="00000000-0000-0000-0000-00000000a9e7")
    r = await client.post(f"/api/users/{user.id}/kyc", json={"note": "documents seen"}, headers=agent)
    assert r.status_code == 200 and r.json()["kyc_status"] == "kyc_verified"
    async with runtime.db.pool.acquire() as con:
        identity = await con.fetchrow(
            "SELECT source, verified_at FROM users.identities WHERE user_id = $1 AND kind = 'npi'", user.id
        )
    assert identity["source"] == "anip" and identity["verified_at"] is not None


async def test_mismatch_is_409_naming_the_fields_to_staff_only(runtime, client, auth, sim):
    await seed_roles(runtime)
    user, rec = await _citizen_like_registry(runtime, first_name="Wrongname")
    me = auth(sub=str(user.id))
    agent = auth(*AGENT, sub="00000000-0000-0000-0000-00000000a9e7")
    born = date.fromisoformat(rec["date_naissance"]).replace(year=1949).isoformat()
    await _set_birth_date(client, user, me, born)
    # The citizen learns only that it does not match (no field names: they would guide a probe).
    r = await client.post(f"/api/users/{user.id}/verify-npi", headers=me)
    assert r.status_code == 409 and r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == "npi_mismatch" and "fields" not in body
    assert "first_name" not in r.text and "birth_date" not in r.text
    # An agent sees which fields differ.
    r = await client.post(f"/api/users/{user.id}/verify-npi", headers=agent)
    body = r.json()
    assert r.status_code == 409 and body["code"] == "npi_mismatch" and body["fields"] == ["first_name", "birth_date"]
    # The registry's values are never disclosed.
    assert rec["prenoms"] not in r.text and rec["date_naissance"] not in r.text
    assert (await client.get(f"/api/users/{user.id}", headers=me)).json()["kyc_status"] == "unverified"
    # An unknown NPI is a mismatch of the NPI itself (named to staff only).
    unknown, _ = await _citizen_like_registry(runtime, npi=npi()[:8] + "00")
    them = auth(sub=str(unknown.id))
    r = await client.post(f"/api/users/{unknown.id}/verify-npi", headers=them)
    assert r.status_code == 409 and "fields" not in r.json()
    r = await client.post(f"/api/users/{unknown.id}/verify-npi", headers=agent)
    assert r.status_code == 409 and r.json()["fields"] == ["npi"]


async def test_a_birth_date_probe_hits_the_limit_and_never_learns_which_field_differs(runtime, client, auth, sim):
    """The attacker owns the account (or a stolen token) and tries birth dates one after another."""
    await seed_roles(runtime)
    user, rec = await _citizen_like_registry(runtime)
    me = auth(sub=str(user.id))
    real = date.fromisoformat(rec["date_naissance"])
    limit = runtime.settings.users.npi_verify_max_attempts
    answers = []
    for year in range(1940, 1940 + limit + 3):
        guess = real.replace(year=year) if year != real.year else real.replace(year=year - 100)
        await _set_birth_date(client, user, me, guess.isoformat())
        r = await client.post(f"/api/users/{user.id}/verify-npi", headers=me)
        answers.append(r)
    codes = [r.status_code for r in answers]
    assert codes[:limit] == [409] * limit and set(codes[limit:]) == {429}
    # Every refusal reads the same: nothing says which field is wrong.
    assert len({r.json()["detail"] for r in answers[:limit]}) == 1
    assert all("birth_date" not in r.text and "fields" not in r.json() for r in answers)
    # Even the right date is refused now: the probe cannot confirm a hit.
    await _set_birth_date(client, user, me, rec["date_naissance"])
    r = await client.post(f"/api/users/{user.id}/verify-npi", headers=me)
    assert r.status_code == 429 and r.json()["code"] == "too_many_attempts"
    # An agent can still verify the account.
    agent = auth(*AGENT, sub="00000000-0000-0000-0000-00000000a9e7")
    r = await client.post(f"/api/users/{user.id}/verify-npi", headers=agent)
    assert r.status_code == 200 and r.json()["kyc_status"] == "npi_verified"


async def test_someone_else_cannot_verify_my_npi(runtime, client, auth, sim):
    await seed_roles(runtime)
    user, _ = await _citizen_like_registry(runtime)
    other, _ = await _citizen_like_registry(runtime)
    r = await client.post(f"/api/users/{user.id}/verify-npi", headers=auth(sub=str(other.id)))
    assert r.status_code == 404
    assert sim.calls("anip") == 0


async def test_registry_down_is_a_fast_503_then_recovers(runtime, client, auth, sim, settings):
    await seed_roles(runtime)
    user, rec = await _citizen_like_registry(runtime)
    me = auth(sub=str(user.id))
    await _set_birth_date(client, user, me, rec["date_naissance"])
    sim.behave("error", service="anip")
    for _ in range(2):  # retries included, these failures open the breaker
        r = await client.post(f"/api/users/{user.id}/verify-npi", headers=me)
        assert r.status_code == 503, r.text
    started = time.perf_counter()
    r = await client.post(f"/api/users/{user.id}/verify-npi", headers=me)
    elapsed = time.perf_counter() - started
    assert r.status_code == 503 and r.json()["code"] == "breaker_open"
    assert elapsed < 0.2, elapsed
    assert (await client.get(f"/api/users/{user.id}", headers=me)).json()["kyc_status"] == "unverified"
    # The registry is back; after the cool-down a probe goes through and the verification works.
    sim.behave("normal")
    await asyncio.sleep(settings.integrations.breaker_cooldown_s + 0.1)
    r = await client.post(f"/api/users/{user.id}/verify-npi", headers=me)
    assert r.status_code == 200, r.text
    assert r.json()["kyc_status"] == "npi_verified"


async def test_citizen_registers_gets_the_code_by_sms_verifies_npi_and_sees_only_themselves(
    runtime, client, sim, sim_url
):
    """The issue's acceptance path, over HTTP only, with the registry and SMS gateway simulated."""
    await seed_roles(runtime)
    if not (runtime.bus.handles(SeedNotifications) and runtime.bus.handles(RequestOtp)):
        pytest.skip("auth or notifications is not running in this process")
    await runtime.bus.ask(SeedNotifications(only_if_empty=True))
    someone_else = await make_user(runtime, "citizen")
    value, number = _known_npi(), phone()
    rec = fake_citizen(value)
    body = {
        "npi": value,
        "phone": number,
        "last_name": rec["nom"],
        "first_name": rec["prenoms"],
        "birth_date": rec["date_naissance"],
    }
    r = await client.post("/api/users", json=body)
    assert r.status_code == 202, r.text
    challenge = r.json()["challenge_id"]

    async def code() -> str | None:
        async with httpx.AsyncClient() as c:
            texts = [m["text"] for m in (await c.get(f"{sim_url}/sandbox/sms/messages", params={"to": number})).json()]
        found = re.search(r"\b(\d{6})\b", texts[-1]) if texts else None
        return found.group(1) if found else None

    r = await client.post("/api/auth/verify-otp", json={"challenge_id": challenge, "code": await wait_for(code, 15)})
    assert r.status_code == 200, r.text
    me = {"Authorization": f"Bearer {r.json()['tokens']['access_token']}"}
    mine = (await client.get("/api/auth/me", headers=me)).json()["user_id"]
    r = await client.post(f"/api/users/{mine}/verify-npi", headers=me)
    assert r.status_code == 200 and r.json()["kyc_status"] == "npi_verified", r.text
    assert r.json()["status"] == "active" and r.json()["roles"] == ["citizen"]
    assert (await client.get(f"/api/users/{someone_else.id}", headers=me)).status_code == 404
    assert (await client.get("/api/users", headers=me)).status_code == 403
