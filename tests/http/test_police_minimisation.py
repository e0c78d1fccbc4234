"""Data minimisation, tried as a police officer reaching past the roadside check: the police role
holds only the lookup, its answer carries no free text nor person ids, and every lookup is recorded.
Event payloads with personal data do not outlive the retention, even on rows that never got delivered."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from simveb.db import init_connection
from simveb.outbox import REDACTED, redact_failed
from tests.http.test_vehicles import SUPERVISOR, create, is_problem

ROOT = Path(__file__).resolve().parent.parent.parent
OPPOSITION_REASON = "litige successoral entre Koffi et Adjoa, dossier 2024/117"
BLACKLIST_REASON = "faux papiers présentés par M. Hounkpatin"


@pytest.fixture
async def api(seeded: Any, client: Any) -> Any:
    return client


async def police_permissions(settings: Any) -> list[str]:
    con = await asyncpg.connect(settings.database.url)
    try:
        rows = await con.fetch("SELECT permission FROM users.role_permissions WHERE role = 'police' ORDER BY 1")
    finally:
        await con.close()
    return [r["permission"] for r in rows]


async def test_the_seeded_police_role_holds_only_the_lookup(api, settings) -> None:
    assert await police_permissions(settings) == ["vehicles:lookup"]


async def test_a_database_seeded_before_the_change_loses_the_police_read(api, settings) -> None:
    con = await asyncpg.connect(settings.database.url)
    try:
        await con.execute("INSERT INTO users.role_permissions (role, permission) VALUES ('police', 'vehicles:read')")
        await con.execute((ROOT / "migrations/users/0002_police_lookup_only.sql").read_text())
        applied = await con.fetchval(
            "SELECT count(*) FROM public.simveb_migrations WHERE domain = 'users' AND version = 2"
        )
    finally:
        await con.close()
    assert applied == 1  # the runner applies it to every existing database
    assert await police_permissions(settings) == ["vehicles:lookup"]


async def test_police_cannot_read_records_or_search_owners_and_lookups_are_recorded(api, auth, settings) -> None:
    owner = str(uuid.uuid4())
    v = await create(api, auth, owners=[owner], plate="AB 4242 RB", perms=SUPERVISOR)
    url = f"/api/vehicles/{v['id']}"
    r = await api.post(
        f"{url}/oppositions",
        json={"holder": "Tribunal de Cotonou", "reason": OPPOSITION_REASON},
        headers=auth(*SUPERVISOR),
    )
    assert r.status_code == 201, r.text
    r = await api.post(
        "/api/vehicles/blacklist",
        json={"subject_kind": "person", "subject": owner, "reason": BLACKLIST_REASON},
        headers=auth(*SUPERVISOR),
    )
    assert r.status_code == 201, r.text

    police = auth(*await police_permissions(settings), sub="officer-7", roles=("police",))
    # The attack: full record, owner search, free search, history, standing, export.
    is_problem(await api.get(url, headers=police), 403, "lookup_only")
    is_problem(await api.get("/api/vehicles", params={"owner": owner}, headers=police), 403, "lookup_only")
    is_problem(await api.get("/api/vehicles", params={"q": "Peugeot"}, headers=police), 403, "lookup_only")
    is_problem(await api.get(f"{url}/history", headers=police), 403)
    is_problem(await api.get(f"{url}/standing", headers=police), 403)
    is_problem(await api.get("/api/vehicles/export", headers=police), 403)

    r = await api.get("/api/vehicles/lookup", params={"plate": "ab 4242 rb"}, headers=police)
    assert r.status_code == 200, r.text
    check = r.json()
    assert check["opposed"] and check["blacklisted"] and check["alert"]
    assert {b["code"] for b in check["reasons"]} == {"opposition", "blacklisted"}
    text = r.text
    for leak in (OPPOSITION_REASON, BLACKLIST_REASON, "Tribunal", owner, "owners", "customs_ref"):
        assert leak not in text, leak
    is_problem(await api.get("/api/vehicles/lookup", params={"plate": "ZZ 0001"}, headers=police), 404)

    con = await asyncpg.connect(settings.database.url)
    try:
        rows = await con.fetch("SELECT by, plate, found, at FROM vehicles.roadside_lookups ORDER BY at")
        with pytest.raises(asyncpg.RaiseError):
            await con.execute("DELETE FROM vehicles.roadside_lookups")  # the trace cannot be erased
    finally:
        await con.close()
    assert [(r["by"], r["plate"], r["found"]) for r in rows] == [
        ("officer-7", "AB4242RB", True),
        ("officer-7", "ZZ0001", False),
    ]
    assert all(r["at"] is not None for r in rows)


async def test_dead_and_quarantined_payloads_are_redacted_after_the_retention(api, settings) -> None:
    personal = {"phone": "+22997001122", "npi": "1234567890", "first_name": "Adjoa"}
    con = await asyncpg.connect(settings.database.url)
    try:
        await init_connection(con)  # the pool's codecs, as the relay has them
        rows = [
            ("old dead", "dead_at", "2 days"),
            ("old quarantined", "quarantined_at", "2 days"),
            ("recent dead", "dead_at", "1 minute"),
        ]
        for label, column, age in rows:
            await con.execute(
                f"INSERT INTO bus.outbox (event_id, source, type, payload, {column})"
                f" VALUES ($1, 'users', $2, $3, now() - interval '{age}')",
                uuid.uuid4(),
                label,
                personal,
            )
        await con.execute(
            "INSERT INTO bus.outbox (event_id, source, type, payload) VALUES ($1, 'users', 'pending', $2)",
            uuid.uuid4(),
            personal,
        )
        assert await redact_failed(con, 86400.0) == 2
        assert await redact_failed(con, 86400.0) == 0  # idempotent
        payloads = {r["type"]: r["payload"] for r in await con.fetch("SELECT type, payload FROM bus.outbox")}
    finally:
        await con.close()
    assert payloads["old dead"] == REDACTED and payloads["old quarantined"] == REDACTED
    assert payloads["recent dead"] == personal and payloads["pending"] == personal
