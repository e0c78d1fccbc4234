"""The welcome message: a citizen who registers and confirms with the code sent by SMS is welcomed in
the in-app inbox and by email (through the real SMTP server of the notifications tests); staff created
by an admin is welcomed too. Users publishes `UserRegistered`; the seeded subscriptions do the rest."""

from __future__ import annotations

import re

from simveb.actors.notifications.messages import SeedNotifications
from simveb.runtime import Runtime
from tests import notifications_support as fixtures
from tests.notifications_support import Simulators, SmtpRecorder
from tests.support import wait_for
from tests.users_support import npi, phone, seed_roles

# The shared notifications fixtures, used by name in this module.
simulators, sims, smtp_server, smtp, settings = (
    fixtures.simulators,
    fixtures.sims,
    fixtures.smtp_server,
    fixtures.smtp,
    fixtures.settings,
)


async def _seed(rt: Runtime) -> None:
    assert rt.bus is not None
    await seed_roles(rt)
    await rt.bus.ask(SeedNotifications())


def _welcome_mails(smtp: SmtpRecorder, to: str) -> list[str]:
    return [
        m.get_payload(decode=True).decode()
        for m, (_sender, rcpts) in zip(smtp.messages, smtp.envelopes, strict=True)
        if to in rcpts and "SIMVEB" in (m["Subject"] or "")
    ]


async def test_a_citizen_who_confirms_registration_is_welcomed_in_app_and_by_email(
    runtime: Runtime, client, sims: Simulators, smtp: SmtpRecorder
):
    await _seed(runtime)
    number, address = phone(), "rose.adjovi@example.bj"
    body = {"npi": npi(), "phone": number, "last_name": "Adjovi", "first_name": "Rose", "email": address}
    r = await client.post("/api/users", json=body)
    assert r.status_code == 202, r.text

    def code() -> str | None:
        texts = [m["text"] for m in sims.sms(to=number)]
        found = re.search(r"\b(\d{6})\b", texts[-1]) if texts else None
        return found.group(1) if found else None

    # Not before the registration is confirmed: a pending account is welcomed by nobody.
    sent_code = await wait_for(code, 15)
    assert smtp.messages == []
    r = await client.post("/api/auth/verify-otp", json={"challenge_id": r.json()["challenge_id"], "code": sent_code})
    assert r.status_code == 200, r.text
    me = {"Authorization": f"Bearer {r.json()['tokens']['access_token']}"}

    async def inbox() -> list[dict]:
        page = (await client.get("/api/notifications", headers=me)).json()
        return [n for n in page["items"] if n["template_event"] == "welcome"]

    (welcome,) = await wait_for(inbox, 15)
    assert welcome["title"] == "Bienvenue"
    assert welcome["body"] == "Bienvenue sur SIMVEB, Rose Adjovi ! Votre compte est actif."
    (mail,) = await wait_for(lambda: _welcome_mails(smtp, address), 15)
    assert "Bienvenue sur SIMVEB, Rose Adjovi !" in mail
    # Confirming is done once: the welcome is not sent again by a second sign-in.
    assert len(await inbox()) == 1


async def test_staff_created_by_an_admin_is_welcomed_by_email(
    runtime: Runtime, client, auth, smtp: SmtpRecorder, sims: Simulators
):
    await _seed(runtime)
    admin = auth("users:write", sub="00000000-0000-0000-0000-0000000000ad")
    body = {"kind": "staff", "roles": ["agent"], "email": "agent.kpade@simveb.test", "language": "en"}
    r = await client.post("/api/users", json={**body, "first_name": "Sena", "last_name": "Kpade"}, headers=admin)
    assert r.status_code == 201, r.text
    (mail,) = await wait_for(lambda: _welcome_mails(smtp, "agent.kpade@simveb.test"), 15)
    assert "Welcome to SIMVEB, Sena Kpade!" in mail
