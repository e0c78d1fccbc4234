"""Security-relevant actions over HTTP leave audit entries carrying the request's X-Request-ID (also
when the action happens in another actor, by event, after the request), and GET /api/audit shows them
to admins only, with filters and a cursor that runs across every actor's chain."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from simveb.config import Settings
from simveb.runtime import Runtime
from tests.conftest import fresh_runtime
from tests.registrations_support import DECLARED_ONLY, FIRST_DOCS, Person, new_vehicle, pay_at_counter, person
from tests.support import wait_for


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with fresh_runtime(settings, **DECLARED_ONLY) as rt:
        yield rt


@pytest.fixture
async def world(seeded: Runtime, client: Any) -> dict[str, Any]:
    return {
        "citizen": await person(seeded, "citizen"),
        "agent": await person(seeded, "agent"),
        "validator": await person(seeded, "validator"),
        "admin": await person(seeded, "admin"),
        "client": client,
        "runtime": seeded,
    }


def rid(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def traced(who: Person, request_id: str) -> dict[str, str]:
    return {**who.headers, "X-Request-ID": request_id}


async def entries(rt: Runtime, chain: str, request_id: str) -> list[dict[str, Any]]:
    assert rt.db is not None
    async with rt.db.connection() as con:
        rows = await con.fetch(f"SELECT * FROM {chain}.audit WHERE request_id = $1 ORDER BY seq", request_id)
    return [dict(r) for r in rows]


async def test_a_sign_in_failure_is_audited_with_the_request_id(world: dict[str, Any]) -> None:
    api, rt = world["client"], world["runtime"]
    user = await person(rt, "citizen", email="koffi.audit@simveb.test")
    request_id = rid("login")
    r = await api.post(
        "/api/auth/login",
        json={"email": "koffi.audit@simveb.test", "password": "not the password at all"},
        headers={"X-Request-ID": request_id},
    )
    assert r.status_code == 401
    [row] = await entries(rt, "auth", request_id)
    assert row["action"] == "sign_in_failed" and row["subject"] == str(user.id) and row["actor"] == "anonymous"
    assert row["detail"]["factor"] == "password"


async def test_a_lockout_is_audited_after_the_failures_that_caused_it(world: dict[str, Any]) -> None:
    api, rt = world["client"], world["runtime"]
    user = await person(rt, "citizen", email="locked.audit@simveb.test")
    limit = rt.settings.auth.max_failures
    codes = []
    for _ in range(limit):
        r = await api.post("/api/auth/login", json={"email": "locked.audit@simveb.test", "password": "wrong guess 123"})
        codes.append(r.status_code)
    assert codes == [401] * (limit - 1) + [429]
    assert rt.db is not None
    async with rt.db.connection() as con:
        rows = await con.fetch(
            "SELECT actor, action, detail FROM auth.audit WHERE subject = $1 ORDER BY seq", str(user.id)
        )
    assert [r["action"] for r in rows] == ["sign_in_failed"] * limit + ["locked_out"]
    assert rows[-1]["actor"] == "system" and rows[-1]["detail"]["failures"] == limit
    assert rows[-1]["detail"]["scope"] == "account"


async def test_a_role_change_is_audited_with_the_request_id(world: dict[str, Any]) -> None:
    api, rt, admin = world["client"], world["runtime"], world["admin"]
    target = await person(rt, "agent")
    request_id = rid("roles")
    r = await api.put(
        f"/api/users/{target.id}/roles", json={"roles": ["agent", "validator"]}, headers=traced(admin, request_id)
    )
    assert r.status_code == 200, r.text
    [row] = await entries(rt, "users", request_id)
    assert row["action"] == "roles_changed" and row["actor"] == str(admin.id) and row["subject"] == str(target.id)
    assert row["detail"] == {"old": ["agent"], "new": ["agent", "validator"]}


async def test_a_payment_confirmation_and_the_decisions_it_causes_carry_the_request_id(
    world: dict[str, Any],
) -> None:
    api, rt, citizen, agent = world["client"], world["runtime"], world["citizen"], world["agent"]
    filed = await api.post(
        "/api/immatriculations",
        json={"vehicle": new_vehicle(model="406"), "declared_documents": FIRST_DOCS},
        headers=citizen.headers,
    )
    assert filed.status_code == 201, filed.text
    req = filed.json()
    request_id = rid("counter")
    body = {"method": "cash", "receipt_reference": f"GUICHET-{uuid.uuid4().hex[:10]}"}

    async def confirmed() -> Any:
        r = await api.post(f"/api/payments/{req['id']}/confirm", json=body, headers=traced(agent, request_id))
        if r.status_code == 404:
            return None  # the payable opens when PaymentRequested is delivered
        assert r.status_code == 200, r.text
        return r.json()

    payment = await wait_for(confirmed, timeout=10)
    [paid] = await entries(rt, "payments", request_id)
    assert paid["action"] == "payment_confirmed" and paid["actor"] == str(agent.id)
    assert paid["subject"] == payment["payment"]["id"] and paid["detail"]["amount_xof"] == req["fee_total_xof"]

    # Registrations moves the request on PaymentSucceeded, delivered by the relay after the
    # request ended: the outbox carried the request id, so its decisions are traced to it.
    async def moved() -> list[dict[str, Any]]:
        rows = await entries(rt, "registrations", request_id)
        return rows if len(rows) >= 2 else []

    rows = await wait_for(moved, timeout=10)
    assert [(r["detail"]["old"], r["detail"]["new"]) for r in rows][:2] == [
        ("waiting_for_payment", "paid"),
        ("paid", "assigned_to_staff"),
    ]
    assert rows[0]["actor"] == "payments:cash" and rows[0]["subject"] == req["id"]


async def test_a_registration_decision_is_audited_and_listed_for_admins(world: dict[str, Any]) -> None:
    api, rt = world["client"], world["runtime"]
    citizen, agent, validator, admin = world["citizen"], world["agent"], world["validator"], world["admin"]
    filed = await api.post(
        "/api/immatriculations",
        json={"vehicle": new_vehicle(model="406"), "declared_documents": FIRST_DOCS},
        headers=citizen.headers,
    )
    req = filed.json()
    await pay_at_counter(api, agent, req["id"])
    for status in ("verified", "pre_validated"):
        r = await api.put(f"/api/immatriculations/{req['id']}/status", json={"status": status}, headers=agent.headers)
        assert r.status_code == 200, r.text
    request_id = rid("validate")
    validated = await api.post(
        f"/api/immatriculations/{req['id']}/validate", json={"note": "ok"}, headers=traced(validator, request_id)
    )
    assert validated.status_code == 200, validated.text
    decided = [e for e in await entries(rt, "registrations", request_id) if e["detail"]["new"] == "validated"]
    assert len(decided) == 1 and decided[0]["actor"] == str(validator.id)
    assert decided[0]["detail"]["plate"] == validated.json()["plate"]

    # GET /api/audit: admins only.
    assert (await api.get("/api/audit", headers=validator.headers)).status_code == 403
    assert (await api.get("/api/audit")).status_code == 401
    page = await api.get(
        "/api/audit",
        params={"chain": "registrations", "subject": req["id"], "action": "status_changed"},
        headers=admin.headers,
    )
    assert page.status_code == 200, page.text
    items = page.json()["items"]
    assert [i["detail"]["new"] for i in items][:1] == ["validated"]  # newest first
    assert {i["chain"] for i in items} == {"registrations"} and all(i["subject"] == req["id"] for i in items)
    assert any(i["request_id"] == request_id for i in items)

    by_validator = (await api.get("/api/audit", params={"actor": str(validator.id)}, headers=admin.headers)).json()
    assert [i["action"] for i in by_validator["items"]] == ["status_changed"]

    # The plate reaches vehicles by event: wait for it, so the trail is still while it is paged.
    async def plated() -> Any:
        r = await api.get("/api/audit", params={"chain": "vehicles", "action": "plate_changed"}, headers=admin.headers)
        return r.json()["items"]

    [plate] = await wait_for(plated, timeout=10)
    assert plate["actor"] == f"registrations:{req['id']}" and plate["detail"]["new"] == validated.json()["plate"]

    # Every chain, page by page: the pages join without a gap or a repeat, newest first.
    everything = (await api.get("/api/audit", params={"limit": 200}, headers=admin.headers)).json()["items"]
    assert {i["chain"] for i in everything} >= {"users", "payments", "registrations"}
    seen: list[tuple[str, int]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        r = await api.get("/api/audit", params=params, headers=admin.headers)
        assert r.status_code == 200, r.text
        seen += [(i["chain"], i["seq"]) for i in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [(i["chain"], i["seq"]) for i in everything]

    # Time window and bad input.
    first_at = everything[-1]["at"]
    later = (await api.get("/api/audit", params={"from": everything[0]["at"]}, headers=admin.headers)).json()
    assert later["items"] and all(i["at"] >= everything[0]["at"] for i in later["items"])
    none = (await api.get("/api/audit", params={"to": first_at}, headers=admin.headers)).json()
    assert none["items"] == []
    bad = await api.get("/api/audit", params={"cursor": "not-a-cursor"}, headers=admin.headers)
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_cursor"
    for odd in ({"subject": "a\x00b"}, {"actor": "\x00"}, {"action": "DROP TABLE"}, {"chain": "../x"}):
        refused = await api.get("/api/audit", params=odd, headers=admin.headers)
        assert refused.status_code == 400, (odd, refused.text)
    unknown = await api.get("/api/audit", params={"chain": "nowhere"}, headers=admin.headers)
    assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_chain"


async def test_admins_hold_audit_read_in_the_seeded_grid(world: dict[str, Any]) -> None:
    assert "audit:read" in world["admin"].permissions
    assert "audit:read" not in world["validator"].permissions
