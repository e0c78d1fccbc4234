"""`simveb notify email` and `simveb notifications retry-dead`, run as real processes on the test database."""

from __future__ import annotations

from simveb.actors.notifications.messages import GetDelivery, SeedNotifications, SendNotification
from simveb.runtime import Runtime
from tests import notifications_support as fixtures
from tests.notifications_support import Simulators, SmtpRecorder
from tests.support import simveb, wait_for

simulators, sims, smtp_server, smtp, settings = (
    fixtures.simulators,
    fixtures.sims,
    fixtures.smtp_server,
    fixtures.smtp,
    fixtures.settings,
)


def _env(settings) -> dict[str, str]:
    n = settings.notifications
    return {
        "SIMVEB_NOTIFICATIONS__SMTP_PORT": str(n.smtp_port),
        "SIMVEB_NOTIFICATIONS__SMS_URL": n.sms_url,
        "SIMVEB_NOTIFICATIONS__RETRY_BASE_S": "0.05",
    }


async def test_notify_email_delivers(settings, runtime: Runtime, smtp: SmtpRecorder) -> None:
    await runtime.bus.ask(SeedNotifications())
    done = simveb(
        settings, "notify", "email", "--to", "awa@example.bj", "--template", "welcome", "--param", "name=Awa",
        env=_env(settings),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("queued ") and "sent (" in done.stdout
    await wait_for(lambda: smtp.messages, timeout=10)
    assert len(smtp.messages) == 1
    assert "Bienvenue sur SIMVEB, Awa" in smtp.messages[0].get_payload(decode=True).decode()
    bad = simveb(settings, "notify", "email", "--to", "awa@example.bj", "--template", "nope", env=_env(settings))
    assert bad.returncode == 1 and bad.stderr.startswith("simveb: error:") and "unknown_template" in bad.stderr


async def test_retry_dead_queues_dead_messages_again(settings, runtime: Runtime, sims: Simulators) -> None:
    await runtime.bus.ask(SeedNotifications())
    sims.control("sms", mode="fail")
    accepted = await runtime.bus.ask(
        SendNotification(channel="sms", to="+22997000042", template="custom", params={"text": "late"})
    )
    mid = accepted.notification_ids[0]

    async def is_(status: str) -> bool:
        return (await runtime.bus.ask(GetDelivery(notification_id=mid))).status == status

    await wait_for(lambda: is_("dead"), timeout=20)
    sims.control("sms", mode="ok")
    done = simveb(settings, "notifications", "retry-dead", env=_env(settings))
    assert done.returncode == 0, done.stderr
    assert "1 dead message(s) queued again" in done.stdout
    await wait_for(lambda: is_("sent"), timeout=20)
    assert [m["text"] for m in sims.sms("+22997000042")] == ["late"]
