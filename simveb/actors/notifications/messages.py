"""The notifications service's public contract."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from simveb.bus import Ask, Record


class Accepted(Record):
    """The message is written to the durable queue; it will be delivered (or end up dead)."""

    notification_ids: list[UUID]


class SendOtp(Ask[Accepted]):
    """Sent by auth (and users for self-registration): send a one-time code by SMS or email.

    The code is a secret template parameter: it is sent, never stored or logged.
    """

    channel: Literal["sms", "email"]
    to: str  # +229 phone number or email address
    code: str
    purpose: Literal["login", "two_factor", "register", "password_reset"]
    language: Literal["fr", "en"] = "fr"
    idempotency_key: str


class SeedNotifications(Ask[int]):
    """Load the default templates and event subscriptions; returns rows added."""

    only_if_empty: bool = False
