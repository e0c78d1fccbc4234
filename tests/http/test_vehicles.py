"""The /api/vehicles routes: permissions, visibility, problem+json, ETags, standing, import and export."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from simveb.actors.vehicles.messages import SeedVehicles

AGENT = ("vehicles:read", "vehicles:write")
SUPERVISOR = ("vehicles:read", "vehicles:write", "vehicles:standing", "vehicles:lookup")
POLICE = ("vehicles:read", "vehicles:lookup")
AFFILIATE = ("vehicles:file",)
ADMIN = ("vehicles:read", "vehicles:write", "vehicles:import", "config:write")


def body(n: int = 1, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "vin": f"VF3WCKFU{n:09d}",
        "make": "Peugeot",
        "model": "406",
        "energy": "Gazole",
        "year": 2004,
        "colour": "Noir",
        "cylinder_cc": 1997,
        "power_kw": 80,
        "fiscal_hp": 7,
        "seats": 5,
        "first_registration_date": "2004-06-01",
        "remarks": "Acheté à Cotonou",
    }
    data.update(over)
    return data


@pytest.fixture
async def api(runtime: Any, client: Any) -> Any:
    await runtime.bus.ask(SeedVehicles())
    return client


async def create(
    api: Any, auth: Any, n: int = 1, perms: tuple[str, ...] = AGENT, sub: str = "agent-1", **over: Any
) -> dict[str, Any]:
    r = await api.post("/api/vehicles", json=body(n, **over), headers=auth(*perms, sub=sub))
    assert r.status_code == 201, r.text
    return r.json()


async def count(api: Any, auth: Any) -> int:
    r = await api.get("/api/vehicles", params={"limit": 200}, headers=auth(*AGENT))
    return len(r.json()["items"])


def is_problem(r: Any, status: int, code: str | None = None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    if code is not None:
        assert r.json()["code"] == code, r.json()


async def test_catalogue_is_public_and_written_with_config_write(api, auth):
    r = await api.get("/api/vehicles/brands")
    assert r.status_code == 200
    assert {"Toyota", "Bajaj", "Haojue"} <= {b["name"] for b in r.json()}
    r = await api.get("/api/vehicles/models", params={"brand": "Toyota"})
    assert "Hilux" in {m["name"] for m in r.json()}
    assert {t["code"] for t in (await api.get("/api/vehicles/types")).json()} >= {"motorcycle", "passenger_car"}
    assert "Électricité" in {e["label"] for e in (await api.get("/api/vehicles/energies")).json()}
    assert {c["code"] for c in (await api.get("/api/vehicles/categories")).json()} == {
        "two_three_wheels",
        "four_wheels_plus",
    }
    assert (await api.get("/api/vehicles/characteristics")).status_code == 200
    brand = {"code": "zongshen", "name": "Zongshen", "country": "Chine"}
    is_problem(await api.post("/api/vehicles/brands", json=brand), 401)
    is_problem(await api.post("/api/vehicles/brands", json=brand, headers=auth(*AGENT)), 403, "missing_permission")
    r = await api.post("/api/vehicles/brands", json=brand, headers=auth("config:write"))
    assert r.status_code == 201, r.text
    is_problem(await api.post("/api/vehicles/brands", json=brand, headers=auth("config:write")), 409, "brand_exists")
    model = {"brand_code": "zongshen", "name": "ZS 125", "vehicle_type": "motorcycle"}
    assert (await api.post("/api/vehicles/models", json=model, headers=auth("config:write"))).status_code == 201
    r = await api.get("/api/vehicles/models", params={"brand": "zongshen"})
    assert [m["category"] for m in r.json()] == ["two_three_wheels"]


async def test_create_permissions_and_bad_input(api, auth):
    is_problem(await api.get("/api/vehicles"), 401)
    is_problem(await api.post("/api/vehicles", json=body()), 401)
    is_problem(await api.post("/api/vehicles", json=body(), headers=auth(sub=str(uuid.uuid4()))), 403)
    is_problem(await api.post("/api/vehicles", json=body(), headers=auth(*POLICE)), 403)  # police read only
    r = await api.post("/api/vehicles", json=body(), headers=auth(*AGENT))
    assert r.status_code == 201 and r.headers["etag"] == '"1"'
    assert r.headers["location"] == f"/api/vehicles/{r.json()['id']}"
    is_problem(await api.post("/api/vehicles", json=body(), headers=auth(*AGENT)), 409, "vin_exists")
    for over, status, code in [
        ({"vin": "VF3WCKFU0000000I1"}, 422, "invalid_vin"),
        ({"vin": "VF3WCKFU00001"}, 422, "invalid_vin"),
        ({"make": "Trabant"}, 422, "unknown_make"),
        ({"model": "Boxer BM 150"}, 422, "unknown_model"),
        ({"year": "deux mille"}, 400, "validation_error"),
        ({"seats": 0}, 400, "validation_error"),
        ({"first_registration_date": "2004-02-30"}, 400, "validation_error"),
        ({"wheels": 4}, 400, "validation_error"),  # unknown field
        ({"owners": ["not-a-uuid"]}, 400, "validation_error"),
    ]:
        r = await api.post("/api/vehicles", json=body(2, **over), headers=auth(*AGENT))
        is_problem(r, status, code)
    assert await count(api, auth) == 1  # nothing written by the refused requests


async def test_visibility_citizen_affiliate_police(api, auth):
    citizen, stranger = str(uuid.uuid4()), str(uuid.uuid4())
    mine = await create(api, auth, 1, owners=[citizen])
    filed = await create(api, auth, 2, perms=AFFILIATE, sub="garage-7", owners=[stranger])
    assert filed["filed_by"] == "garage-7"
    r = await api.get("/api/vehicles", headers=auth(sub=citizen))
    assert [v["id"] for v in r.json()["items"]] == [mine["id"]]
    assert (await api.get(f"/api/vehicles/{mine['id']}", headers=auth(sub=citizen))).status_code == 200
    is_problem(await api.get(f"/api/vehicles/{filed['id']}", headers=auth(sub=citizen)), 404)
    is_problem(await api.get(f"/api/vehicles/{mine['id']}/history", headers=auth(sub=stranger)), 404)
    r = await api.get("/api/vehicles", headers=auth(*AFFILIATE, sub="garage-7"))
    assert [v["id"] for v in r.json()["items"]] == [filed["id"]]
    r = await api.get("/api/vehicles", headers=auth(*POLICE, sub="police-1"))
    assert len(r.json()["items"]) == 2
    # Police read everything and change nothing.
    is_problem(
        await api.put(f"/api/vehicles/{mine['id']}", json=body(1), headers={**auth(*POLICE), "If-Match": '"1"'}), 403
    )
    is_problem(await api.delete(f"/api/vehicles/{mine['id']}", headers=auth(*POLICE)), 403)
    is_problem(await api.post(f"/api/vehicles/{mine['id']}/pledges", json={}, headers=auth(*POLICE)), 403)
    # An affiliate updates what it filed, not the others.
    upd = body(2, colour="Vert")
    upd.pop("vin")
    r = await api.put(
        f"/api/vehicles/{filed['id']}", json=upd, headers={**auth(*AFFILIATE, sub="garage-7"), "If-Match": '"1"'}
    )
    assert r.status_code == 200, r.text
    is_problem(
        await api.put(
            f"/api/vehicles/{mine['id']}", json=upd, headers={**auth(*AFFILIATE, sub="garage-7"), "If-Match": '"1"'}
        ),
        404,
    )


async def test_update_needs_the_current_etag(api, auth):
    v = await create(api, auth)
    r = await api.get(f"/api/vehicles/{v['id']}", headers=auth(*AGENT))
    assert r.headers["etag"] == '"1"'
    upd = body(colour="Bleu")
    upd.pop("vin")
    is_problem(await api.put(f"/api/vehicles/{v['id']}", json=upd, headers=auth(*AGENT)), 428)
    r = await api.put(f"/api/vehicles/{v['id']}", json=upd, headers={**auth(*AGENT), "If-Match": r.headers["etag"]})
    assert r.status_code == 200 and r.headers["etag"] == '"2"' and r.json()["colour"] == "Bleu"
    stale = await api.put(
        f"/api/vehicles/{v['id']}", json=upd | {"colour": "Jaune"}, headers={**auth(*AGENT), "If-Match": 'W/"1"'}
    )
    is_problem(stale, 412, "stale_version")
    assert stale.json()["current_version"] == 2
    r = await api.put(f"/api/vehicles/{v['id']}", json=upd | {"colour": "Jaune", "version": 2}, headers=auth(*AGENT))
    assert r.json()["colour"] == "Jaune"
    is_problem(await api.put(f"/api/vehicles/{v['id']}", json=upd | {"vin": "X"}, headers=auth(*AGENT)), 400)
    history = (await api.get(f"/api/vehicles/{v['id']}/history", headers=auth(*AGENT))).json()["items"]
    assert [(h["field"], h["old_value"], h["new_value"]) for h in history[1:]] == [
        ("colour", "Noir", "Bleu"),
        ("colour", "Bleu", "Jaune"),
    ]
    # DELETE archives: gone from searches, still readable, history kept.
    r = await api.delete(f"/api/vehicles/{v['id']}", headers=auth(*AGENT))
    assert r.status_code == 200 and r.json()["archived_at"]
    assert await count(api, auth) == 0
    assert (await api.get(f"/api/vehicles/{v['id']}", headers=auth(*AGENT))).status_code == 200
    r = await api.get("/api/vehicles", params={"include_archived": "true"}, headers=auth(*AGENT))
    assert len(r.json()["items"]) == 1
    history = (await api.get(f"/api/vehicles/{v['id']}/history", headers=auth(*AGENT))).json()["items"]
    assert history[-1]["field"] == "archived"


async def test_pledge_blocks_transfer_and_roadside_lookup(api, auth):
    seller, buyer = str(uuid.uuid4()), str(uuid.uuid4())
    v = await create(api, auth, owners=[seller], plate="AB 1234 RB")
    url = f"/api/vehicles/{v['id']}"
    is_problem(await api.post(f"{url}/pledges", json={"holder": "Orabank"}, headers=auth(*AGENT)), 403)
    r = await api.post(
        f"{url}/pledges", json={"holder": "Orabank", "reference": "G-1"}, headers=auth(*SUPERVISOR, sub="sup-1")
    )
    assert r.status_code == 201, r.text
    pledge = r.json()
    standing = (await api.get(f"{url}/standing", headers=auth(*AGENT))).json()
    assert standing["transfer_blocked"] and standing["reasons"][0]["code"] == "pledge"
    r = await api.post(f"{url}/transfer", json={"owners": [buyer]}, headers=auth(*AGENT))
    is_problem(r, 409, "transfer_blocked")
    assert r.json()["reasons"][0]["code"] == "pledge"
    wrong_kind = await api.post(f"{url}/oppositions/{pledge['id']}/lift", headers=auth(*SUPERVISOR))
    is_problem(wrong_kind, 404, "unknown_encumbrance")
    r = await api.post(
        f"{url}/pledges/{pledge['id']}/lift", json={"reason": "soldé"}, headers=auth(*SUPERVISOR, sub="sup-2")
    )
    assert r.status_code == 200 and r.json()["lifted_by"] == "sup-2"
    r = await api.post(f"{url}/transfer", json={"owners": [buyer]}, headers=auth(*AGENT))
    assert r.status_code == 200 and r.json()["owners"] == [buyer]
    # The buyer now sees it; the seller no longer does.
    assert (await api.get(url, headers=auth(sub=buyer))).status_code == 200
    is_problem(await api.get(url, headers=auth(sub=seller)), 404)
    # Theft and roadside check.
    r = await api.post(f"{url}/status", json={"status": "stolen", "reason": "plainte"}, headers=auth(*SUPERVISOR))
    assert r.status_code == 200 and r.json()["status"] == "stolen"
    is_problem(await api.get("/api/vehicles/lookup", params={"plate": "AB1234RB"}, headers=auth(*AGENT)), 403)
    r = await api.get("/api/vehicles/lookup", params={"plate": "ab 1234 rb"}, headers=auth(*POLICE))
    check = r.json()
    assert r.status_code == 200 and check["stolen"] and check["alert"] and check["make"] == "Peugeot"
    assert "owners" not in check and "customs_ref" not in check
    is_problem(await api.get("/api/vehicles/lookup", params={"plate": "ZZ 9999"}, headers=auth(*POLICE)), 404)
    history = (await api.get(f"{url}/history", headers=auth(*AGENT))).json()["items"]
    assert [h["field"] for h in history] == ["created", "pledge", "pledge", "owners", "status"]


async def test_opposition_and_blacklist_routes(api, auth):
    v = await create(api, auth)
    url = f"/api/vehicles/{v['id']}"
    r = await api.post(
        f"{url}/oppositions", json={"holder": "Tribunal de Cotonou", "reason": "litige"}, headers=auth(*SUPERVISOR)
    )
    assert r.status_code == 201
    standing = (await api.get(f"{url}/standing", headers=auth(*AGENT))).json()
    assert standing["registration_blocked"] and len(standing["oppositions"]) == 1
    r = await api.post(
        "/api/vehicles/blacklist",
        json={"subject_kind": "vehicle", "subject": v["id"], "reason": "châssis maquillé"},
        headers=auth(*SUPERVISOR),
    )
    assert r.status_code == 201, r.text
    entry = r.json()
    listed = (await api.get("/api/vehicles/blacklist", headers=auth(*SUPERVISOR))).json()
    assert [e["id"] for e in listed["items"]] == [entry["id"]] and listed["next_cursor"] is None
    r = await api.post(f"/api/vehicles/blacklist/{entry['id']}/lift", headers=auth(*SUPERVISOR))
    assert r.status_code == 200 and r.json()["lifted_at"]
    assert (await api.get("/api/vehicles/blacklist", headers=auth(*SUPERVISOR))).json()["items"] == []
    lifted = (await api.get("/api/vehicles/blacklist?include_lifted=true", headers=auth(*SUPERVISOR))).json()
    assert [e["id"] for e in lifted["items"]] == [entry["id"]]


async def test_search_routes(api, auth):
    owner = str(uuid.uuid4())
    await create(api, auth, 1, owners=[owner], plate="AB 1000 RB")
    await create(api, auth, 2, make="Bajaj", model="Boxer BM 150", energy="Essence", plate="1A 0002")
    await create(api, auth, 3, make="Yamaha", model="Crypton", energy="Électricité", plate="1A 0003", year=2021)
    h = auth(*AGENT)

    async def vins(**params: Any) -> list[str]:
        r = await api.get("/api/vehicles", params=params, headers=h)
        assert r.status_code == 200, r.text
        return sorted(v["vin"][-1] for v in r.json()["items"])

    assert await vins(q="boxer") == ["2"]
    assert await vins(q="crypt") == ["3"]
    assert await vins(q="1A") == ["2", "3"]
    assert await vins(plate="AB1000") == ["1"]
    assert await vins(vin="VF3WCKFU00000000") == ["1", "2", "3"]
    assert await vins(owner=owner) == ["1"]
    assert await vins(make="yamaha", year_min=2020) == ["3"]
    assert await vins(status="stolen") == []
    is_problem(await api.get("/api/vehicles", params={"status": "lost"}, headers=h), 400)
    is_problem(await api.get("/api/vehicles", params={"cursor": "zz"}, headers=h), 400)
    r = await api.get("/api/vehicles", params={"limit": 2}, headers=h)
    page = r.json()
    r = await api.get("/api/vehicles", params={"limit": 2, "cursor": page["next_cursor"]}, headers=h)
    assert len(page["items"]) == 2 and len(r.json()["items"]) == 1 and r.json()["next_cursor"] is None


async def test_import_job_and_export_stream(api, auth):
    csv_text = (
        "vin,make,model,energy,plate,remarks\n"
        "MD2A11CZ5KCA00001,Bajaj,Boxer BM 150,Essence,2A 1111,Cotonou\n"
        "MD2A11CZ5KCA00002,Bajaj,Boxer BM 150,Électricité,2A 1112,Parakou\n"
        "MD2A11CZ5KCA0000Q,Bajaj,Boxer BM 150,Essence,2A 1113,\n"
        "MD2A11CZ5KCA00004,Bajaj,Inconnu,Essence,2A 1114,\n"
    ).encode()
    is_problem(await api.post("/api/vehicles/import", content=csv_text, headers=auth(*AGENT)), 403)
    r = await api.post("/api/vehicles/import", content=csv_text, headers={**auth(*ADMIN), "Content-Type": "text/csv"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    for _ in range(200):
        job = (await api.get(f"/api/vehicles/import/{job_id}", headers=auth(*ADMIN))).json()
        if job["state"] in ("done", "failed"):
            break
        await asyncio.sleep(0.05)
    assert job["state"] == "done" and (job["inserted"], job["rejected"]) == (2, 2), job
    errors = await api.get(f"/api/vehicles/import/{job_id}/errors", headers=auth(*ADMIN))
    assert errors.status_code == 200
    lines = errors.text.splitlines()
    assert lines[0].startswith("row,reason,") and len(lines) == 3
    assert lines[1].startswith("3,") and "I, O and Q" in lines[1] and lines[2].startswith("4,")
    is_problem(await api.get(f"/api/vehicles/import/{uuid.uuid4()}", headers=auth(*ADMIN)), 404)
    is_problem(await api.post("/api/vehicles/import", content=b"", headers=auth(*ADMIN)), 400, "empty_import")

    is_problem(await api.get("/api/vehicles/export", headers=auth(*AGENT)), 403)
    async with api.stream("GET", "/api/vehicles/export", params={"make": "Bajaj"}, headers=auth(*ADMIN)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        text = (await r.aread()).decode("utf-8")
    rows = text.splitlines()
    assert rows[0].startswith("vin,plate,make,") and len(rows) == 3
    assert "Électricité" in text and "Parakou" in text
