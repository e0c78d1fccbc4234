"""HTTP API of the users service: every route, object-level and function-level authorisation, mass
assignment, self-registration without enumeration, history and events."""

from __future__ import annotations

import uuid

import pytest

from simveb.actors.auth.messages import RequestOtp
from simveb.actors.users.messages import ConfirmRegistration, ResolveLogin
from simveb.errors import NotFound
from tests.users_support import events, make_user, npi, phone, seed_roles

ADMIN = ("users:read", "users:write", "users:roles", "users:kyc")
AGENT = ("users:read", "users:kyc")


@pytest.fixture
async def world(runtime, client, auth):
    """Roles seeded; two citizens A and B, an agent and an admin, and their bearer headers."""
    await seed_roles(runtime)
    a = await make_user(runtime, "citizen", last_name="Houngbédji", first_name="Aïcha", email="aicha@example.bj")
    b = await make_user(runtime, "citizen", last_name="Zinsou", first_name="Marc")
    agent = await make_user(runtime, "agent", kind="staff", last_name="Agbo", first_name="Paul")
    admin = await make_user(runtime, "admin", kind="staff", email="root@simveb.test")
    return {
        "a": a,
        "b": b,
        "agent": agent,
        "admin": admin,
        "ha": auth(sub=str(a.id), roles=("citizen",)),
        "hb": auth(sub=str(b.id), roles=("citizen",)),
        "hagent": auth(*AGENT, sub=str(agent.id), roles=("agent",)),
        "hadmin": auth(*ADMIN, sub=str(admin.id), roles=("admin",)),
    }


def _id_routes(uid: object) -> list[tuple[str, str, dict | None]]:
    return [
        ("GET", f"/api/users/{uid}", None),
        ("PUT", f"/api/users/{uid}", {"language": "en"}),
        ("DELETE", f"/api/users/{uid}", None),
        ("GET", f"/api/users/{uid}/profile", None),
        ("PUT", f"/api/users/{uid}/profile", {"first_name": "Eve"}),
        ("GET", f"/api/users/{uid}/roles", None),
        ("PUT", f"/api/users/{uid}/roles", {"roles": ["admin"]}),
        ("POST", f"/api/users/{uid}/verify-npi", None),
        ("POST", f"/api/users/{uid}/kyc", {}),
    ]


# --- authentication and function-level authorisation -----------------------------------------------


async def test_every_route_needs_a_token(client, world):
    uid = world["a"].id
    for method, path, body in [*_id_routes(uid), ("GET", "/api/users", None), ("GET", "/api/roles", None)]:
        r = await client.request(method, path, json=body)
        assert r.status_code == 401, (method, path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")


async def test_user_a_cannot_read_or_change_user_b(client, world):
    """Every route with an id answers 404 for someone else's account, and nothing changes."""
    b = world["b"]
    for method, path, body in _id_routes(b.id):
        r = await client.request(method, path, json=body, headers=world["ha"])
        assert r.status_code in (403, 404), (method, path, r.text)
        if (path.endswith("/roles") and method == "PUT") or path.endswith("/kyc"):
            assert r.status_code == 403  # permission guard: decided from the token alone
        else:
            assert r.status_code == 404, (method, path, r.text)
    r = await client.get(f"/api/users/{b.id}", headers=world["hadmin"])
    assert r.json()["status"] == "active" and r.json()["language"] == "fr"
    assert r.json()["roles"] == ["citizen"]
    r = await client.get(f"/api/users/{b.id}/profile", headers=world["hadmin"])
    assert r.json()["first_name"] == "Marc"


async def test_someone_elses_id_looks_like_a_missing_one(client, world):
    missing = await client.get(f"/api/users/{uuid.uuid4()}", headers=world["ha"])
    hidden = await client.get(f"/api/users/{world['b'].id}", headers=world["ha"])
    assert missing.status_code == hidden.status_code == 404
    assert missing.json()["code"] == hidden.json()["code"] == "unknown_user"


async def test_roles_without_the_permission_get_403(client, world):
    ha, hagent = world["ha"], world["hagent"]
    assert (await client.get("/api/users", headers=ha)).status_code == 403
    body = {"roles": ["agent"], "email": "x@simveb.test"}
    assert (await client.post("/api/users", json=body, headers=ha)).status_code == 403
    assert (await client.post("/api/users", json=body, headers=hagent)).status_code == 403
    r = await client.put(f"/api/users/{world['b'].id}/roles", json={"roles": ["agent"]}, headers=hagent)
    assert r.status_code == 403 and r.json()["code"] == "missing_permission"
    # An agent reads everyone (users:read) but may not change them (users:write): 403, not 404.
    r = await client.put(f"/api/users/{world['b'].id}", json={"language": "en"}, headers=hagent)
    assert r.status_code == 403
    r = await client.delete(f"/api/users/{world['b'].id}", headers=hagent)
    assert r.status_code == 403


# --- reads ------------------------------------------------------------------------------------------


async def test_self_and_staff_read(client, world):
    a = world["a"]
    r = await client.get(f"/api/users/{a.id}", headers=world["ha"])
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == str(a.id) and body["kyc_status"] == "unverified"
    assert body["display_name"] == "Aïcha Houngbédji"
    r = await client.get(f"/api/users/{a.id}", headers=world["hagent"])
    assert r.status_code == 200
    r = await client.get(f"/api/users/{a.id}/profile", headers=world["ha"])
    assert r.status_code == 200 and r.json()["npi"] == a.npi and r.json()["last_name"] == "Houngbédji"
    r = await client.get(f"/api/users/{a.id}/roles", headers=world["ha"])
    assert r.status_code == 200
    assert r.json()["roles"] == ["citizen"] and r.json()["permissions"] == ["registrations:submit"]


async def test_list_paginates_filters_and_searches(client, world):
    h = world["hagent"]
    r = await client.get("/api/users", params={"limit": 2}, headers=h)
    page = r.json()
    assert r.status_code == 200 and len(page["items"]) == 2 and page["next_cursor"]
    r = await client.get("/api/users", params={"limit": 2, "cursor": page["next_cursor"]}, headers=h)
    second = r.json()["items"]
    assert len(second) == 2 and r.json()["next_cursor"] is None, "four users in all"
    assert {u["id"] for u in second}.isdisjoint({u["id"] for u in page["items"]})
    r = await client.get("/api/users", params={"role": "citizen"}, headers=h)
    assert {u["id"] for u in r.json()["items"]} == {str(world["a"].id), str(world["b"].id)}
    r = await client.get("/api/users", params={"status": "inactive"}, headers=h)
    assert r.json()["items"] == []
    searches = {
        "houngb": world["a"],  # name, case-insensitive
        "aicha houngbedji": world["a"],  # accents ignored, first-last order
        "ZINSOU MARC": world["b"],  # last-first order
        "marc dossou": None,
        "marc zinsou": world["b"],
        world["b"].npi: world["b"],
        "AICHA@example": world["a"],
        world["b"].phone[-6:]: world["b"],
    }
    for q, expected in searches.items():
        r = await client.get("/api/users", params={"q": q}, headers=h)
        ids = [u["id"] for u in r.json()["items"]]
        assert ids == ([str(expected.id)] if expected else []), q
    # LIKE wildcards in the search are literal characters.
    r = await client.get("/api/users", params={"q": "%"}, headers=h)
    assert r.json()["items"] == []
    r = await client.get("/api/users", params={"status": "nonsense"}, headers=h)
    assert r.status_code == 400


async def test_roles_catalogue(client, world):
    r = await client.get("/api/roles", headers=world["ha"])
    assert r.status_code == 200
    roles = {x["code"]: x["permissions"] for x in r.json()}
    assert set(roles) == {"citizen", "company", "affiliate", "agent", "validator", "supervisor", "police", "admin"}
    assert "users:roles" in roles["admin"] and "users:roles" not in roles["supervisor"]
    assert roles["police"] == ["vehicles:lookup"]


# --- changes and mass assignment --------------------------------------------------------------------


async def test_self_update_emits_contact_changed(runtime, client, world):
    a = world["a"]
    new_phone = phone()
    r = await client.put(f"/api/users/{a.id}", json={"language": "en"}, headers=world["ha"])
    assert r.status_code == 200, r.text
    assert r.json()["language"] == "en"
    # One's own email changes only with the password and a code to the new address (test_email_change).
    r = await client.put(f"/api/users/{a.id}", json={"email": "New@Example.bj"}, headers=world["ha"])
    assert r.status_code == 403 and r.json()["code"] == "email_change_needs_code"
    r = await client.put(f"/api/users/{a.id}", json={"email": "New@Example.bj"}, headers=world["hadmin"])
    assert r.status_code == 200 and r.json()["email"] == "new@example.bj"
    (told,) = [e for e in await events(runtime, "UserEmailChanged") if e["user_id"] == str(a.id)]
    assert told["old_email"] == "aicha@example.bj" and told["new_email"] == "new@example.bj"
    # The phone receives sign-in codes: a token alone (perhaps stolen) cannot move it elsewhere.
    r = await client.put(f"/api/users/{a.id}", json={"phone": new_phone}, headers=world["ha"])
    assert r.status_code == 403 and r.json()["code"] == "phone_change_not_self_service"
    r = await client.put(f"/api/users/{a.id}", json={"phone": new_phone}, headers=world["hadmin"])
    assert r.status_code == 200 and r.json()["phone"] == new_phone
    changed = [e for e in await events(runtime, "UserContactChanged") if e["user_id"] == str(a.id)]
    assert changed[-1]["phone"] == new_phone and changed[-1]["language"] == "en"
    assert changed[-1]["email"] == "new@example.bj"
    # Someone else's email is a conflict.
    r = await client.put(f"/api/users/{world['b'].id}", json={"email": "new@example.bj"}, headers=world["hadmin"])
    assert r.status_code == 409 and r.json()["code"] == "email_taken"


@pytest.mark.parametrize(
    "field,value",
    [("roles", ["admin"]), ("kyc_status", "kyc_verified"), ("status", "active"), ("id", str(uuid.uuid4()))],
)
async def test_mass_assignment_is_refused(client, world, field, value):
    a = world["a"]
    for path in (f"/api/users/{a.id}", f"/api/users/{a.id}/profile"):
        r = await client.put(path, json={field: value}, headers=world["ha"])
        assert r.status_code == 400, (path, r.text)
        assert field in r.text  # the problem names the refused field
    r = await client.get(f"/api/users/{a.id}/roles", headers=world["ha"])
    assert r.json()["roles"] == ["citizen"]
    r = await client.get(f"/api/users/{a.id}", headers=world["ha"])
    assert r.json()["kyc_status"] == "unverified" and r.json()["id"] == str(a.id)


async def test_profile_update_and_wrong_kind_fields(client, world):
    a = world["a"]
    body = {
        "birth_date": "1990-04-01",
        "sex": "F",
        "address": {"line1": "Lot 12, Haie Vive", "city": "Cotonou", "department": "Littoral"},
    }
    r = await client.put(f"/api/users/{a.id}/profile", json=body, headers=world["ha"])
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["birth_date"] == "1990-04-01" and p["address"]["city"] == "Cotonou" and p["address"]["country"] == "BJ"
    assert p["last_name"] == "Houngbédji"  # absent fields unchanged
    r = await client.put(f"/api/users/{a.id}/profile", json={"birth_date": "2999-01-01"}, headers=world["ha"])
    assert r.status_code == 422 and r.json()["code"] == "invalid_birth_date"
    r = await client.put(f"/api/users/{a.id}/profile", json={"ifu": "1234567890123"}, headers=world["ha"])
    assert r.status_code == 422 and r.json()["fields"] == ["ifu"]


async def test_company_profile_and_representatives(client, world):
    h = world["hadmin"]
    r = await client.post(
        "/api/users",
        json={
            "kind": "company",
            "roles": ["company"],
            "phone": phone(),
            "company_name": "Sobebra SA",
            "ifu": "3201900012345",
        },
        headers=h,
    )
    assert r.status_code == 201, r.text
    company = r.json()
    cid = company["id"]
    assert company["display_name"] == "Sobebra SA"
    # A representative may not appoint themselves.
    r = await client.put(
        f"/api/users/{cid}/profile", json={"representatives": [{"user_id": str(world["a"].id)}]}, headers=world["ha"]
    )
    assert r.status_code == 404
    r = await client.put(
        f"/api/users/{cid}/profile",
        json={"rccm": "RB/COT/19 B 1234", "representatives": [{"user_id": str(world["a"].id), "title": "DG"}]},
        headers=h,
    )
    assert r.status_code == 200, r.text
    assert r.json()["representatives"] == [{"user_id": str(world["a"].id), "title": "DG"}]
    # Now A reads and edits the company profile, but cannot change its representatives; B cannot see it.
    assert (await client.get(f"/api/users/{cid}/profile", headers=world["ha"])).status_code == 200
    r = await client.put(f"/api/users/{cid}/profile", json={"company_name": "Sobebra"}, headers=world["ha"])
    assert r.status_code == 200 and r.json()["company_name"] == "Sobebra"
    r = await client.put(
        f"/api/users/{cid}/profile", json={"representatives": [{"user_id": str(world["b"].id)}]}, headers=world["ha"]
    )
    assert r.status_code == 403
    assert (await client.get(f"/api/users/{cid}/profile", headers=world["hb"])).status_code == 404
    # A staff account cannot represent a company.
    r = await client.put(
        f"/api/users/{cid}/profile", json={"representatives": [{"user_id": str(world["agent"].id)}]}, headers=h
    )
    assert r.status_code == 422 and r.json()["code"] == "invalid_representative"


# --- roles --------------------------------------------------------------------------------------------


async def test_admin_assigns_roles_with_history_and_event(runtime, client, world):
    b, h = world["b"], world["hadmin"]
    r = await client.put(f"/api/users/{b.id}/roles", json={"roles": ["citizen", "affiliate"]}, headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["roles"] == ["affiliate", "citizen"]
    assert "vehicles:file" in body["permissions"]
    last = body["history"][0]
    assert last["by"] == str(world["admin"].id) and last["old_roles"] == ["citizen"]
    assert last["new_roles"] == ["affiliate", "citizen"]
    mine = (await client.get(f"/api/users/{b.id}/roles", headers=world["hb"])).json()
    assert mine["roles"] == ["affiliate", "citizen"] and mine["history"] == []  # staff names stay with staff
    changed = await events(runtime, "UserRolesChanged")
    assert changed[-1]["user_id"] == str(b.id) and changed[-1]["roles"] == ["affiliate", "citizen"]
    r = await client.put(f"/api/users/{b.id}/roles", json={"roles": ["emperor"]}, headers=h)
    assert r.status_code == 422 and r.json()["code"] == "unknown_role"
    # Nobody changes their own roles, not even an admin.
    r = await client.put(f"/api/users/{world['admin'].id}/roles", json={"roles": ["citizen"]}, headers=h)
    assert r.status_code == 403 and r.json()["code"] == "own_roles"


async def test_last_admin_keeps_the_role_and_stays_active(client, world, auth):
    admin = world["admin"]
    other = auth(*ADMIN, sub=str(uuid.uuid4()))  # a token-only admin (e.g. created in another process)
    r = await client.put(f"/api/users/{admin.id}/roles", json={"roles": ["agent"]}, headers=other)
    assert r.status_code == 409 and r.json()["code"] == "last_admin"
    r = await client.delete(f"/api/users/{admin.id}", headers=other)
    assert r.status_code == 409


# --- creation ----------------------------------------------------------------------------------------


async def test_admin_creates_staff(runtime, client, world):
    body = {"roles": ["agent"], "email": "Agent.Two@simveb.test", "last_name": "Dossa", "first_name": "Jean"}
    r = await client.post("/api/users", json=body, headers=world["hadmin"])
    assert r.status_code == 201, r.text
    user = r.json()
    assert user["status"] == "active" and user["kind"] == "staff" and user["roles"] == ["agent"]
    assert user["email"] == "agent.two@simveb.test"
    found = await runtime.bus.ask(ResolveLogin(identifier="AGENT.TWO@simveb.test"))
    assert found.permissions == [
        "documents:read",
        "documents:validate",
        "integrations:lookup",
        "notifications:send",
        "payments:confirm",
        "registrations:deliver",
        "registrations:print",
        "registrations:verify",
        "users:kyc",
        "users:read",
        "vehicles:lookup",
        "vehicles:read",
        "vehicles:standing",
        "vehicles:write",
    ]
    r = await client.post("/api/users", json=body, headers=world["hadmin"])
    assert r.status_code == 409 and r.json()["code"] == "email_taken"
    r = await client.post(
        "/api/users", json={**body, "email": "x@simveb.test", "status": "active"}, headers=world["hadmin"]
    )
    assert r.status_code == 400 and "status" in r.json()["detail"]
    r = await client.post("/api/users", json={"roles": ["agent"]}, headers=world["hadmin"])
    assert r.status_code == 422 and r.json()["code"] == "contact_required"
    created = [e for e in await events(runtime, "UserContactChanged") if e["user_id"] == user["id"]]
    assert created and created[0]["email"] == "agent.two@simveb.test"


# --- self-registration -----------------------------------------------------------------------------


async def test_self_registration_answers_alike_whatever_exists(runtime, client, world):
    n, p = npi(), phone()
    body = {"npi": n, "phone": p, "last_name": "Adjovi", "first_name": "Rose", "language": "fr"}
    first = await client.post("/api/users", json=body)
    assert first.status_code == 202, first.text
    assert first.json()["status"] == "pending_confirmation"
    if runtime.bus.handles(RequestOtp):  # auth runs here: its challenge is what verify-otp completes
        assert first.json()["challenge_id"] and first.json()["resend_after_s"] >= 0
    pending = await runtime.bus.ask(ResolveLogin(identifier=p))
    assert pending.status == "pending" and pending.roles == ["citizen"] and pending.npi == n
    variants = [
        body,  # the same registration again (a new code is sent)
        {**body, "phone": phone()},  # someone else's NPI
        {**body, "npi": npi()},  # someone else's phone
        {**body, "npi": world["a"].npi, "phone": world["a"].phone},  # an active account
    ]
    for v in variants:
        r = await client.post("/api/users", json=v)
        assert r.status_code == 202, r.text
        assert set(r.json()) == set(first.json()) and r.json()["detail"] == first.json()["detail"]
    with pytest.raises(NotFound):
        await runtime.bus.ask(ResolveLogin(identifier=variants[1]["phone"]))
    confirmed = await runtime.bus.ask(ConfirmRegistration(user_id=pending.user_id))
    assert confirmed.status == "active"
    assert (await runtime.bus.ask(ResolveLogin(identifier=n))).status == "active"


async def test_self_registration_validates_and_refuses_privileged_fields(client, world):
    good = {"npi": npi(), "phone": phone(), "last_name": "Adjovi", "first_name": "Rose"}
    r = await client.post("/api/users", json={**good, "npi": "12345"})
    assert r.status_code == 400 and "npi" in r.json()["detail"]
    r = await client.post("/api/users", json={**good, "phone": "+22997000000"})
    assert r.status_code == 400 and "phone" in r.json()["detail"]
    for field, value in (("roles", ["admin"]), ("kyc_status", "kyc_verified"), ("status", "active")):
        r = await client.post("/api/users", json={**good, field: value})
        assert r.status_code == 400 and field in r.json()["detail"], field
    r = await client.post("/api/users", json={**good, "birth_date": "2999-01-01"})
    assert r.status_code == 422 and r.json()["code"] == "invalid_birth_date"


# --- deactivation and KYC ------------------------------------------------------------------------------


async def test_deactivation_keeps_everything_and_emits(runtime, client, world):
    b = world["b"]
    r = await client.delete(f"/api/users/{b.id}", headers=world["hadmin"])
    assert r.status_code == 200 and r.json()["status"] == "inactive"
    r = await client.get(f"/api/users/{b.id}/profile", headers=world["hadmin"])
    assert r.json()["first_name"] == "Marc"
    gone = await events(runtime, "UserDeactivated")
    assert gone[-1] == {"msg_type": "UserDeactivated", "user_id": str(b.id), "by": str(world["admin"].id)}
    r = await client.put(f"/api/users/{b.id}", json={"language": "en"}, headers=world["hadmin"])
    assert r.status_code == 409 and r.json()["code"] == "account_inactive"
    async with runtime.db.pool.acquire() as con:
        actions = [
            r["action"]
            for r in await con.fetch("SELECT action FROM users.user_history WHERE user_id = $1 ORDER BY id", b.id)
        ]
    assert actions == ["created", "deactivated"]
    # A citizen may close their own account.
    r = await client.delete(f"/api/users/{world['a'].id}", headers=world["ha"])
    assert r.status_code == 200 and r.json()["status"] == "inactive"


async def test_kyc_needs_npi_verification_an_agent_and_not_oneself(runtime, client, world, auth):
    a = world["a"]
    r = await client.post(f"/api/users/{a.id}/kyc", headers=world["hagent"])  # the body is optional
    assert r.status_code == 409 and r.json()["code"] == "npi_not_verified"
    async with runtime.db.pool.acquire() as con:
        await con.execute("UPDATE users.users SET kyc_status = 'npi_verified' WHERE id = $1", a.id)
    r = await client.post(f"/api/users/{a.id}/kyc", json={}, headers=world["ha"])
    assert r.status_code == 403
    agent_self = auth(*AGENT, sub=str(a.id))
    r = await client.post(f"/api/users/{a.id}/kyc", json={}, headers=agent_self)
    assert r.status_code == 403 and r.json()["code"] == "own_kyc"
    r = await client.post(f"/api/users/{a.id}/kyc", json={"note": "documents seen"}, headers=world["hagent"])
    assert r.status_code == 200 and r.json()["kyc_status"] == "kyc_verified"
    r = await client.post(f"/api/users/{a.id}/kyc", json={"kyc_status": "x"}, headers=world["hagent"])
    assert r.status_code == 400
    # Verified names are locked for the user; an admin correction resets the verification.
    r = await client.put(f"/api/users/{a.id}/profile", json={"last_name": "Other"}, headers=world["ha"])
    assert r.status_code == 409 and r.json()["code"] == "identity_locked" and r.json()["fields"] == ["last_name"]
    r = await client.put(f"/api/users/{a.id}/profile", json={"last_name": "Other"}, headers=world["hadmin"])
    assert r.status_code == 200 and r.json()["kyc_status"] == "unverified"


async def test_the_account_body_is_typed_in_openapi(client) -> None:
    """POST /api/users declares its body (both variants' fields) instead of decoding it by hand."""
    doc = (await client.get("/schema/openapi.json")).json()
    body = doc["paths"]["/api/users"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = doc["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
    assert {"npi", "phone", "last_name", "first_name", "roles", "kind", "password"} <= set(schema["properties"])
    assert schema["properties"]["npi"]["pattern"] == "^[0-9]{10}$"


async def test_an_anonymous_registration_cannot_carry_account_fields(client, runtime) -> None:
    """The mass-assignment attack on the typed body: roles (or a password) sent without a token is a
    400 naming the field, and no account is created."""
    from tests.users_support import npi, phone

    n, p = npi(), phone()
    body = {"npi": n, "phone": p, "last_name": "Attaquant", "first_name": "Eve", "roles": ["admin"]}
    r = await client.post("/api/users", json=body)
    assert r.status_code == 400 and "roles" in r.json()["detail"], r.text
    r = await client.post("/api/users", json={**{k: v for k, v in body.items() if k != "roles"}, "password": "x" * 12})
    assert r.status_code == 400 and "password" in r.json()["detail"], r.text
    with pytest.raises(NotFound):
        await runtime.bus.ask(ResolveLogin(identifier=p))
