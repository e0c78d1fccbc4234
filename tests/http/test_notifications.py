"""Notifications over HTTP: sends reach the simulator, templates are admin-edited and checked, the
in-app inbox is private to its owner, bad input and missing permissions are problem+json."""

from __future__ import annotations

import uuid

import httpx

from simveb.actors.notifications.messages import SeedNotifications, SendNotification
from simveb.runtime import Runtime
from tests import notifications_support as fixtures
from tests.notifications_support import Simulators, SmtpRecorder
from tests.support import wait_for

# The shared notifications fixtures, used by name in this module.
simulators, sims, smtp_server, smtp, settings = (
    fixtures.simulators,
    fixtures.sims,
    fixtures.smtp_server,
    fixtures.smtp,
    fixtures.settings,
)
PROBLEM = "application/problem+json"
SEND = "notifications:send"
EDIT = "notifications:templates"


async def seed(rt: Runtime) -> None:
    assert rt.bus is not None
    await rt.bus.ask(SeedNotifications())


def assert_problem(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == status
    if code:
        assert body["code"] == code, body
    return body


async def test_sms_sent_by_api_arrives_at_the_simulator(client, runtime, auth, sims: Simulators) -> None:
    await seed(runtime)
    r = await client.post(
        "/api/notifications/sms",
        json={"to": "+22997001122", "template": "custom", "params": {"text": "Votre carte grise est prête"}},
        headers=auth(SEND),
    )
    assert r.status_code == 202, r.text
    assert len(r.json()["notification_ids"]) == 1
    await wait_for(lambda: sims.sms("+22997001122"), timeout=20)
    assert sims.sms("+22997001122")[0]["text"] == "Votre carte grise est prête"


async def test_email_by_api_and_idempotency_key(client, runtime, auth, smtp: SmtpRecorder) -> None:
    await seed(runtime)
    body = {
        "to": "agent@example.bj",
        "template": "status_changed",
        "params": {"reference": "IMM-42", "new_status": "validée", "old_status": "soumise"},
        "idempotency_key": "request-0001",
    }
    first = await client.post("/api/notifications/email", json=body, headers=auth(SEND))
    second = await client.post("/api/notifications/email", json=body, headers=auth(SEND))
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    await wait_for(lambda: smtp.messages, timeout=20)
    text = smtp.messages[0].get_payload(decode=True).decode()
    assert "IMM-42 : statut validée (auparavant soumise)." in text
    assert len(smtp.messages) == 1


async def test_push_by_api_needs_a_registered_device(client, runtime, auth, sims: Simulators) -> None:
    await seed(runtime)
    user = str(uuid.uuid4())
    r = await client.post(
        "/api/notifications/push",
        json={"user_id": user, "template": "custom", "params": {"text": "x"}},
        headers=auth(SEND),
    )
    assert_problem(r, 409, "no_device")
    r = await client.post(
        "/api/notifications/devices", json={"token": "tok-1", "platform": "ios"}, headers=auth(sub=user)
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/api/notifications/push",
        json={"user_id": user, "template": "custom", "params": {"text": "Bonjour", "subject": "SIMVEB"}},
        headers=auth(SEND),
    )
    assert r.status_code == 202, r.text
    await wait_for(lambda: sims.push("tok-1"), timeout=20)
    assert sims.push("tok-1")[0]["notification"] == {"title": "SIMVEB", "body": "Bonjour"}


async def test_permissions(client, runtime, auth) -> None:
    sms = {"to": "+22997001122", "template": "custom", "params": {"text": "x"}}
    assert_problem(await client.post("/api/notifications/sms", json=sms), 401)
    assert_problem(await client.post("/api/notifications/sms", json=sms, headers=auth()), 403, "missing_permission")
    assert_problem(await client.get("/api/notifications"), 401)
    assert_problem(await client.get("/api/notifications/templates", headers=auth()), 403)
    r = await client.put(f"/api/notifications/templates/{uuid.uuid4()}", json={"body": "x"}, headers=auth(SEND))
    assert_problem(r, 403)


async def test_bad_input_is_problem_json(client, runtime, auth, settings) -> None:
    await seed(runtime)
    h = auth(SEND)
    r = await client.post("/api/notifications/sms", json={"to": "+22997001122", "template": "nope.none"}, headers=h)
    assert_problem(r, 404, "unknown_template")
    r = await client.post(
        "/api/notifications/sms", json={"to": "+22997001122", "template": "custom", "text": "x"}, headers=h
    )
    assert "text" in str(assert_problem(r, 400, "validation_error")["errors"])
    r = await client.post(
        "/api/notifications/sms", json={"to": "97001122", "template": "custom", "params": {"text": "x"}}, headers=h
    )
    assert_problem(r, 400, "validation_error")
    r = await client.post(
        "/api/notifications/email",
        json={"to": "not-an-address", "template": "custom", "params": {"text": "x"}},
        headers=h,
    )
    assert_problem(r, 422, "invalid_recipient")
    r = await client.post(
        "/api/notifications/sms",
        json={"to": "+22997001122", "template": "custom", "params": {"text": "x" * 2001}},
        headers=h,
    )
    assert_problem(r, 400, "validation_error")
    r = await client.post(
        "/api/notifications/sms",
        content=b'{"to": "+22997001122", "template": "custom", "params": {"text": "'
        + b"x" * settings.server.max_body_bytes
        + b'"}}',
        headers={**h, "content-type": "application/json"},
    )
    assert_problem(r, 413)
    r = await client.post("/api/notifications/sms", json={"to": "+22997001122", "template": "custom"}, headers=h)
    assert_problem(r, 422, "missing_parameter")


async def test_templates_listed_and_edited_with_syntax_check(client, runtime, auth) -> None:
    await seed(runtime)
    r = await client.get(
        "/api/notifications/templates", params={"event": "otp.login", "channel": "sms"}, headers=auth(SEND)
    )
    assert r.status_code == 200
    templates = {t["language"]: t for t in r.json()}
    assert set(templates) == {"fr", "en"}
    fr = templates["fr"]
    assert fr["secret_params"] == ["code"]
    r = await client.put(
        f"/api/notifications/templates/{fr['id']}", json={"body": "Code : {{ code "}, headers=auth(EDIT, sub="admin-1")
    )
    problem = assert_problem(r, 422, "template_syntax_error")
    assert "line 1" in problem["detail"] and problem["field"] == "body"
    r = await client.get(
        "/api/notifications/templates", params={"event": "otp.login", "channel": "sms"}, headers=auth(EDIT)
    )
    assert {t["language"]: t for t in r.json()}["fr"]["body"] == fr["body"]  # nothing written
    r = await client.put(
        f"/api/notifications/templates/{fr['id']}",
        json={"body": "SIMVEB: {{ code }}", "description": "short"},
        headers=auth(EDIT, sub="admin-1"),
    )
    assert r.status_code == 200, r.text
    saved = r.json()
    assert saved["body"] == "SIMVEB: {{ code }}" and saved["updated_by"] == "admin-1"
    assert saved["secret_params"] == ["code"]
    r = await client.put(f"/api/notifications/templates/{uuid.uuid4()}", json={"body": "x"}, headers=auth(EDIT))
    assert_problem(r, 404, "unknown_template")
    r = await client.put(f"/api/notifications/templates/{fr['id']}", json={"body": "x", "bogus": 1}, headers=auth(EDIT))
    assert_problem(r, 400, "validation_error")


async def test_sandboxed_templates_refuse_unsafe_code(client, runtime, auth) -> None:
    await seed(runtime)
    r = await client.get(
        "/api/notifications/templates", params={"event": "custom", "channel": "sms"}, headers=auth(EDIT)
    )
    fr = {t["language"]: t for t in r.json()}["fr"]
    unsafe = "{{ text.__class__.__mro__[1].__subclasses__() }}"
    r = await client.put(f"/api/notifications/templates/{fr['id']}", json={"body": unsafe}, headers=auth(EDIT))
    assert_problem(r, 422, "template_forbidden")  # refused by the test render at save time
    # Planted in the table anyway, it fails at send time.
    assert runtime.db is not None
    async with runtime.db.transaction() as con:
        await con.execute("UPDATE notifications.templates SET body = $1 WHERE id = $2", unsafe, fr["id"])
    r = await client.post(
        "/api/notifications/sms",
        json={"to": "+22997001122", "template": "custom", "params": {"text": "x"}},
        headers=auth(SEND),
    )
    assert_problem(r, 422, "template_forbidden")


async def test_in_app_inbox_is_private(client, runtime, auth) -> None:
    await seed(runtime)
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    assert runtime.bus is not None
    ids = []
    for n in range(3):
        accepted = await runtime.bus.ask(
            SendNotification(
                channel="in_app",
                user_id=uuid.UUID(alice),
                template="status_changed",
                params={"reference": f"R{n}", "new_status": "ok"},
            )
        )
        ids += accepted.notification_ids
    r = await client.get("/api/notifications", params={"limit": 2}, headers=auth(sub=alice))
    assert r.status_code == 200, r.text
    page = r.json()
    assert set(page) == {"items", "next_cursor"} and len(page["items"]) == 2 and page["next_cursor"]
    assert page["items"][0]["title"] == "SIMVEB : changement de statut"
    assert (await client.get("/api/notifications/unread", headers=auth(sub=alice))).json() == {"unread": 3}
    r = await client.get(
        "/api/notifications", params={"limit": 2, "cursor": page["next_cursor"]}, headers=auth(sub=alice)
    )
    assert len(r.json()["items"]) == 1 and r.json()["next_cursor"] is None
    assert [n["id"] for n in page["items"] + r.json()["items"]] == [str(i) for i in reversed(ids)]
    r = await client.get("/api/notifications", headers=auth(sub=bob))
    assert r.json() == {"items": [], "next_cursor": None}
    assert_problem(await client.post(f"/api/notifications/{ids[0]}/read", headers=auth(sub=bob)), 404)
    r = await client.post(f"/api/notifications/{ids[0]}/read", headers=auth(sub=alice))
    assert r.status_code == 200 and r.json()["read_at"] is not None
    r = await client.get("/api/notifications", params={"unread": True}, headers=auth(sub=alice))
    assert len(r.json()["items"]) == 2 and str(ids[0]) not in {n["id"] for n in r.json()["items"]}
    assert (await client.get("/api/notifications/unread", headers=auth(sub=alice))).json() == {"unread": 2}
    assert_problem(await client.get("/api/notifications", headers=auth(sub="service-x")), 400, "not_a_user")


async def test_subscriptions_are_data(client, runtime, auth) -> None:
    await seed(runtime)
    body = {
        "event_type": "VehicleImported",
        "channel": "in_app",
        "template_event": "custom",
        "recipient_field": "owner_id",
    }
    r = await client.put("/api/notifications/subscriptions", json=body, headers=auth(EDIT))
    assert r.status_code == 200, r.text
    r = await client.get(
        "/api/notifications/subscriptions", params={"event_type": "VehicleImported"}, headers=auth(EDIT)
    )
    assert [s["recipient_field"] for s in r.json()] == ["owner_id"]
    r = await client.put(
        "/api/notifications/subscriptions", json={**body, "template_event": "nothing.here"}, headers=auth(EDIT)
    )
    assert_problem(r, 404, "unknown_template")
