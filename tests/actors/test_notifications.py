"""Notifications actor: delivery to a real SMTP server and to the SMS/FCM simulators over HTTP, retries,
restart between write and send, secrets kept out of the database and logs, event subscriptions."""

from __future__ import annotations

import asyncio
import uuid
from uuid import UUID

import asyncpg
import pytest

from simveb.actors.notifications.messages import (
    GetDelivery,
    PutSubscription,
    RegisterDevice,
    RetryDead,
    SeedNotifications,
    SendNotification,
    SendOtp,
)
from simveb.actors.users.messages import UserContactChanged
from simveb.config import with_overrides
from simveb.errors import Invalid, NotFound
from simveb.messages import Event
from simveb.outbox import emit
from simveb.runtime import Runtime
from tests import notifications_support as fixtures
from tests.conftest import truncate_all
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
PHONE = "+22997000001"


class InspectionBooked(Event):
    """A domain event only these tests publish: the subscription table decides what it sends."""

    user_id: UUID
    reference: str
    new_status: str


async def seed(rt: Runtime) -> None:
    assert rt.bus is not None
    await rt.bus.ask(SeedNotifications())


async def status(rt: Runtime, notification_id: UUID) -> str:
    assert rt.bus is not None
    return (await rt.bus.ask(GetDelivery(notification_id=notification_id))).status


async def table_text(url: str) -> str:
    """Every row of every notifications table, as text: what a database dump would show."""
    con = await asyncpg.connect(url)
    try:
        rows = await con.fetch(
            "SELECT t::text AS row FROM notifications.messages t UNION ALL"
            " SELECT t::text FROM notifications.templates t UNION ALL SELECT t::text FROM bus.outbox t"
        )
        return "\n".join(r["row"] for r in rows)
    finally:
        await con.close()


async def test_email_is_rendered_and_delivered_over_smtp(runtime: Runtime, smtp: SmtpRecorder) -> None:
    await seed(runtime)
    accepted = await runtime.bus.ask(
        SendNotification(channel="email", to="awa@example.bj", template="welcome", params={"name": "Awa"})
    )
    [mid] = accepted.notification_ids
    await wait_for(lambda: smtp.messages, timeout=20)
    [message] = smtp.messages
    assert message["To"] == "awa@example.bj"
    assert message["Subject"] == "Bienvenue sur SIMVEB"
    assert "Bienvenue sur SIMVEB, Awa ! Votre compte est actif." in message.get_payload(decode=True).decode()
    assert smtp.envelopes[0][1] == ["awa@example.bj"]
    await wait_for(lambda: _is(runtime, mid, "sent"), timeout=20)
    delivery = await runtime.bus.ask(GetDelivery(notification_id=mid))
    assert delivery.status == "sent" and delivery.attempts == 1
    assert delivery.provider_message_id == message["Message-ID"]


async def test_english_template_and_missing_parameter(runtime: Runtime, smtp: SmtpRecorder) -> None:
    await seed(runtime)
    await runtime.bus.ask(
        SendNotification(channel="email", to="kofi@example.bj", template="custom", params={"text": "Hi"}, language="en")
    )
    await wait_for(lambda: smtp.messages, timeout=20)
    assert smtp.messages[0]["Subject"] == "SIMVEB"
    with pytest.raises(Invalid, match="missing template parameter"):
        await runtime.bus.ask(SendNotification(channel="sms", to=PHONE, template="custom", params={}))
    with pytest.raises(NotFound) as exc:
        await runtime.bus.ask(SendNotification(channel="sms", to=PHONE, template="no.such", params={}))
    assert exc.value.code == "unknown_template"


async def test_otp_code_is_sent_but_never_stored_nor_logged(
    runtime: Runtime, sims: Simulators, smtp: SmtpRecorder, simveb_logs, settings
) -> None:
    await seed(runtime)
    code = "493817"
    sims.control("sms", mode="fail", times=2)  # the first attempts fail: the row waits with its secret
    sms = await runtime.bus.ask(SendOtp(channel="sms", to=PHONE, code=code, purpose="login", idempotency_key="k1"))
    mail = await runtime.bus.ask(
        SendOtp(
            channel="email", to="awa@example.bj", code=code, purpose="register", language="en", idempotency_key="k2"
        )
    )
    assert code not in await table_text(settings.database.url)
    await wait_for(lambda: sims.sms(PHONE), timeout=20)
    await wait_for(lambda: smtp.messages, timeout=20)
    [received] = sims.sms(PHONE)
    assert received["text"] == f"SIMVEB : votre code de connexion est {code}. Il expire dans 5 minutes."
    assert code in smtp.messages[0].get_payload(decode=True).decode()
    for mid in (*sms.notification_ids, *mail.notification_ids):
        await wait_for(lambda mid=mid: _is(runtime, mid, "sent"), timeout=10)
        delivery = await runtime.bus.ask(GetDelivery(notification_id=mid))
        assert "******" in delivery.body and code not in delivery.body
    dump = await table_text(settings.database.url)
    assert code not in dump
    con = await asyncpg.connect(settings.database.url)
    try:
        assert await con.fetchval("SELECT count(*) FROM notifications.messages WHERE sealed IS NOT NULL") == 0
    finally:
        await con.close()
    assert code not in simveb_logs.text()
    # The same OTP request again (a retried HTTP call) queues nothing new.
    again = await runtime.bus.ask(SendOtp(channel="sms", to=PHONE, code=code, purpose="login", idempotency_key="k1"))
    assert again.notification_ids == sms.notification_ids


async def _is(rt: Runtime, mid: UUID, wanted: str) -> bool:
    return await status(rt, mid) == wanted


async def test_push_through_fcm_with_a_cached_oauth_token(runtime: Runtime, sims: Simulators) -> None:
    await seed(runtime)
    user = uuid.uuid4()
    await runtime.bus.ask(RegisterDevice(user_id=user, token="device-abc"))
    for n in range(2):
        await runtime.bus.ask(
            SendNotification(
                channel="push",
                user_id=user,
                template="status_changed",
                params={"reference": f"REQ-{n}", "new_status": "approved"},
            )
        )
    await wait_for(lambda: len(sims.push("device-abc")) == 2, timeout=20)
    first = sims.push("device-abc")[0]
    assert first["notification"]["title"] == "SIMVEB : changement de statut"
    assert first["notification"]["body"].startswith("REQ-")
    assert first["project"] == "simveb-dev"
    assert sims.fcm_state()["grants"] == 1  # one service-account exchange for both sends


async def test_unregistered_device_is_dead_at_once(runtime: Runtime, sims: Simulators) -> None:
    await seed(runtime)
    user = uuid.uuid4()
    await runtime.bus.ask(RegisterDevice(user_id=user, token="invalid-token"))
    accepted = await runtime.bus.ask(
        SendNotification(channel="push", user_id=user, template="custom", params={"text": "x"})
    )
    mid = accepted.notification_ids[0]
    await wait_for(lambda: _is(runtime, mid, "dead"), timeout=20)
    assert (await runtime.bus.ask(GetDelivery(notification_id=mid))).attempts == 1


async def test_provider_down_then_back_delivers_each_message_once(runtime: Runtime, sims: Simulators) -> None:
    await seed(runtime)
    sims.control("sms", mode="fail", times=4)
    ids = []
    for n in range(5):
        accepted = await runtime.bus.ask(
            SendNotification(channel="sms", to=f"+2299700010{n}", template="custom", params={"text": f"hello {n}"})
        )
        ids += accepted.notification_ids
    for mid in ids:
        await wait_for(lambda mid=mid: _is(runtime, mid, "sent"), timeout=20)
    received = sims.sms()
    assert sorted(m["text"] for m in received) == [f"hello {n}" for n in range(5)]
    assert not any(m["duplicate"] for m in received)
    attempts = [(await runtime.bus.ask(GetDelivery(notification_id=mid))).attempts for mid in ids]
    assert max(attempts) > 1


async def test_garbage_answers_are_retried(runtime: Runtime, sims: Simulators) -> None:
    await seed(runtime)
    sims.control("sms", mode="garbage", times=1)
    accepted = await runtime.bus.ask(SendNotification(channel="sms", to=PHONE, template="custom", params={"text": "g"}))
    mid = accepted.notification_ids[0]
    await wait_for(lambda: _is(runtime, mid, "sent"), timeout=20)
    delivery = await runtime.bus.ask(GetDelivery(notification_id=mid))
    assert delivery.attempts == 2
    assert len([m for m in sims.sms(PHONE) if not m["duplicate"]]) == 1


async def test_dead_after_max_attempts_then_retry_dead(runtime: Runtime, sims: Simulators) -> None:
    await seed(runtime)
    sims.control("sms", mode="fail")
    accepted = await runtime.bus.ask(SendNotification(channel="sms", to=PHONE, template="custom", params={"text": "d"}))
    mid = accepted.notification_ids[0]
    await wait_for(lambda: _is(runtime, mid, "dead"), timeout=20)
    delivery = await runtime.bus.ask(GetDelivery(notification_id=mid))
    assert delivery.attempts == 4 and "503" in (delivery.last_error or "")
    sims.control("sms", mode="ok")
    assert await runtime.bus.ask(RetryDead()) == 1
    await wait_for(lambda: _is(runtime, mid, "sent"), timeout=20)
    assert [m["text"] for m in sims.sms(PHONE)] == ["d"]


async def test_restart_between_write_and_send_delivers_once(settings, sims: Simulators, simveb_logs) -> None:
    """A process writes the message and stops before any worker sends it; the next one delivers it."""
    await truncate_all(settings.database.url)
    code = "771204"
    writer = Runtime(with_overrides(settings, notifications={"workers": 0}))
    await writer.start(migrate_first=False, seed_if_empty=False)
    try:
        await seed(writer)
        accepted = await writer.bus.ask(
            SendOtp(channel="sms", to=PHONE, code=code, purpose="two_factor", idempotency_key="restart-1")
        )
    finally:
        await writer.stop()
    assert code not in await table_text(settings.database.url)
    assert sims.sms() == []
    sender = Runtime(settings)
    await sender.start(migrate_first=False, seed_if_empty=False)
    try:
        mid = accepted.notification_ids[0]
        await wait_for(lambda: _is(sender, mid, "sent"), timeout=20)
    finally:
        await sender.stop()
    received = sims.sms(PHONE)
    assert len(received) == 1 and code in received[0]["text"]
    assert code not in simveb_logs.text()


async def test_event_subscription_sends_once_even_when_redelivered(runtime: Runtime, sims: Simulators) -> None:
    await seed(runtime)
    user = uuid.uuid4()
    assert runtime.db is not None and runtime.bus is not None
    async with runtime.db.transaction() as con:
        await emit(
            con, UserContactChanged(user_id=user, phone=PHONE, email="awa@example.bj", language="en"), source="users"
        )
    for channel in ("sms", "in_app"):
        await runtime.bus.ask(
            PutSubscription(
                event_type="InspectionBooked",
                channel=channel,
                template_event="status_changed",
                recipient_field="user_id",
            )
        )
    await wait_for(lambda: _contact_known(runtime, user), timeout=20)
    event = InspectionBooked(user_id=user, reference="INSP-7", new_status="booked")
    event_id = uuid.uuid4()
    async with runtime.db.transaction() as con:
        await con.execute(
            "INSERT INTO bus.outbox (event_id, source, type, payload) VALUES ($1, 'test', 'InspectionBooked', $2)",
            event_id,
            {"msg_type": "InspectionBooked", "user_id": str(user), "reference": "INSP-7", "new_status": "booked"},
        )
        await con.execute("SELECT pg_notify('simveb_outbox', '')")
    await wait_for(lambda: sims.sms(PHONE), timeout=20)
    # Redeliveries of the same event (same id) change nothing; the inbox and the idempotency key agree.
    assert await runtime.bus.deliver(event_id, event) == []
    await runtime.bus.publish(event, event_id=event_id)
    await runtime.bus.publish(event, event_id=event_id)
    async with runtime.db.pool.acquire() as con:
        await wait_for(lambda: _mailbox_empty(runtime), timeout=10)
        await asyncio.sleep(0.3)  # the last event taken from the mailbox may still be in its handler
        count = await con.fetchval(
            "SELECT count(*) FROM notifications.messages WHERE source = 'event:InspectionBooked'"
        )
    assert count == 2  # one SMS and one in-app notification
    [sms] = sims.sms(PHONE)
    assert sms["text"] == "INSP-7: status booked."  # the contact's language (en)


async def _contact_known(rt: Runtime, user: UUID) -> bool:
    assert rt.db is not None
    async with rt.db.pool.acquire() as con:
        return bool(await con.fetchval("SELECT true FROM notifications.contacts WHERE user_id = $1", user))


def _mailbox_empty(rt: Runtime) -> bool:
    assert rt.bus is not None
    cell = rt.bus.cells["notifications"]
    return cell.queue.empty()
