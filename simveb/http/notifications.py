"""HTTP routes of the notifications service: sends (staff), templates (admins), the caller's inbox and devices."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, delete, get, post, put
from litestar.params import Parameter

from simveb.actors.notifications.messages import (
    Accepted,
    Address,
    Channel,
    CountUnread,
    Device,
    Language,
    ListMyNotifications,
    ListSubscriptions,
    ListTemplates,
    MarkRead,
    Notification,
    NotificationPage,
    PhoneNumber,
    PutSubscription,
    RegisterDevice,
    SendNotification,
    Subscription,
    Template,
    UnreadCount,
    UnregisterDevice,
    UpdateTemplate,
)
from simveb.bus import Bus
from simveb.errors import BadRequest
from simveb.http.inputs import CursorQuery, LimitQuery, body_of
from simveb.http.security import requires, requires_any
from simveb.messages import PAGE_LIMIT_DEFAULT, Caller

SEND = [requires("notifications:send")]
TEMPLATES = [requires("notifications:templates")]

# Template editors and staff who send messages may read the templates.
READ_TEMPLATES = [requires_any("notifications:templates", "notifications:send")]


# The three channel bodies are SendNotification's fields (template, params, language, idempotency key,
# their bounds from the contract) less what the route sets, plus the recipient each channel requires.
_SendIn = body_of(SendNotification, exclude=("channel", "to", "user_id", "by"), name="SendIn")


class EmailIn(_SendIn):  # type: ignore[valid-type, misc]
    to: Address
    language: Language = "fr"


class SmsIn(_SendIn):  # type: ignore[valid-type, misc]
    to: PhoneNumber
    language: Language = "fr"


class PushIn(_SendIn):  # type: ignore[valid-type, misc]
    user_id: UUID


TemplateIn = body_of(UpdateTemplate, exclude=("template_id", "by"), name="TemplateIn")


SubscriptionIn = body_of(PutSubscription, name="SubscriptionIn")


DeviceIn = body_of(RegisterDevice, exclude=("user_id",), name="DeviceIn")


def inbox_of(caller: Caller) -> UUID:
    """The caller's user id (the token's `sub`); service tokens without a user have no inbox."""
    if caller.user_id is None:
        raise BadRequest("this route needs a user's token (sub is not a user id)", code="not_a_user")
    return caller.user_id


def _send(caller: Caller, data: EmailIn | SmsIn | PushIn, channel: Channel, **recipient: Any) -> SendNotification:
    """The send asked by one of the channel routes; `recipient` is `to=` or `user_id=`."""
    return SendNotification(
        channel=channel,
        template=data.template,
        params=data.params,
        language=data.language,
        idempotency_key=data.idempotency_key,
        by=caller.sub,
        **recipient,
    )


class NotificationsController(Controller):
    path = "/api/notifications"
    tags = ["notifications"]

    @post("/email", guards=SEND, status_code=202)
    async def send_email(self, bus: Bus, caller: Caller, data: EmailIn) -> Accepted:
        """Queue an email rendered from a template."""
        return await bus.ask(_send(caller, data, "email", to=data.to))

    @post("/sms", guards=SEND, status_code=202)
    async def send_sms(self, bus: Bus, caller: Caller, data: SmsIn) -> Accepted:
        """Queue an SMS rendered from a template."""
        return await bus.ask(_send(caller, data, "sms", to=data.to))

    @post("/push", guards=SEND, status_code=202)
    async def send_push(self, bus: Bus, caller: Caller, data: PushIn) -> Accepted:
        """Queue a push notification to every device of a user."""
        return await bus.ask(_send(caller, data, "push", user_id=data.user_id))

    @get("/")
    async def mine(
        self,
        bus: Bus,
        caller: Caller,
        cursor: CursorQuery = None,
        limit: LimitQuery = PAGE_LIMIT_DEFAULT,
        unread: Annotated[bool, Parameter(description="Only the unread ones.")] = False,
    ) -> NotificationPage:
        """The caller's in-app notifications, newest first (the unread count is GET /unread)."""
        return await bus.ask(
            ListMyNotifications(user_id=inbox_of(caller), cursor=cursor, limit=limit, unread_only=unread)
        )

    @get("/unread")
    async def unread(self, bus: Bus, caller: Caller) -> UnreadCount:
        """How many of the caller's in-app notifications are unread."""
        return await bus.ask(CountUnread(user_id=inbox_of(caller)))

    @post("/{notification_id:uuid}/read", status_code=200)
    async def read(self, bus: Bus, caller: Caller, notification_id: UUID) -> Notification:
        """Mark one of the caller's notifications read."""
        return await bus.ask(MarkRead(user_id=inbox_of(caller), notification_id=notification_id))

    @post("/devices", status_code=201)
    async def register_device(self, bus: Bus, caller: Caller, data: DeviceIn) -> Device:
        """Register the caller's push device token (FCM registration token)."""
        return await bus.ask(RegisterDevice(user_id=inbox_of(caller), **msgspec.structs.asdict(data)))

    @delete("/devices/{token:str}", status_code=204)
    async def unregister_device(self, bus: Bus, caller: Caller, token: str) -> None:
        """Forget one of the caller's push device tokens."""
        await bus.ask(UnregisterDevice(user_id=inbox_of(caller), token=token))

    @get("/templates", guards=READ_TEMPLATES)
    async def list_templates(
        self, bus: Bus, event: str | None = None, channel: Channel | None = None
    ) -> list[Template]:
        """Message templates per event, channel and language."""
        return await bus.ask(ListTemplates(event=event, channel=channel))

    @put("/templates/{template_id:uuid}", guards=TEMPLATES)
    async def update_template(self, bus: Bus, caller: Caller, template_id: UUID, data: TemplateIn) -> Template:
        """Replace a template's text (checked before it is saved)."""
        return await bus.ask(UpdateTemplate(template_id=template_id, by=caller.sub, **msgspec.structs.asdict(data)))

    @get("/subscriptions", guards=TEMPLATES)
    async def list_subscriptions(self, bus: Bus, event_type: str | None = None) -> list[Subscription]:
        """Which domain event sends which template to whom."""
        return await bus.ask(ListSubscriptions(event_type=event_type))

    @put("/subscriptions", guards=TEMPLATES)
    async def put_subscription(self, bus: Bus, data: SubscriptionIn) -> Subscription:
        """Add a subscription, or switch one on or off."""
        return await bus.ask(PutSubscription(**msgspec.structs.asdict(data)))


CONTROLLERS: list[Any] = [NotificationsController]
