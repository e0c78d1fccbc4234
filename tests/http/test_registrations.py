"""The /api/immatriculations routes driven as the real roles would: the whole life of each procedure,
and every refusal (standing, illegal transition, wrong role, another applicant's request, stale retry)."""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from simveb.config import Settings
from simveb.runtime import Runtime
from tests.conftest import fresh_runtime
from tests.registrations_support import DECLARED_ONLY, FIRST_DOCS, Person, new_vehicle, pay_at_counter, person
from tests.support import wait_for
from tests.users_support import events

PLATE = re.compile(r"^[A-HJ-NP-Z]{2} \d{4} RB$")


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """All actors but documents: these tests declare documents instead of uploading them."""
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


async def file_first(api: Any, who: Person, **over: Any) -> dict[str, Any]:
    body = {"vehicle": new_vehicle(model="406"), "declared_documents": FIRST_DOCS, **over}
    r = await api.post("/api/immatriculations", json=body, headers=who.headers)
    assert r.status_code == 201, r.text
    return r.json()


async def move(api: Any, who: Person, rid: str, status: str, note: str = "") -> dict[str, Any]:
    if status == "paid":
        return await pay_at_counter(api, who, rid)  # payments runs here: paid only through it
    r = await api.put(f"/api/immatriculations/{rid}/status", json={"status": status, "note": note}, headers=who.headers)
    assert r.status_code == 200, r.text
    return r.json()


async def drive_to_validated(w: dict[str, Any], req: dict[str, Any]) -> dict[str, Any]:
    api, agent, validator = w["client"], w["agent"], w["validator"]
    rid = req["id"]
    paid = await move(api, agent, rid, "paid", "paid at the counter")
    assert paid["status"] == "assigned_to_staff" and paid["assignee_id"] == str(agent.id)
    await move(api, agent, rid, "verified")
    await move(api, agent, rid, "pre_validated")
    r = await api.post(f"/api/immatriculations/{rid}/validate", json={"note": "ok"}, headers=validator.headers)
    assert r.status_code == 200, r.text
    return r.json()


async def test_first_registration_whole_life(world: dict[str, Any]) -> None:
    api, citizen, agent, validator = world["client"], world["citizen"], world["agent"], world["validator"]
    rt: Runtime = world["runtime"]
    req = await file_first(api, citizen)
    # Documents declared complete: filing submits it and asks for the payment of the frozen fee.
    assert req["status"] == "waiting_for_payment"
    assert req["fee_total_xof"] == 25_000 + 35_000 and req["applicant_id"] == str(citizen.id)
    assert {line["amount_xof"] for line in req["fee_lines"]} >= {25_000, 35_000}
    asked = await events(rt, "PaymentRequested")
    assert asked[-1]["payable_id"] == req["id"] and asked[-1]["amount_xof"] == 60_000
    assert sum(line["amount_xof"] for line in asked[-1]["lines"]) == 60_000

    done = await drive_to_validated(world, req)
    assert done["status"] == "validated" and PLATE.match(done["plate"]), done["plate"]
    assert done["plate"] == "AA 0001 RB"

    # The plate reaches the vehicle by event; its history names the request.
    async def vehicle_plate() -> Any:
        r = await api.get(f"/api/vehicles/{req['vehicle_id']}", headers=citizen.headers)
        return r.json().get("plate")

    assert await wait_for(vehicle_plate) == done["plate"]
    hist = (await api.get(f"/api/vehicles/{req['vehicle_id']}/history", headers=agent.headers)).json()["items"]
    assert any(h["field"] == "plate" and req["id"] in h["reason"] for h in hist), hist
    validated = await events(rt, "RegistrationValidated")
    assert validated[-1]["plate"] == done["plate"] and validated[-1]["holder_ids"] == [str(citizen.id)]

    for status in ("print_order_emitted", "printed", "given_to_applicant", "closed"):
        await move(api, agent, req["id"], status)

    # The citizen's story: only the visible steps; the agent sees every step.
    mine = (await api.get(f"/api/immatriculations/{req['id']}/workflow", headers=citizen.headers)).json()
    seen = [s["to_status"] for s in mine["steps"]]
    assert seen == ["pending", "submitted", "waiting_for_payment", "paid", "validated", "given_to_applicant", "closed"]
    assert mine["next"] == [] and mine["status"] == "closed"
    full = (await api.get(f"/api/immatriculations/{req['id']}/workflow", headers=agent.headers)).json()
    assert [s["to_status"] for s in full["steps"]][3:7] == ["paid", "assigned_to_staff", "verified", "pre_validated"]
    # Paid by the payments service's event (the agent's cash receipt there), not by a person's step.
    assert full["steps"][3]["by"] == "payments:cash"

    # Notifications: one in-app message per visible change, none for the hidden ones.
    async def in_app() -> list[Any]:
        assert rt.db is not None
        async with rt.db.connection() as con:
            return await con.fetch(
                "SELECT body FROM notifications.messages WHERE user_id = $1 AND channel = 'in_app'"
                " AND template_event = 'status_changed'",
                citizen.id,
            )

    await wait_for(lambda: _len_is(in_app, 6), timeout=10)
    bodies = [r["body"] for r in await in_app()]
    assert any("closed" in b and req["number"] in b for b in bodies)
    assert not any("statut verified" in b or "status verified" in b for b in bodies)
    assert validator.id  # the validator took the validating step
    assert full["steps"][7]["by"] == str(validator.id)


async def _len_is(fetch: Any, n: int) -> bool:
    return len(await fetch()) == n


async def test_workflow_tells_each_caller_what_they_may_do_next(world: dict[str, Any]) -> None:
    api, citizen, agent, validator = world["client"], world["citizen"], world["agent"], world["validator"]
    req = await file_first(api, citizen)
    wf = (await api.get(f"/api/immatriculations/{req['id']}/workflow", headers=agent.headers)).json()
    assert [t["to_status"] for t in wf["next"]] == ["paid"]
    assert (await api.get(f"/api/immatriculations/{req['id']}/workflow", headers=citizen.headers)).json()["next"] == []
    await move(api, agent, req["id"], "paid")
    wf = (await api.get(f"/api/immatriculations/{req['id']}/workflow", headers=agent.headers)).json()
    assert {t["to_status"] for t in wf["next"]} == {"verified", "rejected"}
    # The validator cannot see a request that waits for an agent's verification.
    r = await api.get(f"/api/immatriculations/{req['id']}", headers=validator.headers)
    assert r.status_code == 404


async def test_an_agent_cannot_mark_paid_around_the_payments_service(world: dict[str, Any]) -> None:
    """The attack: an agent with payments:confirm moves the request to paid directly, leaving the payable
    open (no invoice, payable again by mobile money). Refused; the counter payment goes through payments."""
    api, citizen, agent = world["client"], world["citizen"], world["agent"]
    assert "payments:confirm" in agent.permissions
    req = await file_first(api, citizen)
    for key in (None, "mark-paid-1"):
        headers = agent.headers if key is None else {**agent.headers, "Idempotency-Key": key}
        r = await api.put(
            f"/api/immatriculations/{req['id']}/status", json={"status": "paid", "note": "cash"}, headers=headers
        )
        assert r.status_code == 409, r.text
        body = r.json()
        assert body["code"] == "pay_through_payments"
        assert f"/api/payments/{req['id']}/confirm" in body["detail"]
    still = (await api.get(f"/api/immatriculations/{req['id']}", headers=citizen.headers)).json()
    assert still["status"] == "waiting_for_payment" and still["amount_paid_xof"] == 0
    # Paying at the payments counter moves it to paid (then to an agent) and issues an invoice.
    paid = await pay_at_counter(api, agent, req["id"])
    assert paid["status"] == "assigned_to_staff" and paid["amount_paid_xof"] == req["fee_total_xof"]
    pay = (await api.get(f"/api/payments/{req['id']}", headers=citizen.headers)).json()["payment"]
    assert pay["status"] == "succeeded" and pay["provider"] == "cash" and pay["invoice_number"]
    assert paid["payment_id"] == pay["id"]
    invoice = await api.get(f"/api/payments/invoice/{pay['invoice_id']}", headers=citizen.headers)
    assert invoice.status_code == 200 and invoice.json()["total_xof"] == req["fee_total_xof"]
    # The payable is closed: the payer cannot start a mobile-money payment for it afterwards.
    again = await api.post(
        "/api/payments/initiate", json={"payable_id": req["id"], "provider": "fedapay"}, headers=citizen.headers
    )
    assert again.status_code == 409, again.text


async def test_illegal_transition_is_409_naming_current_and_allowed(world: dict[str, Any]) -> None:
    api, citizen, agent = world["client"], world["citizen"], world["agent"]
    req = await file_first(api, citizen)
    r = await api.put(f"/api/immatriculations/{req['id']}/status", json={"status": "validated"}, headers=agent.headers)
    assert r.status_code == 409
    body = r.json()
    assert body["code"] == "illegal_transition" and body["current"] == "waiting_for_payment"
    assert body["allowed"] == ["paid"]


async def test_wrong_role_is_refused(world: dict[str, Any]) -> None:
    api, citizen, agent, validator = world["client"], world["citizen"], world["agent"], world["validator"]
    req = await file_first(api, citizen)
    # The applicant tries to mark their own request paid.
    r = await api.put(f"/api/immatriculations/{req['id']}/status", json={"status": "paid"}, headers=citizen.headers)
    assert r.status_code == 403
    await move(api, agent, req["id"], "paid")
    await move(api, agent, req["id"], "verified")
    await move(api, agent, req["id"], "pre_validated")
    # An agent (verify) tries to validate.
    r = await api.post(f"/api/immatriculations/{req['id']}/validate", headers=agent.headers)
    assert r.status_code == 403
    # A citizen cannot file as an affiliate for someone else.
    other = await person(world["runtime"], "citizen")
    r = await api.post(
        "/api/immatriculations",
        json={"vehicle": new_vehicle(), "applicant_id": str(other.id)},
        headers=citizen.headers,
    )
    assert r.status_code == 403 and r.json()["code"] == "not_affiliate"
    # Staff cannot file.
    r = await api.post("/api/immatriculations", json={"vehicle": new_vehicle()}, headers=validator.headers)
    assert r.status_code == 403


async def test_another_applicants_request_is_404(world: dict[str, Any]) -> None:
    api, citizen = world["client"], world["citizen"]
    req = await file_first(api, citizen)
    intruder = await person(world["runtime"], "citizen")
    for path in ("", "/workflow"):
        r = await api.get(f"/api/immatriculations/{req['id']}{path}", headers=intruder.headers)
        assert r.status_code == 404
    r = await api.put(
        f"/api/immatriculations/{req['id']}/status", json={"status": "canceled"}, headers=intruder.headers
    )
    assert r.status_code == 404
    page = (await api.get("/api/immatriculations", headers=intruder.headers)).json()
    assert page["items"] == []
    mine = (await api.get("/api/immatriculations", headers=citizen.headers)).json()
    assert [i["id"] for i in mine["items"]] == [req["id"]]


async def test_documents_missing_keep_the_request_pending(world: dict[str, Any]) -> None:
    api, citizen = world["client"], world["citizen"]
    req = await file_first(api, citizen, declared_documents=["owner_identity"])
    assert req["status"] == "pending"
    r = await api.put(
        f"/api/immatriculations/{req['id']}/status", json={"status": "submitted"}, headers=citizen.headers
    )
    assert r.status_code == 409 and r.json()["code"] == "documents_missing"
    assert "customs_clearance" in r.json()["missing"]
    r = await api.put(
        f"/api/immatriculations/{req['id']}/status",
        json={"status": "submitted", "declared_documents": FIRST_DOCS},
        headers=citizen.headers,
    )
    assert r.status_code == 200 and r.json()["status"] == "waiting_for_payment"


async def test_idempotency_key_replays_the_first_answer(world: dict[str, Any]) -> None:
    api, citizen = world["client"], world["citizen"]
    body = {"vehicle": new_vehicle(), "declared_documents": FIRST_DOCS}
    headers = {**citizen.headers, "Idempotency-Key": "file-1"}
    first = await api.post("/api/immatriculations", json=body, headers=headers)
    again = await api.post("/api/immatriculations", json=body, headers=headers)
    assert first.status_code == 201 and again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    page = (await api.get("/api/immatriculations", headers=citizen.headers)).json()
    assert len(page["items"]) == 1
    # The same key with another body is refused.
    other = {"vehicle": new_vehicle(), "declared_documents": FIRST_DOCS}
    r = await api.post("/api/immatriculations", json=other, headers=headers)
    assert r.status_code == 422 and r.json()["code"] == "idempotency_key_reused"
    # Another user's same key is theirs alone.
    someone = await person(world["runtime"], "citizen")
    r = await api.post("/api/immatriculations", json=other, headers={**someone.headers, "Idempotency-Key": "file-1"})
    assert r.status_code == 201 and r.json()["id"] != first.json()["id"]


async def test_stale_retry_of_a_step_is_409(world: dict[str, Any]) -> None:
    api, citizen, agent = world["client"], world["citizen"], world["agent"]
    req = await file_first(api, citizen)
    await move(api, agent, req["id"], "paid")
    # A second click on "paid" (no key): the request moved on, so it is an illegal transition now.
    r = await api.put(f"/api/immatriculations/{req['id']}/status", json={"status": "paid"}, headers=agent.headers)
    assert r.status_code == 409 and r.json()["current"] == "assigned_to_staff"


async def test_reject_needs_a_reason_and_resubmission_goes_back_to_the_agent(world: dict[str, Any]) -> None:
    api, citizen, agent = world["client"], world["citizen"], world["agent"]
    req = await file_first(api, citizen)
    await move(api, agent, req["id"], "paid")
    r = await api.post(f"/api/immatriculations/{req['id']}/reject", json={}, headers=agent.headers)
    assert r.status_code == 400
    r = await api.post(
        f"/api/immatriculations/{req['id']}/reject", json={"reason": "invoice unreadable"}, headers=agent.headers
    )
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    again = await move(api, citizen, req["id"], "resubmitted")
    assert again["status"] == "assigned_to_staff" and again["assignee_id"] == str(agent.id)
    steps = (await api.get(f"/api/immatriculations/{req['id']}/workflow", headers=citizen.headers)).json()["steps"]
    assert any(s["to_status"] == "rejected" and s["note"] == "invoice unreadable" for s in steps)


async def test_standing_blocks_filing(world: dict[str, Any]) -> None:
    api, citizen, agent, validator = world["client"], world["citizen"], world["agent"], world["validator"]
    req = await file_first(api, citizen)
    await drive_to_validated(world, req)
    vid = req["vehicle_id"]
    buyer = await person(world["runtime"], "citizen")
    # A pledge blocks a transfer but not a renewal.
    r = await api.post(f"/api/vehicles/{vid}/pledges", json={"holder": "BOA"}, headers=agent.headers)
    assert r.status_code == 201, r.text
    r = await api.post(
        "/api/immatriculations/transfer",
        json={"vehicle_id": vid, "new_owners": [str(buyer.id)], "seller_consent": True},
        headers=citizen.headers,
    )
    assert r.status_code == 409 and r.json()["code"] == "transfer_blocked"
    assert any(x["code"] == "pledge" for x in r.json()["reasons"])
    r = await api.post("/api/immatriculations/renewal", json={"vehicle_id": vid}, headers=citizen.headers)
    assert r.status_code == 201
    # Theft blocks everything.
    vehicle = (await api.get(f"/api/vehicles/{vid}", headers=agent.headers)).json()
    r = await api.post(
        f"/api/vehicles/{vid}/status",
        json={"status": "stolen", "version": vehicle["version"]},
        headers=agent.headers,
    )
    assert r.status_code == 200, r.text
    r = await api.post(
        "/api/immatriculations/duplicate", json={"vehicle_id": vid, "reason": "stolen"}, headers=citizen.headers
    )
    assert r.status_code == 409 and r.json()["code"] == "registration_blocked"
    assert validator.id


async def test_transfer_whole_life(world: dict[str, Any]) -> None:
    api, citizen, agent = world["client"], world["citizen"], world["agent"]
    first = await drive_to_validated(world, await file_first(api, citizen))
    vid = first["vehicle_id"]
    buyer = await person(world["runtime"], "citizen")
    body = {"vehicle_id": vid, "new_owners": [str(buyer.id)], "seller_consent": False}
    r = await api.post("/api/immatriculations/transfer", json=body, headers=citizen.headers)
    assert r.status_code == 422 and r.json()["code"] == "consent_required"
    r = await api.post(
        "/api/immatriculations/transfer",
        json={**body, "new_owners": [str(uuid.uuid4())], "seller_consent": True},
        headers=citizen.headers,
    )
    assert r.status_code == 422 and r.json()["code"] == "unknown_user"
    docs = ["carte_grise", "sale_certificate", "owner_identity", "buyer_identity"]
    r = await api.post(
        "/api/immatriculations/transfer",
        json={**body, "seller_consent": True, "declared_documents": docs},
        headers=citizen.headers,
    )
    assert r.status_code == 201, r.text
    req = r.json()
    assert req["procedure"] == "transfer" and req["fee_total_xof"] == 20_000 + 35_000
    assert req["details"]["seller_consent_by"] == str(citizen.id)
    done = await drive_to_validated(world, req)
    assert done["plate"] == first["plate"]  # a transfer keeps the plate

    async def owners() -> Any:
        v = (await api.get(f"/api/vehicles/{vid}", headers=agent.headers)).json()
        return v["owners"] == [str(buyer.id)]

    await wait_for(owners)
    hist = (await api.get(f"/api/vehicles/{vid}/history", headers=agent.headers)).json()["items"]
    assert any(h["field"] == "owners" and req["id"] in h["reason"] for h in hist)
    rt: Runtime = world["runtime"]
    assert rt.db is not None
    async with rt.db.connection() as con:
        row = await con.fetchrow(
            "SELECT * FROM registrations.transfer_history WHERE request_id = $1", uuid.UUID(req["id"])
        )
    assert row["new_owners"] == [buyer.id] and row["old_owners"] == [citizen.id] and row["consent_by"] == citizen.id


async def test_renewal_and_duplicates_keep_their_history(world: dict[str, Any]) -> None:
    api, citizen = world["client"], world["citizen"]
    rt: Runtime = world["runtime"]
    first = await drive_to_validated(world, await file_first(api, citizen))
    vid = first["vehicle_id"]
    r = await api.post(
        "/api/immatriculations/renewal",
        json={"vehicle_id": vid, "declared_documents": ["carte_grise", "owner_identity"]},
        headers=citizen.headers,
    )
    assert r.status_code == 201, r.text
    renewal = await drive_to_validated(world, r.json())
    r = await api.post(
        "/api/immatriculations/duplicate",
        json={"vehicle_id": vid, "reason": "lost", "declared_documents": ["loss_declaration", "owner_identity"]},
        headers=citizen.headers,
    )
    assert r.status_code == 201, r.text
    dup = await drive_to_validated(world, r.json())
    r = await api.post(
        "/api/immatriculations/duplicate",
        json={
            "vehicle_id": vid,
            "reason": "damaged",
            "of": "plate",
            "declared_documents": ["loss_declaration", "carte_grise"],
        },
        headers=citizen.headers,
    )
    assert r.status_code == 201, r.text
    plate_dup = await drive_to_validated(world, r.json())
    assert renewal["plate"] == dup["plate"] == plate_dup["plate"] == first["plate"]
    validated = {e["request_id"]: e for e in await events(rt, "RegistrationValidated")}
    assert validated[dup["id"]]["duplicate"] is True and validated[dup["id"]]["replaces_previous"] is True
    assert validated[renewal["id"]]["replaces_previous"] is True and validated[renewal["id"]]["duplicate"] is False
    assert rt.db is not None
    async with rt.db.connection() as con:
        assert (
            await con.fetchval(
                "SELECT count(*) FROM registrations.renewal_history WHERE vehicle_id = $1", uuid.UUID(vid)
            )
            == 1
        )
        rows = await con.fetch(
            "SELECT of_what, reason FROM registrations.duplicate_history WHERE vehicle_id = $1 ORDER BY id",
            uuid.UUID(vid),
        )
    assert [(r["of_what"], r["reason"]) for r in rows] == [("carte_grise", "lost"), ("plate", "damaged")]
    # The vehicle's history names each request, even those that change no field of the vehicle.

    async def registrations_in_history() -> list[Any]:
        hist = (await api.get(f"/api/vehicles/{vid}/history", headers=world["agent"].headers)).json()["items"]
        return [h for h in hist if h["field"] == "registration"]

    await wait_for(lambda: _len_is(registrations_in_history, 4))
    entries = await registrations_in_history()
    for req in (first, renewal, dup, plate_dup):
        assert any(req["id"] in h["reason"] and h["new_value"]["number"] == req["number"] for h in entries)


async def test_prestige_number_is_held_then_issued(world: dict[str, Any]) -> None:
    api, citizen = world["client"], world["citizen"]
    first = await drive_to_validated(world, await file_first(api, citizen))
    body = {
        "procedure": "prestige_number",
        "vehicle_id": first["vehicle_id"],
        "prestige_plate": "AA0007RB",  # spaced as the format writes it once held
        "declared_documents": ["owner_identity", "carte_grise"],
    }
    r = await api.post("/api/immatriculations", json=body, headers=citizen.headers)
    assert r.status_code == 201, r.text
    assert r.json()["fee_total_xof"] == 150_000 + 35_000
    prestige = r.json()
    # Someone else wants the same number: held.
    other = await person(world["runtime"], "citizen")
    theirs = await drive_to_validated(world, await file_first(api, other))
    r = await api.post(
        "/api/immatriculations", json={**body, "vehicle_id": theirs["vehicle_id"]}, headers=other.headers
    )
    assert r.status_code == 409 and r.json()["code"] == "plate_held"
    # The sequence skips the held number.
    plates = []
    for _ in range(6):
        plates.append((await drive_to_validated(world, await file_first(api, other)))["plate"])
    assert "AA 0007 RB" not in plates and "AA 0008 RB" in plates
    done = await drive_to_validated(world, prestige)
    assert done["plate"] == "AA 0007 RB"


async def test_supervisor_reassigns_sees_overdue_and_stats(world: dict[str, Any], settings: Any) -> None:
    api, citizen, agent = world["client"], world["citizen"], world["agent"]
    second = await person(world["runtime"], "agent")
    # A supervisor verifies too (the grid gives it registrations:verify): three verifiers.
    supervisor = await person(world["runtime"], "supervisor")
    a = await file_first(api, citizen)
    b = await file_first(api, citizen)
    c = await file_first(api, citizen)
    ra = await pay_at_counter(api, agent, a["id"], reader=citizen)
    rb = await pay_at_counter(api, agent, b["id"], reader=citizen)
    rc = await pay_at_counter(api, agent, c["id"], reader=citizen)
    # Fewest open requests: each verifier gets one.
    assert {ra["assignee_id"], rb["assignee_id"], rc["assignee_id"]} == {
        str(agent.id),
        str(second.id),
        str(supervisor.id),
    }

    queue = (await api.get("/api/immatriculations?assignee=me", headers=second.headers)).json()["items"]
    assert len(queue) == 1
    theirs = queue[0]["id"]
    # An agent cannot verify another agent's request; a supervisor moves it.
    mine_not = next(x["id"] for x in (ra, rb, rc) if x["assignee_id"] == str(agent.id))
    assert mine_not != theirs
    r = await api.put(f"/api/immatriculations/{mine_not}/status", json={"status": "verified"}, headers=second.headers)
    assert r.status_code == 404
    r = await api.put(
        f"/api/immatriculations/{mine_not}/assignee", json={"assignee_id": str(second.id)}, headers=supervisor.headers
    )
    assert r.status_code == 200 and r.json()["assignee_id"] == str(second.id)
    r = await api.put(
        f"/api/immatriculations/{mine_not}/assignee", json={"assignee_id": str(second.id)}, headers=agent.headers
    )
    assert r.status_code == 403
    assert len((await api.get("/api/immatriculations?assignee=me", headers=second.headers)).json()["items"]) == 2
    # Overdue: make the due time of assigned_to_staff tiny by back-dating the status clock.
    rt: Runtime = world["runtime"]
    assert rt.db is not None
    async with rt.db.connection() as con:
        await con.execute(
            "UPDATE registrations.requests SET status_since = now() - interval '3 days' WHERE id = $1",
            uuid.UUID(a["id"]),
        )
    over = (await api.get("/api/immatriculations/overdue", headers=supervisor.headers)).json()["items"]
    assert [i["id"] for i in over] == [a["id"]]
    assert (await api.get("/api/immatriculations/overdue", headers=agent.headers)).status_code == 403
    stats = (await api.get("/api/immatriculations/stats", headers=supervisor.headers)).json()
    assert {"key": "assigned_to_staff", "count": 3} in stats["by_status"]
    assert stats["amount_paid_xof"] == 180_000 and stats["amount_due_xof"] == 0
    assert any(s["to_status"] == "paid" for s in stats["median_step_s"])
    r = await api.get("/api/immatriculations/stats?format=csv", headers=supervisor.headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert ["by_status", "assigned_to_staff", "3"] in rows and ["amount", "paid_xof", "180000"] in rows
    assert (await api.get("/api/immatriculations/stats", headers=citizen.headers)).status_code == 403


async def test_affiliate_files_for_a_company_customer(world: dict[str, Any]) -> None:
    api, agent = world["client"], world["agent"]
    rt: Runtime = world["runtime"]
    dealer = await person(rt, "affiliate")
    customer = await person(rt, "company", kind="company", company_name="Sodeco SARL", ifu="3201910000001")
    body = {
        "vehicle": new_vehicle(),
        "applicant_id": str(customer.id),
        "owner_type": "company",
        "declared_documents": FIRST_DOCS,
    }
    r = await api.post("/api/immatriculations", json=body, headers=dealer.headers)
    assert r.status_code == 201, r.text
    req = r.json()
    assert req["applicant_id"] == str(customer.id) and req["filed_by"] == str(dealer.id)
    assert req["fee_total_xof"] == 25_000 + 35_000 + 5_000  # a company pays the owner-type adjustment
    for who in (dealer, customer):
        page = (await api.get("/api/immatriculations", headers=who.headers)).json()
        assert [i["id"] for i in page["items"]] == [req["id"]]
    done = await drive_to_validated(world, req)
    vehicle = (await api.get(f"/api/vehicles/{done['vehicle_id']}", headers=agent.headers)).json()
    assert vehicle["owners"] == [str(customer.id)]


async def test_cursor_pagination_and_filters(world: dict[str, Any]) -> None:
    api, citizen, agent = world["client"], world["citizen"], world["agent"]
    admin = await person(world["runtime"], "admin")
    made = [await file_first(api, citizen) for _ in range(5)]
    await move(api, agent, made[0]["id"], "paid")
    seen: list[str] = []
    cursor = None
    while True:
        q = "/api/immatriculations?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await api.get(q, headers=admin.headers)).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [m["id"] for m in reversed(made)]
    by_status = (await api.get("/api/immatriculations?status=assigned_to_staff", headers=admin.headers)).json()
    assert [i["id"] for i in by_status["items"]] == [made[0]["id"]]
    by_vehicle = (await api.get(f"/api/immatriculations?vehicle={made[3]['vehicle_id']}", headers=admin.headers)).json()
    assert [i["id"] for i in by_vehicle["items"]] == [made[3]["id"]]
    by_procedure = (await api.get("/api/immatriculations?procedure=transfer", headers=admin.headers)).json()
    assert by_procedure["items"] == []
    r = await api.get("/api/immatriculations?cursor=garbage", headers=admin.headers)
    assert r.status_code == 400 and r.json()["code"] == "invalid_cursor"


async def test_the_workflow_is_pinned_when_the_request_is_filed(world: dict[str, Any]) -> None:
    from simveb.actors.config.messages import GetService, ServiceFields, UpdateService, WorkflowStep

    api, citizen, agent = world["client"], world["citizen"], world["agent"]
    rt: Runtime = world["runtime"]
    assert rt.bus is not None
    old = await file_first(api, citizen)
    service = await rt.bus.ask(GetService(code="first_registration"))
    # The catalogue drops pre-validation: verified goes straight to validated.
    steps = [s for s in service.workflow if "pre_validated" not in (s.from_status, s.to_status)]
    steps.append(WorkflowStep(from_status="verified", to_status="validated", permission="registrations:validate"))
    fields = ServiceFields(
        label_fr=service.label_fr,
        label_en=service.label_en,
        required_documents=service.required_documents,
        workflow=steps,
    )
    await rt.bus.ask(UpdateService(code="first_registration", fields=fields, by="admin"))
    new = await file_first(api, citizen)
    for req in (old, new):
        await move(api, agent, req["id"], "paid")
        await move(api, agent, req["id"], "verified")
    # The open request keeps its pinned line; the new one follows the edited catalogue.
    assert (await move(api, agent, old["id"], "pre_validated"))["status"] == "pre_validated"
    r = await api.put(
        f"/api/immatriculations/{new['id']}/status", json={"status": "pre_validated"}, headers=agent.headers
    )
    assert r.status_code == 409 and "validated" in r.json()["allowed"]


async def test_plate_administration_over_http(world: dict[str, Any]) -> None:
    api, agent = world["client"], world["agent"]
    admin = await person(world["runtime"], "admin")
    r = await api.post(
        "/api/immatriculations/plates/reservations",
        json={"format_code": "car", "number_from": 1, "number_to": 3, "reason": "state"},
        headers=admin.headers,
    )
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert (await api.get("/api/immatriculations/plates/series", headers=agent.headers)).status_code == 403
    r = await api.post("/api/immatriculations/plates/reservations", json={"format_code": "car"}, headers=admin.headers)
    assert r.status_code == 422 and r.json()["code"] == "nothing_reserved"
    first = await drive_to_validated(world, await file_first(api, world["citizen"]))
    assert first["plate"] == "AA 0004 RB"
    series = (await api.get("/api/immatriculations/plates/series", headers=admin.headers)).json()
    car = next(s for s in series if s["format_code"] == "car")
    assert car["series"] == "AA" and car["next_number"] == 5 and car["issued"] == 1 and car["reserved_rules"] == 1
    r = await api.delete(f"/api/immatriculations/plates/reservations/{rid}", headers=admin.headers)
    assert r.status_code == 200 and r.json()["released_at"] is not None
    listed = (await api.get("/api/immatriculations/plates/reservations", headers=admin.headers)).json()
    assert listed == {"items": [], "next_cursor": None}


async def test_a_plate_already_on_another_vehicle_is_skipped(world: dict[str, Any]) -> None:
    """A collision with a plate the registry already holds (typed in by hand) is retried, not issued."""
    api, agent = world["client"], world["agent"]
    legacy = {"vin": "VF1LEGACY00000001", "make": "Peugeot", "model": "406", "energy": "Gazole", "plate": "aa0001rb"}
    r = await api.post("/api/vehicles", json=legacy, headers=agent.headers)
    assert r.status_code == 201, r.text
    done = await drive_to_validated(world, await file_first(api, world["citizen"]))
    assert done["plate"] == "AA 0002 RB"
    rt: Runtime = world["runtime"]
    assert rt.db is not None
    async with rt.db.connection() as con:
        row = await con.fetchrow(
            "SELECT taken_elsewhere, request_id FROM registrations.issued_plates WHERE plate = 'AA 0001 RB'"
        )
    assert row["taken_elsewhere"] is True and row["request_id"] is None
    # The next request does not get it either.
    assert (await drive_to_validated(world, await file_first(api, world["citizen"])))["plate"] == "AA 0003 RB"


async def test_a_retried_validation_returns_the_first_answer(world: dict[str, Any]) -> None:
    api, agent, validator = world["client"], world["agent"], world["validator"]
    req = await file_first(api, world["citizen"])
    for status in ("paid", "verified", "pre_validated"):
        await move(api, agent, req["id"], status)
    headers = {**validator.headers, "Idempotency-Key": f"validate-{req['id']}"}
    first = await api.post(f"/api/immatriculations/{req['id']}/validate", json={"note": "ok"}, headers=headers)
    again = await api.post(f"/api/immatriculations/{req['id']}/validate", json={"note": "ok"}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and first.json()["plate"] == "AA 0001 RB"
    # Without the key the same click is a stale retry: the request moved on.
    r = await api.post(f"/api/immatriculations/{req['id']}/validate", json={"note": "ok"}, headers=validator.headers)
    assert r.status_code == 409 and r.json()["current"] == "validated"
    # Same key, another body: refused.
    r = await api.post(f"/api/immatriculations/{req['id']}/validate", json={"note": "other"}, headers=headers)
    assert r.status_code == 422
    rt: Runtime = world["runtime"]
    assert rt.db is not None
    async with rt.db.connection() as con:
        assert await con.fetchval("SELECT count(*) FROM registrations.issued_plates") == 1


async def test_filing_again_after_a_cancel_takes_up_the_applicants_new_vehicle(world: dict[str, Any]) -> None:
    api, citizen = world["client"], world["citizen"]
    vehicle = new_vehicle()
    first = await file_first(api, citizen, vehicle=vehicle, declared_documents=[])
    assert first["status"] == "pending"
    r = await api.post("/api/immatriculations", json={"vehicle": vehicle}, headers=citizen.headers)
    assert r.status_code == 409 and r.json()["code"] == "request_already_open"
    await move(api, citizen, first["id"], "canceled")
    again = await file_first(api, citizen, vehicle=vehicle)
    assert again["vehicle_id"] == first["vehicle_id"] and again["id"] != first["id"]
    # Someone else's VIN is not taken up.
    other = await person(world["runtime"], "citizen")
    r = await api.post("/api/immatriculations", json={"vehicle": vehicle}, headers=other.headers)
    assert r.status_code == 409 and r.json()["code"] == "vin_exists"
    # A registered vehicle is not registered a first time again.
    done = await drive_to_validated(world, again)

    async def plated() -> bool:
        v = (await api.get(f"/api/vehicles/{done['vehicle_id']}", headers=citizen.headers)).json()
        return v["plate"] == done["plate"]

    await wait_for(plated)
    for status in ("print_order_emitted", "printed", "given_to_applicant", "closed"):
        await move(api, world["agent"], done["id"], status)
    r = await api.post(
        "/api/immatriculations",
        json={"vehicle_id": done["vehicle_id"], "declared_documents": FIRST_DOCS},
        headers=citizen.headers,
    )
    assert r.status_code == 409 and r.json()["code"] == "already_registered"
