"""The notifications service's public contract: sends, templates, subscriptions, in-app inbox, devices.

Other actors and the HTTP layer import this module only (never the actor or its store).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec

from simveb.errors import Conflict, Invalid, NotFound
from simveb.messages import PAGE_LIMIT_DEFAULT, Ask, Cursor, Limit, Page, Record

Channel = Literal["email", "sms", "push", "in_app"]
Language = Literal["fr", "en"]
Platform = Literal["android", "ios", "web"]
DeliveryStatus = Literal["pending", "sending", "sent", "dead"]
TemplateEvent = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_.]{1,99}$")]
ParamName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
ParamValue = Annotated[str, msgspec.Meta(max_length=2000)] | int | float | bool | None
Params = Annotated[dict[ParamName, ParamValue], msgspec.Meta(max_length=30)]
IdempotencyKey = Annotated[str, msgspec.Meta(min_length=8, max_length=200)]
Address = Annotated[str, msgspec.Meta(min_length=3, max_length=254, description="An email address or a phone")]
PhoneNumber = Annotated[str, msgspec.Meta(pattern=r"^\+[1-9][0-9]{7,14}$", description="E.164, like +22990000000")]


# --- replies -----------------------------------------------------------------------------------------


class Accepted(Record):
    """The message is written to the durable queue; it will be delivered (or end up dead)."""

    notification_ids: list[UUID]


class Template(Record):
    id: UUID
    event: str
    channel: Channel
    language: Language
    subject: str
    body: str
    secret_params: list[str]
    description: str = ""
    updated_at: datetime | None = None
    updated_by: str = "system"


class Subscription(Record):
    """Which domain event (by type tag) sends which template on which channel, to the user in a field."""

    id: UUID
    event_type: str
    channel: Channel
    template_event: str
    recipient_field: str
    active: bool = True


class Delivery(Record):
    """One message of the durable queue as operators see it (secrets masked)."""

    id: UUID
    channel: Channel
    recipient: str
    template_event: str
    status: DeliveryStatus
    attempts: int
    subject: str
    body: str
    last_error: str | None = None
    provider_message_id: str | None = None
    created_at: datetime
    sent_at: datetime | None = None


class Notification(Record):
    """An in-app notification of one user."""

    id: UUID
    template_event: str
    title: str
    body: str
    created_at: datetime
    read_at: datetime | None = None


class NotificationPage(Page[Notification]):
    """In-app notifications, newest first."""

    items: list[Notification]


class UnreadCount(Record):
    unread: int


class Device(Record):
    token: str
    user_id: UUID
    platform: Platform
    created_at: datetime


# --- commands and queries ------------------------------------------------------------------------------


class SendOtp(Ask[Accepted]):
    """Sent by auth (and users for self-registration): send a one-time code by SMS or email.

    The code is a secret template parameter: it is sent, never stored or logged.
    """

    errors = (NotFound, Invalid)

    channel: Literal["sms", "email"]
    to: str  # +229 phone number or email address
    code: str
    purpose: Literal["login", "two_factor", "register", "password_reset", "email_change"]
    language: Literal["fr", "en"] = "fr"
    idempotency_key: str


class SendNotification(Ask[Accepted]):
    """Render a template and queue it: to an address (email, sms) or to a user (push: their devices,
    in_app: their inbox, email/sms: their contact details from the read model)."""

    errors = (NotFound, Conflict, Invalid)

    channel: Channel
    template: TemplateEvent
    to: Address | None = None
    user_id: UUID | None = None
    params: Params = {}
    language: Language | None = None
    idempotency_key: IdempotencyKey | None = None
    by: str = "system"


class GetDelivery(Ask[Delivery]):
    """The state of one queued message; NotFound when there is none."""

    errors = (NotFound,)

    notification_id: UUID


class RetryDead(Ask[int]):
    """Put dead messages back in the queue (those whose secret was already wiped cannot be); returns how many."""

    channel: Channel | None = None


class ListTemplates(Ask[list[Template]]):
    event: str | None = None
    channel: Channel | None = None


class UpdateTemplate(Ask[Template]):
    """Replace a template's text; Invalid (naming the problem) when it does not compile."""

    errors = (NotFound, Invalid)

    template_id: UUID
    body: Annotated[str, msgspec.Meta(min_length=1, max_length=20000)]
    subject: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    secret_params: Annotated[list[str], msgspec.Meta(max_length=20)] | None = None
    description: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    by: str


class ListSubscriptions(Ask[list[Subscription]]):
    event_type: str | None = None


class PutSubscription(Ask[Subscription]):
    """Add (or switch on/off) a subscription: later services add rows, not code."""

    errors = (NotFound, Invalid)

    event_type: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z][A-Za-z0-9_.]{0,99}$")]
    channel: Channel
    template_event: TemplateEvent
    recipient_field: Annotated[str, msgspec.Meta(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "user_id"
    active: bool = True


class ListMyNotifications(Ask[NotificationPage]):
    user_id: UUID
    cursor: Cursor | None = None
    limit: Limit = PAGE_LIMIT_DEFAULT
    unread_only: bool = False


class CountUnread(Ask[UnreadCount]):
    """How many in-app notifications of this user are unread (a badge)."""

    user_id: UUID


class MarkRead(Ask[Notification]):
    """Mark one of the user's own in-app notifications read; NotFound for anybody else's."""

    errors = (NotFound,)

    user_id: UUID
    notification_id: UUID


class RegisterDevice(Ask[Device]):
    """Register (or move to this user) a push device token."""

    errors = (Invalid,)

    user_id: UUID
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    platform: Platform = "android"


class UnregisterDevice(Ask[None]):
    errors = (NotFound,)

    user_id: UUID
    token: str


class SeedNotifications(Ask[int]):
    """Load the default templates and event subscriptions; returns rows added."""

    only_if_empty: bool = False
