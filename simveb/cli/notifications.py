"""Notifications commands: send a message by template, retry dead deliveries."""

from __future__ import annotations

import asyncio
from typing import Any

import click
import msgspec

from simveb.cli.app import CLI_ACTOR, CliError, fail_cleanly, main, run, settings_of, with_runtime

# --- notifications commands (issue 3) ----------------------------------------------------------------


def _params(pairs: tuple[str, ...]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--param expects key=value, got {pair!r}")
        params[key] = value
    return params


def _notify(
    ctx: click.Context, channel: str, to: str, template: str, params: dict[str, str], language: str, wait: float
) -> None:
    """Queue one message through the notifications actor and wait (a little) for its delivery."""
    from simveb.actors.notifications.messages import GetDelivery, SendNotification

    settings = settings_of(ctx)

    async def work(runtime: Any) -> Any:
        accepted = await runtime.bus.ask(
            SendNotification(channel=channel, to=to, template=template, params=params, language=language, by=CLI_ACTOR)
        )
        mid = accepted.notification_ids[0]
        click.echo(f"queued {mid}")
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            delivery = await runtime.bus.ask(GetDelivery(notification_id=mid))
            if delivery.status in ("sent", "dead") or asyncio.get_running_loop().time() > deadline:
                return delivery
            await asyncio.sleep(0.1)

    try:
        delivery = run(with_runtime(settings, work))
    except msgspec.ValidationError as exc:
        raise CliError(f"invalid message: {exc}") from None
    if delivery.status == "sent":
        click.echo(f"sent ({delivery.provider_message_id})")
    elif delivery.status == "dead":
        raise CliError(f"not delivered: {delivery.last_error}")
    else:
        click.echo(f"{delivery.status} after {delivery.attempts} attempt(s): a running server will deliver it")


@main.group()
def notify() -> None:
    """Send a message from a template (queued durably, then delivered)."""


@notify.command("email")
@click.option("--to", required=True, help="email address")
@click.option("--template", required=True, help="template event, e.g. welcome")
@click.option("--param", "params", multiple=True, help="template parameter key=value (repeatable)")
@click.option("--language", type=click.Choice(["fr", "en"]), default="fr", show_default=True)
@click.option("--wait", type=float, default=15.0, show_default=True, help="seconds to wait for the delivery")
@click.pass_context
@fail_cleanly
def notify_email(
    ctx: click.Context, to: str, template: str, params: tuple[str, ...], language: str, wait: float
) -> None:
    """Send an email rendered from a template."""
    _notify(ctx, "email", to, template, _params(params), language, wait)


@notify.command("sms")
@click.option("--to", required=True, help="phone number, +229...")
@click.option("--template", required=True, help="template event, e.g. custom")
@click.option("--param", "params", multiple=True, help="template parameter key=value (repeatable)")
@click.option("--language", type=click.Choice(["fr", "en"]), default="fr", show_default=True)
@click.option("--wait", type=float, default=15.0, show_default=True, help="seconds to wait for the delivery")
@click.pass_context
@fail_cleanly
def notify_sms(ctx: click.Context, to: str, template: str, params: tuple[str, ...], language: str, wait: float) -> None:
    """Send an SMS rendered from a template."""
    _notify(ctx, "sms", to, template, _params(params), language, wait)


@main.group("notifications")
def notifications_group() -> None:
    """The notification queue."""


@notifications_group.command("retry-dead")
@click.option("--channel", type=click.Choice(["email", "sms", "push"]), help="only this channel")
@click.pass_context
@fail_cleanly
def notifications_retry_dead(ctx: click.Context, channel: str | None) -> None:
    """Queue dead messages again (a running server delivers them)."""
    from simveb.actors.notifications.messages import RetryDead

    settings = settings_of(ctx)
    count = run(with_runtime(settings, lambda rt: rt.bus.ask(RetryDead(channel=channel))))
    click.echo(f"{count} dead message(s) queued again")


# --- users, auth and keys commands (issue 4) ---------------------------------------------------------
