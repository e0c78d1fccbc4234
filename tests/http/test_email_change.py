"""Email change, tried as the account takeover it used to be: with a stolen access token,
`PUT /api/users/{me}` changed the email, and a password reset to that address took the account.

Now the change needs the password and the code sent to the new address, and the old address is told.
Mail is read where a user reads it: from the real SMTP server of the notifications tests; sign-in and
reset codes from the SMS simulator.
"""

from __future__ import annotations

import email.header
import re
from typing import Any

import httpx
import pytest

from simveb.actors.auth.messages import SetPassword
from simveb.actors.notifications.messages import SeedNotifications
from simveb.runtime import Runtime
from tests import notifications_support as fixtures
from tests.actors.test_auth import db_fetch
from tests.notifications_support import Simulators, SmtpRecorder
from tests.support import wait_for
from tests.users_support import make_user, seed_roles

simulators, sims, smtp_server, smtp, settings = (
    fixtures.simulators,
    fixtures.sims,
    fixtures.smtp_server,
    fixtures.smtp,
    fixtures.settings,
)

PASSWORD = "correct horse battery"
MALLORY = "mallory@evil.test"


def mails_to(smtp: SmtpRecorder, address: str) -> list[tuple[str, str]]:
    """(subject, text) of every mail the SMTP server accepted for this address."""
    found = []
    for message, (_sender, rcpts) in zip(smtp.messages, smtp.envelopes, strict=True):
        if address in rcpts:
            subject = str(email.header.make_header(email.header.decode_header(message["Subject"] or "")))
            found.append((subject, message.get_payload(decode=True).decode()))
    return found


async def code_mailed_to(smtp: SmtpRecorder, address: str) -> str:
    def newest() -> str | None:
        codes = [m for s, text in mails_to(smtp, address) if "code" in s and (m := re.search(r"\b(\d{6})\b", text))]
        return codes[-1].group(1) if codes else None

    return await wait_for(newest, 15)


async def citizen(runtime: Runtime, client: httpx.AsyncClient, address: str) -> dict[str, Any]:
    """A citizen with an email, a phone and a password, signed in over HTTP (the token to steal)."""
    assert runtime.bus is not None
    user = await make_user(runtime, "citizen", email=address)
    await runtime.bus.ask(SetPassword(user_id=user.id, password=PASSWORD, by="test"))
    r = await client.post("/api/auth/login", json={"email": address, "password": PASSWORD})
    assert r.status_code == 200, r.text
    token = r.json()["tokens"]["access_token"]
    return {"id": str(user.id), "phone": user.phone, "email": address, "h": {"Authorization": f"Bearer {token}"}}


@pytest.fixture
async def seeded(runtime: Runtime) -> Runtime:
    assert runtime.bus is not None
    await seed_roles(runtime)
    await runtime.bus.ask(SeedNotifications())
    return runtime


async def email_of(client: httpx.AsyncClient, who: dict[str, Any]) -> str:
    return (await client.get(f"/api/users/{who['id']}", headers=who["h"])).json()["email"]


async def test_a_stolen_token_cannot_move_the_email_and_no_reset_reaches_the_attacker(
    seeded: Runtime, client: httpx.AsyncClient, smtp: SmtpRecorder, sims: Simulators
) -> None:
    victim = await citizen(seeded, client, "awa.victim@example.bj")
    stolen = victim["h"]
    me = f"/api/users/{victim['id']}"
    # The old way: a straight update with the token alone.
    r = await client.put(me, json={"email": MALLORY}, headers=stolen)
    assert r.status_code == 403 and r.json()["code"] == "email_change_needs_code", r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    # The new way without the password: refused, nothing sent.
    r = await client.post(f"{me}/email-change", json={"email": MALLORY}, headers=stolen)
    assert r.status_code == 400 and "password" in r.text
    r = await client.post(f"{me}/email-change", json={"email": MALLORY, "password": "a guess at it"}, headers=stolen)
    assert r.status_code == 403 and r.json()["code"] == "wrong_password"
    # With a phished password too, but not the code: guessing it locks before it is found.
    r = await client.post(f"{me}/email-change", json={"email": MALLORY, "password": PASSWORD}, headers=stolen)
    assert r.status_code == 202, r.text
    challenge = r.json()["challenge_id"]
    right = await code_mailed_to(smtp, MALLORY)  # what the attacker would need (the test only peeks)
    statuses = []
    for guess in ("000000", "111111", "222222", "333333", "444444", "555555"):
        if guess == right:
            continue
        r = await client.post(
            f"{me}/email-change/confirm", json={"challenge_id": challenge, "code": guess}, headers=stolen
        )
        statuses.append(r.status_code)
        if r.status_code == 429:
            break
        assert r.json()["code"] == "invalid_code"
    assert statuses[-1] == 429 and set(statuses[:-1]) == {403}, statuses
    assert len(statuses) <= 5  # the wrong password counted too: the account lockout came first
    r = await client.post(f"{me}/email-change/confirm", json={"challenge_id": challenge, "code": right}, headers=stolen)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert await email_of(client, victim) == victim["email"]
    # Then a password reset by the attacker's address finds no account, and one by the victim's
    # identifiers goes to the victim's own phone: no reset code is ever queued for the attacker.
    for identifier in (MALLORY, victim["email"]):
        r = await client.post("/api/auth/password/reset-request", json={"identifier": identifier})
        assert r.status_code == 202
    await wait_for(lambda: any("réinitialisation" in m["text"] for m in sims.sms(to=victim["phone"])), 15)
    queued = await db_fetch(seeded, "SELECT template_event FROM notifications.messages WHERE recipient = $1", MALLORY)
    assert [q["template_event"] for q in queued] == ["otp.email_change"]
    assert not [s for s, _ in mails_to(smtp, MALLORY) if "réinitialisation" in s]
    assert not [s for s, _ in mails_to(smtp, victim["email"]) if "modifiée" in s]  # nothing changed


async def test_the_owner_changes_their_email_with_password_and_code_and_the_old_address_is_told(
    seeded: Runtime, client: httpx.AsyncClient, smtp: SmtpRecorder
) -> None:
    user = await citizen(seeded, client, "koffi.old@example.bj")
    me = f"/api/users/{user['id']}"
    new = "Koffi.New@Example.bj"
    r = await client.post(f"{me}/email-change", json={"email": new, "password": PASSWORD}, headers=user["h"])
    assert r.status_code == 202, r.text
    challenge = r.json()["challenge_id"]
    # Asked again within the cooldown: the same challenge, no second code.
    again = await client.post(f"{me}/email-change", json={"email": new, "password": PASSWORD}, headers=user["h"])
    assert again.status_code == 202 and again.json()["challenge_id"] == challenge
    code = await code_mailed_to(smtp, "koffi.new@example.bj")
    assert await email_of(client, user) == "koffi.old@example.bj"  # not before the code
    r = await client.post(
        f"{me}/email-change/confirm", json={"challenge_id": challenge, "code": code}, headers=user["h"]
    )
    assert r.status_code == 200, r.text
    assert r.json()["email"] == "koffi.new@example.bj"
    # The code works once.
    r = await client.post(
        f"{me}/email-change/confirm", json={"challenge_id": challenge, "code": code}, headers=user["h"]
    )
    assert r.status_code == 403 and r.json()["code"] == "invalid_code"
    # The old address is told, and shown the new one.
    (told,) = await wait_for(lambda: [m for m in mails_to(smtp, "koffi.old@example.bj") if "modifi" in m[0]], 15)
    assert "adresse e-mail modifiée" in told[0] and "koffi.new@example.bj" in told[1]
    # Sign-in follows the new address; the old one is nobody's now.
    r = await client.post("/api/auth/login", json={"email": "koffi.new@example.bj", "password": PASSWORD})
    assert r.status_code == 200
    r = await client.post("/api/auth/login", json={"email": "koffi.old@example.bj", "password": PASSWORD})
    assert r.status_code == 401
    history = await db_fetch(
        seeded, "SELECT old_value, new_value FROM users.user_history WHERE action = 'email_changed'"
    )
    assert len(history) == 1 and "koffi.old@example.bj" in str(history[0]["old_value"])


async def test_codes_are_bound_to_their_user_expire_and_the_address_must_be_free(
    seeded: Runtime, client: httpx.AsyncClient, smtp: SmtpRecorder
) -> None:
    a = await citizen(seeded, client, "a.owner@example.bj")
    b = await citizen(seeded, client, "b.other@example.bj")
    route = f"/api/users/{a['id']}/email-change"
    # Another user's address, or the same one: refused before any code is sent.
    r = await client.post(route, json={"email": "B.Other@example.bj", "password": PASSWORD}, headers=a["h"])
    assert r.status_code == 409 and r.json()["code"] == "email_taken"
    r = await client.post(route, json={"email": "a.owner@example.bj", "password": PASSWORD}, headers=a["h"])
    assert r.status_code == 422 and r.json()["code"] == "same_email"
    # Nobody asks on someone else's behalf.
    r = await client.post(route, json={"email": "x@example.bj", "password": PASSWORD}, headers=b["h"])
    assert r.status_code == 404
    r = await client.post(route, json={"email": "a.new@example.bj", "password": PASSWORD}, headers=a["h"])
    assert r.status_code == 202
    challenge = r.json()["challenge_id"]
    code = await code_mailed_to(smtp, "a.new@example.bj")
    # B holds A's challenge and code: on B's own account they change nothing.
    body = {"challenge_id": challenge, "code": code}
    r = await client.post(f"/api/users/{b['id']}/email-change/confirm", json=body, headers=b["h"])
    assert r.status_code == 403 and r.json()["code"] == "invalid_code"
    assert await email_of(client, b) == "b.other@example.bj"
    # The code expires.
    await db_fetch(
        seeded, "UPDATE auth.otp_verifications SET expires_at = now() - interval '1 second' WHERE id = $1", challenge
    )
    r = await client.post(f"{route}/confirm", json=body, headers=a["h"])
    assert r.status_code == 403 and r.json()["code"] == "code_expired"
    assert await email_of(client, a) == "a.owner@example.bj"
