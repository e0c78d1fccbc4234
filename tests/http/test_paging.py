"""Every list that grows pages one way: `limit` 1..200 (default 50), an opaque `cursor`, and the
envelope {items, next_cursor}; a walk with a small limit sees every row once, in the list's order;
a cursor from another list or an edited one is a 400 naming `cursor`."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from simveb.actors.auth.messages import Login, SetPassword
from simveb.actors.config.messages import PutSetting
from simveb.actors.users.messages import SYSTEM, CreateUser, SeedUsers
from simveb.actors.vehicles.messages import SearchVehicles, SeedVehicles, SetVehicleStatus, VehicleFilter
from tests.actors.test_vehicles_import import good_row, run_import, write_csv

# Every paged route, with a token that may read it.
PAGED = {
    "/api/config/history": ("config:read",),
    "/api/users": ("users:read",),
    "/api/notifications": (),
    "/api/vehicles": ("vehicles:read",),
    "/api/immatriculations": ("registrations:read",),
    "/api/immatriculations/overdue": ("registrations:read",),
    "/api/payments/transactions": ("payments:read",),
    "/api/documents": ("documents:read",),
    "/api/vehicles/blacklist": ("vehicles:standing",),
    "/api/immatriculations/plates/reservations": ("registrations:plates",),
    "/api/auth/sessions": (),
    "/api/audit": ("audit:read",),
}
USER = "00000000-0000-0000-0000-0000000000aa"


@pytest.mark.parametrize("path", sorted(PAGED))
async def test_every_list_has_the_same_envelope_and_bounds(client, auth, path: str) -> None:
    await envelope_and_bounds(client, path, auth(*PAGED[path], sub=USER))


async def envelope_and_bounds(client: httpx.AsyncClient, path: str, h: dict[str, str]) -> None:
    r = await client.get(path, headers=h)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"items", "next_cursor"}
    for limit, expected in (("0", ">= 1"), ("201", "<= 200")):
        r = await client.get(path, params={"limit": limit}, headers=h)
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == "limit", r.text
        assert expected in r.json()["errors"][0]["message"]
    assert (await client.get(path, params={"limit": 200}, headers=h)).status_code == 200
    # Not base64url at all: refused by the parameter's pattern; base64url but not a keyset: by the list.
    for cursor in ("%%%", "bm90LWpzb24", "WzEsMiwzLDRd"):
        r = await client.get(path, params={"cursor": cursor}, headers=h)
        assert r.status_code == 400, (path, cursor, r.text)
        assert r.json()["errors"][0]["field"] == "cursor"


async def test_a_walk_sees_every_row_once_newest_first(client, runtime, auth) -> None:
    for n in range(7):
        await runtime.bus.ask(PutSetting(key=f"paging.walk_{n}", type="integer", value=n, by="admin-1"))
    h = auth("config:read")
    everything = (await client.get("/api/config/history", params={"limit": 200}, headers=h)).json()
    assert everything["next_cursor"] is None and len(everything["items"]) >= 7
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/api/config/history", params=params, headers=h)).json()
        seen += [e["id"] for e in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [e["id"] for e in everything["items"]], "every row once, in the list's order"
    assert seen == sorted(seen, reverse=True) and pages == -(-len(seen) // 3)


async def test_a_cursor_of_another_list_is_refused(client, runtime, auth) -> None:
    for n in range(3):
        await runtime.bus.ask(PutSetting(key=f"paging.other_{n}", type="integer", value=n, by="admin-1"))
    h = auth("config:read", "users:read")
    page = (await client.get("/api/config/history", params={"limit": 1}, headers=h)).json()
    assert page["next_cursor"]
    r = await client.get("/api/users", params={"cursor": page["next_cursor"]}, headers=h)
    assert r.status_code == 400 and r.json()["code"] == "invalid_cursor"


async def walk(client: httpx.AsyncClient, path: str, h: dict[str, str], limit: int) -> tuple[list[Any], int]:
    """Every item of a list read `limit` at a time, and the number of pages it took."""
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        r = await client.get(path, params=params, headers=h)
        assert r.status_code == 200, r.text
        seen += r.json()["items"]
        pages += 1
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return seen, pages


async def imported_vehicle(runtime: Any, tmp_path: Path) -> uuid.UUID:
    """A vehicle brought in by a bulk import: it has no stored `created` entry, only the synthetic one."""
    await runtime.bus.ask(SeedVehicles(only_if_empty=True))
    row = good_row(1) | {"vin": f"LBPKE13{uuid.uuid4().int % 10**10:010d}", "plate": "", "owners": ""}
    job = await run_import(runtime.bus, write_csv(tmp_path / "one.csv", [row]), tmp_path / "one.errors.csv")
    assert (job.state, job.inserted) == ("done", 1), job
    found = await runtime.bus.ask(SearchVehicles(filter=VehicleFilter(vin=row["vin"])))
    return found.items[0].id


async def test_vehicle_history_pages_with_the_imported_created_entry_leading(client, runtime, auth, tmp_path) -> None:
    vehicle_id = await imported_vehicle(runtime, tmp_path)
    for status in ("stolen", "active", "stolen", "active", "stolen"):
        await runtime.bus.ask(SetVehicleStatus(vehicle_id=vehicle_id, status=status, by="agent-1"))
    path, h = f"/api/vehicles/{vehicle_id}/history", auth("vehicles:read")
    await envelope_and_bounds(client, path, h)
    everything = (await client.get(path, params={"limit": 200}, headers=h)).json()
    assert everything["next_cursor"] is None
    assert [e["field"] for e in everything["items"]] == ["created"] + ["status"] * 5
    assert everything["items"][0]["id"] == 0 and everything["items"][0]["new_value"]["import_job"]
    for limit in (1, 2, 4):
        seen, pages = await walk(client, path, h, limit)
        assert seen == everything["items"], f"every entry once, in order, the synthetic one once (limit {limit})"
        assert pages == -(-6 // limit)
    ids = [e["id"] for e in everything["items"]]
    assert ids == sorted(ids) and len(set(ids)) == 6


async def test_vehicle_history_of_a_vehicle_created_through_the_api_pages_too(client, runtime, auth) -> None:
    await runtime.bus.ask(SeedVehicles(only_if_empty=True))
    h = auth("vehicles:read", "vehicles:write", "vehicles:standing")
    body = {
        "vin": f"VF3WCKFU{uuid.uuid4().int % 10**9:09d}",
        "make": "Peugeot",
        "model": "406",
        "energy": "Gazole",
        "year": 2004,
        "colour": "Noir",
        "seats": 5,
    }
    r = await client.post("/api/vehicles", json=body, headers=h)
    assert r.status_code == 201, r.text
    vehicle = r.json()
    for n in range(3):
        r = await client.post(
            f"/api/vehicles/{vehicle['id']}/status", json={"status": ("stolen", "active")[n % 2]}, headers=h
        )
        assert r.status_code == 200, r.text
    path = f"/api/vehicles/{vehicle['id']}/history"
    everything = (await client.get(path, params={"limit": 200}, headers=h)).json()["items"]
    assert everything[0]["field"] == "created" and everything[0]["id"] > 0, "the stored entry, not a synthetic one"
    seen, pages = await walk(client, path, h, 1)
    assert seen == everything and pages == len(everything)


async def test_sessions_page_newest_first_and_each_once(client, runtime, auth) -> None:
    await runtime.bus.ask(SeedUsers(only_if_empty=True))
    n = uuid.uuid4().int % 10**8
    user = await runtime.bus.ask(
        CreateUser(caller=SYSTEM, kind="staff", roles=["agent"], email=f"p{n}@example.bj", phone=f"+22901{n:08d}")
    )
    await runtime.bus.ask(SetPassword(user_id=user.id, password="correct horse battery", by="test"))
    # A second user, so that the users list has a next page (its cursor is tried below).
    await runtime.bus.ask(
        CreateUser(caller=SYSTEM, kind="staff", roles=["agent"], email=f"q{n}@example.bj", phone=f"+22901{n + 1:08d}")
    )
    made = []
    for _ in range(5):
        result = await runtime.bus.ask(Login(identifier=f"p{n}@example.bj", password="correct horse battery"))
        made.append(str(result.tokens.session_id))
    h = auth(sub=str(user.id))
    everything = (await client.get("/api/auth/sessions", params={"limit": 200}, headers=h)).json()["items"]
    assert [s["id"] for s in everything] == made[::-1], "newest first"
    for limit in (1, 2, 5):
        seen, pages = await walk(client, "/api/auth/sessions", h, limit)
        assert seen == everything and pages == max(1, -(-5 // limit))
    # A cursor of the users list (same (created_at, id) shape) or of another user's sessions is refused.
    mine = (await client.get("/api/auth/sessions", params={"limit": 1}, headers=h)).json()["next_cursor"]
    users = (await client.get("/api/users", params={"limit": 1}, headers=auth("users:read"))).json()["next_cursor"]
    assert mine and users
    for foreign, who in ((users, h), (mine, auth(sub=USER))):
        r = await client.get("/api/auth/sessions", params={"cursor": foreign}, headers=who)
        assert r.status_code == 400 and r.json()["code"] == "invalid_cursor", r.text


async def test_history_and_sessions_refuse_each_others_cursors(client, runtime, auth, tmp_path) -> None:
    vehicle_id, other_vehicle = await imported_vehicle(runtime, tmp_path), await imported_vehicle(runtime, tmp_path)
    await runtime.bus.ask(SetVehicleStatus(vehicle_id=vehicle_id, status="stolen", by="agent-1"))
    for n in range(2):
        await runtime.bus.ask(PutSetting(key=f"paging.foreign_{n}", type="integer", value=n, by="admin-1"))
    h = auth("vehicles:read", "config:read", "users:read", sub=USER)
    history = f"/api/vehicles/{vehicle_id}/history"
    page = (await client.get(history, params={"limit": 1}, headers=h)).json()
    assert page["next_cursor"]
    for other in ("/api/users", "/api/auth/sessions", "/api/config/history"):
        r = await client.get(other, params={"cursor": page["next_cursor"]}, headers=h)
        assert r.status_code == 400 and r.json()["code"] == "invalid_cursor", (other, r.text)
    config = (await client.get("/api/config/history", params={"limit": 1}, headers=h)).json()
    vehicles = (await client.get("/api/vehicles", params={"limit": 1}, headers=h)).json()
    for foreign in (config["next_cursor"], vehicles["next_cursor"]):
        assert foreign
        r = await client.get(history, params={"cursor": foreign}, headers=h)
        assert r.status_code == 400 and r.json()["code"] == "invalid_cursor", r.text
    # Another vehicle's history is another list: its cursor is no position in this one.
    r = await client.get(f"/api/vehicles/{other_vehicle}/history", params={"cursor": page["next_cursor"]}, headers=h)
    assert r.status_code == 400 and r.json()["code"] == "invalid_cursor", r.text
