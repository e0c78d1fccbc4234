"""SQL of the notifications service: every query on the `notifications` schema, returning msgspec Structs."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from simveb.actors.notifications.messages import Delivery, Device, Notification, Subscription, Template
from simveb.db import from_row, from_rows

# --- templates ---------------------------------------------------------------------------------------

_TEMPLATE_COLS = "id, event, channel, language, subject, body, secret_params, description, updated_at, updated_by"


async def list_templates(con: asyncpg.Connection, event: str | None, channel: str | None) -> list[Template]:
    rows = await con.fetch(
        f"SELECT {_TEMPLATE_COLS} FROM notifications.templates"
        " WHERE ($1::text IS NULL OR event = $1) AND ($2::text IS NULL OR channel = $2)"
        " ORDER BY event, channel, language",
        event,
        channel,
    )
    return from_rows(Template, rows)


async def find_template(con: asyncpg.Connection, event: str, channel: str, language: str) -> Template | None:
    """The template in this language, or in French (the reference language) when it has none."""
    row = await con.fetchrow(
        f"SELECT {_TEMPLATE_COLS} FROM notifications.templates WHERE event = $1 AND channel = $2"
        " AND language = ANY($3::text[]) ORDER BY language = $4 DESC LIMIT 1",
        event,
        channel,
        [language, "fr"],
        language,
    )
    return from_row(Template, row)


async def get_template(con: asyncpg.Connection, template_id: UUID, *, lock: bool = False) -> Template | None:
    row = await con.fetchrow(
        f"SELECT {_TEMPLATE_COLS} FROM notifications.templates WHERE id = $1" + (" FOR UPDATE" if lock else ""),
        template_id,
    )
    return from_row(Template, row)


async def update_template(
    con: asyncpg.Connection, template_id: UUID, subject: str, body: str, secrets: list[str], description: str, by: str
) -> Template:
    row = await con.fetchrow(
        "UPDATE notifications.templates SET subject = $2, body = $3, secret_params = $4, description = $5,"
        f" updated_at = now(), updated_by = $6 WHERE id = $1 RETURNING {_TEMPLATE_COLS}",
        template_id,
        subject,
        body,
        secrets,
        description,
        by,
    )
    return from_row(Template, row)


async def has_templates(con: asyncpg.Connection) -> bool:
    return bool(await con.fetchval("SELECT EXISTS (SELECT 1 FROM notifications.templates)"))


# --- subscriptions -------------------------------------------------------------------------------------

_SUB_COLS = "id, event_type, channel, template_event, recipient_field, active"


async def all_subscriptions(con: asyncpg.Connection) -> list[Subscription]:
    rows = await con.fetch(f"SELECT {_SUB_COLS} FROM notifications.subscriptions ORDER BY event_type, channel")
    return from_rows(Subscription, rows)


async def put_subscription(
    con: asyncpg.Connection, event_type: str, channel: str, template_event: str, field: str, active: bool
) -> Subscription:
    row = await con.fetchrow(
        "INSERT INTO notifications.subscriptions (event_type, channel, template_event, recipient_field, active)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_type, channel, template_event, recipient_field)"
        f" DO UPDATE SET active = EXCLUDED.active, updated_at = now() RETURNING {_SUB_COLS}",
        event_type,
        channel,
        template_event,
        field,
        active,
    )
    return from_row(Subscription, row)


# --- contacts and devices ------------------------------------------------------------------------------


async def upsert_contact(
    con: asyncpg.Connection, user_id: UUID, email: str | None, phone: str | None, language: str, active: bool
) -> None:
    await con.execute(
        "INSERT INTO notifications.contacts (user_id, email, phone, language, active) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, phone = EXCLUDED.phone,"
        " language = EXCLUDED.language, active = EXCLUDED.active, updated_at = now()",
        user_id,
        email,
        phone,
        language,
        active,
    )


class Contact(msgspec.Struct, frozen=True, kw_only=True):
    """A user's contact details as the read model (fed by UserContactChanged) knows them."""

    user_id: UUID
    email: str | None
    phone: str | None
    language: str
    active: bool

    def address(self, channel: str) -> str | None:
        """The email or phone for that channel (None for the others)."""
        return self.email if channel == "email" else self.phone if channel == "sms" else None


async def get_contact(con: asyncpg.Connection, user_id: UUID) -> Contact | None:
    row = await con.fetchrow(
        "SELECT user_id, email, phone, language, active FROM notifications.contacts WHERE user_id = $1", user_id
    )
    return from_row(Contact, row)


async def devices_of(con: asyncpg.Connection, user_id: UUID) -> list[str]:
    rows = await con.fetch("SELECT token FROM notifications.devices WHERE user_id = $1 ORDER BY created_at", user_id)
    return [r["token"] for r in rows]


async def register_device(con: asyncpg.Connection, user_id: UUID, token: str, platform: str) -> Device:
    # A token belongs to one installation: registering it again moves it to the caller.
    row = await con.fetchrow(
        "INSERT INTO notifications.devices (token, user_id, platform) VALUES ($1, $2, $3)"
        " ON CONFLICT (token) DO UPDATE SET user_id = EXCLUDED.user_id, platform = EXCLUDED.platform"
        " RETURNING token, user_id, platform, created_at",
        token,
        user_id,
        platform,
    )
    return from_row(Device, row)


async def delete_device(con: asyncpg.Connection, user_id: UUID, token: str) -> bool:
    status = await con.execute("DELETE FROM notifications.devices WHERE token = $1 AND user_id = $2", token, user_id)
    return status != "DELETE 0"


# --- the durable queue ---------------------------------------------------------------------------------


async def insert_message(con: asyncpg.Connection, row: dict[str, Any]) -> UUID:
    """Insert one message unless its idempotency key exists; the id of the message either way."""
    inserted = await con.fetchval(
        "INSERT INTO notifications.messages (id, idempotency_key, channel, recipient, user_id, template_event,"
        " language, subject, body, has_secret, sealed, status, source, sent_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,"
        " CASE WHEN $12 = 'sent' THEN now() END)"
        " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        row["id"],
        row["idempotency_key"],
        row["channel"],
        row["recipient"],
        row["user_id"],
        row["template_event"],
        row["language"],
        row["subject"],
        row["body"],
        row["has_secret"],
        row["sealed"],
        row["status"],
        row["source"],
    )
    if inserted is not None:
        return inserted
    return await con.fetchval(
        "SELECT id FROM notifications.messages WHERE idempotency_key = $1", row["idempotency_key"]
    )


class Due(msgspec.Struct, frozen=True, kw_only=True):
    """A message claimed for sending (attempts already counts this one)."""

    id: UUID
    channel: str
    recipient: str
    subject: str
    body: str
    sealed: bytes | None
    attempts: int
    idempotency_key: str
    template_event: str


async def claim_due(con: asyncpg.Connection, limit: int, lease_s: float) -> list[Due]:
    """Claim due messages for this worker: pending ones, and claimed ones whose lease ran out."""
    rows = await con.fetch(
        "UPDATE notifications.messages m SET status = 'sending', attempts = m.attempts + 1,"
        " next_attempt_at = now() + make_interval(secs => $2)"
        " FROM (SELECT id FROM notifications.messages WHERE status IN ('pending', 'sending')"
        "       AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due"
        " WHERE m.id = due.id"
        " RETURNING m.id, m.channel, m.recipient, m.subject, m.body, m.sealed, m.attempts, m.idempotency_key,"
        " m.template_event",
        limit,
        lease_s,
    )
    return from_rows(Due, rows)


async def mark_sent(con: asyncpg.Connection, results: list[tuple[UUID, str]]) -> None:
    await con.executemany(
        "UPDATE notifications.messages SET status = 'sent', sent_at = now(), provider_message_id = $2,"
        " sealed = NULL, last_error = NULL WHERE id = $1 AND status = 'sending'",
        results,
    )


async def mark_retry(con: asyncpg.Connection, results: list[tuple[UUID, float, str]]) -> None:
    await con.executemany(
        "UPDATE notifications.messages SET status = 'pending', next_attempt_at = now() + make_interval(secs => $2),"
        " last_error = $3 WHERE id = $1 AND status = 'sending'",
        results,
    )


async def mark_dead(con: asyncpg.Connection, results: list[tuple[UUID, str]]) -> None:
    await con.executemany(
        "UPDATE notifications.messages SET status = 'dead', dead_at = now(), sealed = NULL, last_error = $2"
        " WHERE id = $1 AND status = 'sending'",
        results,
    )


async def seconds_to_next_due(con: asyncpg.Connection) -> float | None:
    value = await con.fetchval(
        "SELECT extract(epoch FROM min(next_attempt_at) - now()) FROM notifications.messages"
        " WHERE status IN ('pending', 'sending')"
    )
    return None if value is None else float(value)


async def retry_dead(con: asyncpg.Connection, channel: str | None) -> int:
    # A dead secret-bearing message lost its sealed body: resending it would send the mask.
    status = await con.execute(
        "UPDATE notifications.messages SET status = 'pending', attempts = 0, next_attempt_at = now(),"
        " dead_at = NULL WHERE status = 'dead' AND NOT (has_secret AND sealed IS NULL)"
        " AND ($1::text IS NULL OR channel = $1)",
        channel,
    )
    return int(status.rsplit(" ", 1)[-1])


_DELIVERY_COLS = (
    "id, channel, recipient, template_event, status, attempts, subject, body, last_error,"
    " provider_message_id, created_at, sent_at"
)


async def get_delivery(con: asyncpg.Connection, message_id: UUID) -> Delivery | None:
    row = await con.fetchrow(f"SELECT {_DELIVERY_COLS} FROM notifications.messages WHERE id = $1", message_id)
    return from_row(Delivery, row)


# --- in-app --------------------------------------------------------------------------------------------

_INAPP_COLS = "id, template_event, subject AS title, body, created_at, read_at"


async def in_app_page(
    con: asyncpg.Connection, user_id: UUID, limit: int, after: tuple[Any, ...] | None, unread_only: bool
) -> list[Notification]:
    """A user's in-app messages, newest first, after the keyset `after` (created_at, id)."""
    at, mid = after or (None, None)
    rows = await con.fetch(
        f"SELECT {_INAPP_COLS} FROM notifications.messages WHERE channel = 'in_app' AND user_id = $1"
        " AND (NOT $3 OR read_at IS NULL)"
        " AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5::uuid))"
        " ORDER BY created_at DESC, id DESC LIMIT $2",
        user_id,
        limit,
        unread_only,
        at,
        mid,
    )
    return from_rows(Notification, rows)


async def unread_count(con: asyncpg.Connection, user_id: UUID) -> int:
    return await con.fetchval(
        "SELECT count(*) FROM notifications.messages WHERE channel = 'in_app' AND user_id = $1 AND read_at IS NULL",
        user_id,
    )


async def mark_read(con: asyncpg.Connection, user_id: UUID, message_id: UUID) -> Notification | None:
    row = await con.fetchrow(
        "UPDATE notifications.messages SET read_at = coalesce(read_at, now())"
        f" WHERE id = $1 AND user_id = $2 AND channel = 'in_app' RETURNING {_INAPP_COLS}",
        message_id,
        user_id,
    )
    return from_row(Notification, row)
