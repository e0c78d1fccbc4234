"""The notifications actor: renders templates into durable queue rows, and its workers deliver them.

Every message is a row of `notifications.messages` before anything is sent, written with a unique
idempotency key (per request key, or per event, channel and recipient), so a retried request or a
redelivered event never queues a message twice. Delivery workers (tasks started in on_start) claim
due rows with `FOR UPDATE SKIP LOCKED` under a lease, send them outside any transaction, and settle
them: sent, retried later with exponential backoff, or dead after `max_attempts`. A process that dies
mid-send leaves its rows claimed until the lease runs out; another worker then retries them. The
sending is therefore at least once; the SMS gateway receives our idempotency key to drop a repeat.

Domain events reach this actor through a handler annotated with the base `Event` type (it receives
every event); the subscription table decides which of them send what to whom. Contact details come
from `UserContactChanged` into a local read model: this actor asks nobody. Its handlers take the
runtime's connection (events: in the inbox transaction); the workers use short blocks of their own
and never hold a connection while they send.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import re
import time
import uuid
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import msgspec
from cryptography.exceptions import InvalidTag

from simveb.actors.notifications import seed_data, store
from simveb.actors.notifications.channels import (
    Channel,
    EmailChannel,
    FcmPush,
    Outgoing,
    PermanentFailure,
    TransientFailure,
    sms_channel,
)
from simveb.actors.notifications.messages import (
    Accepted,
    CountUnread,
    Delivery,
    Device,
    GetDelivery,
    ListMyNotifications,
    ListSubscriptions,
    ListTemplates,
    MarkRead,
    Notification,
    NotificationPage,
    PutSubscription,
    RegisterDevice,
    RetryDead,
    SeedNotifications,
    SendNotification,
    SendOtp,
    Subscription,
    Template,
    UnreadCount,
    UnregisterDevice,
    UpdateTemplate,
)
from simveb.actors.notifications.rendering import Renderer, Sealer, check_syntax, masked
from simveb.actors.users.messages import UserContactChanged
from simveb.bus import Actor, current_event_id, handler
from simveb.db import Listener
from simveb.errors import Conflict, Invalid, NotFound
from simveb.messages import Event, decode_cursor, page

log = logging.getLogger("simveb.notifications")
NOTIFY_CHANNEL = "simveb_notifications"
QUEUED = "queued"  # NOTIFY payload of a queued message; any other payload also drops the subscriptions cache
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
PHONE = re.compile(r"^\+[1-9][0-9]{7,14}$")
PARAM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
SUBSCRIPTIONS_TTL_S = 30.0


def _check_address(channel: str, to: str) -> None:
    if channel == "email" and (len(to) > 254 or not EMAIL.match(to)):
        raise Invalid("`to` is not an email address", code="invalid_recipient")
    if channel == "sms" and not PHONE.match(to):
        raise Invalid("`to` is not an international phone number (+229...)", code="invalid_recipient")


def _idempotency_key(*parts: str) -> str:
    """Parts joined; hashed when long (device tokens run to kilobytes, a btree key may not)."""
    key = ":".join(parts)
    return key if len(key) <= 300 else f"{parts[0]}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def _event_identity(event: Event) -> str:
    """The event's id (the same on every redelivery); a digest of its content when handled outside
    the bus's event delivery (then there is no id)."""
    event_id = current_event_id.get()
    if event_id is not None:
        return event_id.hex
    tag = type(event).__struct_config__.tag
    return hashlib.sha256(f"{tag}:".encode() + msgspec.json.encode(event)).hexdigest()[:32]


class NotificationsActor(Actor):
    name = "notifications"
    # State kept in memory is a cache (subscriptions) and clients: correctness is in the database.
    concurrency = 4

    async def on_start(self) -> None:
        s = self.settings.notifications
        self.sealer = Sealer.for_settings(self.settings)
        self.renderer = Renderer.for_settings(self.settings)
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(s.send_timeout_s, connect=min(5.0, s.send_timeout_s)),
            limits=httpx.Limits(max_connections=max(10, s.workers * s.batch)),
        )
        self.channels: dict[str, Channel] = {
            "email": EmailChannel(s),
            "sms": sms_channel(s, self.client),
            "push": FcmPush(s, self.client, development=not self.settings.is_production),
        }
        self._subs: dict[str, list[Subscription]] | None = None
        self._subs_loaded = 0.0
        self._wake = asyncio.Event()
        self._stopping = False
        self._workers: list[asyncio.Task[None]] = []
        # Writes from any process (the CLI, another server) NOTIFY on commit: the workers wake at once,
        # and a subscription change (or a reconnection, when changes may have been missed) drops the
        # subscriptions cache. The LISTEN has a connection of its own, re-established after a loss.
        self._listener: Listener = self.db.listener(NOTIFY_CHANNEL, self._notified)
        await self._listener.start()
        if s.workers:
            self._workers = [
                asyncio.create_task(self._work(i), name=f"notifications:worker:{i}") for i in range(s.workers)
            ]

    async def on_stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._workers:
            # Let in-flight sends settle their rows, so a clean stop never leaves a message to the lease.
            _done, pending = await asyncio.wait(self._workers, timeout=self.bus.settings.shutdown_grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._listener.stop()
        await self.client.aclose()
        await self.renderer.close()

    def _notified(self, payload: str) -> None:
        if payload != QUEUED:
            self._subs = None
        self._wake.set()

    # --- writing to the queue ------------------------------------------------------------------------

    async def _enqueue(
        self,
        con: asyncpg.Connection,
        *,
        channel: str,
        recipient: str,
        user_id: UUID | None,
        template_event: str,
        language: str,
        params: dict[str, Any],
        secrets: set[str],
        idempotency_key: str,
        source: str,
    ) -> UUID:
        template = await store.find_template(con, template_event, channel, language)
        if template is None:
            raise NotFound(f"no template {template_event!r} for channel {channel}", code="unknown_template")
        secret = (set(template.secret_params) | secrets) & set(params)
        if secret and channel == "in_app":
            raise Invalid("in-app notifications are stored: they cannot carry secret parameters", code="secret_in_app")
        message_id = uuid.uuid4()
        shown = masked(params, sorted(secret)) if secret else params
        jobs = [(template.subject, shown, "subject"), (template.body, shown, "body")]
        if secret:
            jobs += [(template.subject, params, "subject"), (template.body, params, "body")]
        # Off the event loop, with limits: a template is admin-edited text (see rendering.py).
        texts = await self.renderer.render_many(jobs)
        subject, body = texts[0], texts[1]
        sealed = self.sealer.seal(message_id, texts[2], texts[3]) if secret else None
        saved = await store.insert_message(
            con,
            {
                "id": message_id,
                "idempotency_key": idempotency_key,
                "channel": channel,
                "recipient": recipient,
                "user_id": user_id,
                "template_event": template_event,
                "language": template.language,
                "subject": subject,
                "body": body,
                "has_secret": bool(secret),
                "sealed": sealed,
                # In-app is delivered by being stored: the user reads it through the API.
                "status": "sent" if channel == "in_app" else "pending",
                "source": source,
            },
        )
        await con.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, QUEUED)
        return saved

    @handler
    async def send_otp(self, msg: SendOtp, con: asyncpg.Connection) -> Accepted:
        _check_address(msg.channel, msg.to)
        if not msg.code or len(msg.code) > 20:
            raise Invalid("the code must be 1 to 20 characters", code="invalid_code")
        saved = await self._enqueue(
            con,
            channel=msg.channel,
            recipient=msg.to,
            user_id=None,
            template_event=f"otp.{msg.purpose}",
            language=msg.language,
            params={"code": msg.code, "purpose": msg.purpose},
            secrets={"code"},
            idempotency_key=_idempotency_key("otp", msg.idempotency_key, msg.channel, msg.to),
            source="otp",
        )
        return Accepted(notification_ids=[saved])

    @handler
    async def send_notification(self, msg: SendNotification, con: asyncpg.Connection) -> Accepted:
        key = msg.idempotency_key or uuid.uuid4().hex
        language = msg.language
        recipients: list[tuple[str, UUID | None]] = []
        if msg.channel in ("email", "sms"):
            if msg.to is not None:
                _check_address(msg.channel, msg.to)
                recipients.append((msg.to, msg.user_id))
            elif msg.user_id is not None:
                contact = await store.get_contact(con, msg.user_id)
                address = contact.address(msg.channel) if contact else None
                if not address:
                    raise Conflict(f"no {msg.channel} contact is known for this user", code="no_contact")
                language = language or contact.language
                recipients.append((address, msg.user_id))
            else:
                raise Invalid("give `to` or `user_id`", code="recipient_required")
        elif msg.channel == "push":
            if msg.to is not None:
                recipients.append((msg.to, msg.user_id))
            elif msg.user_id is not None:
                tokens = await store.devices_of(con, msg.user_id)
                if not tokens:
                    raise Conflict("this user has no push device registered", code="no_device")
                recipients += [(t, msg.user_id) for t in tokens]
            else:
                raise Invalid("give `user_id` (or a device token in `to`)", code="recipient_required")
        else:
            if msg.user_id is None:
                raise Invalid("an in-app notification needs `user_id`", code="recipient_required")
            recipients.append((str(msg.user_id), msg.user_id))
        if language is None and msg.user_id is not None:
            contact = await store.get_contact(con, msg.user_id)
            language = contact.language if contact else None
        ids = [
            await self._enqueue(
                con,
                channel=msg.channel,
                recipient=recipient,
                user_id=user_id,
                template_event=msg.template,
                language=language or "fr",
                params=dict(msg.params),
                secrets=set(),
                idempotency_key=_idempotency_key("api", key, msg.channel, recipient),
                source=msg.by,
            )
            for recipient, user_id in recipients
        ]
        return Accepted(notification_ids=ids)

    # --- events and subscriptions --------------------------------------------------------------------

    async def _subscriptions(self, con: asyncpg.Connection) -> dict[str, list[Subscription]]:
        # Other processes may add rows: the cache is short-lived as well as invalidated on our writes.
        if self._subs is None or time.monotonic() - self._subs_loaded > SUBSCRIPTIONS_TTL_S:
            subs: dict[str, list[Subscription]] = {}
            for sub in await store.all_subscriptions(con):
                if sub.active:
                    subs.setdefault(sub.event_type, []).append(sub)
            self._subs, self._subs_loaded = subs, time.monotonic()
        return self._subs

    @handler
    async def on_contact_changed(self, event: UserContactChanged, con: asyncpg.Connection) -> None:
        await store.upsert_contact(con, event.user_id, event.email, event.phone, event.language, event.active)
        await self._fan_out(event, con)

    @handler
    async def on_event(self, event: Event, con: asyncpg.Connection) -> None:
        """Every event of the process: those with a subscription become messages, in the inbox transaction."""
        await self._fan_out(event, con)

    async def _fan_out(self, event: Event, con: asyncpg.Connection) -> None:
        tag = type(event).__struct_config__.tag
        subs = (await self._subscriptions(con)).get(str(tag))
        if not subs:
            return
        fields = msgspec.to_builtins(event)
        if fields.get("visible_to_applicant") is False:
            return  # a step the applicant is not shown (RegistrationStatusChanged): nobody is told
        params = {**fields, "event_type": tag}
        digest = _event_identity(event)
        # An address in the event (not a user id) is written to in the event's language, if it says.
        spoken = fields.get("language") if fields.get("language") in ("fr", "en") else "fr"
        for sub in subs:
            value = fields.get(sub.recipient_field)
            if value is None:
                if sub.recipient_field not in fields:
                    log.warning("subscription %s: event %s has no field %s", sub.id, tag, sub.recipient_field)
                continue  # present but empty (no old email to tell): nobody to write to
            for recipient, user_id, language in await self._recipients(con, sub.channel, str(value), spoken):
                try:
                    async with con.transaction():  # a savepoint: one bad subscription spoils no other
                        await self._enqueue(
                            con,
                            channel=sub.channel,
                            recipient=recipient,
                            user_id=user_id,
                            template_event=sub.template_event,
                            language=language,
                            params=params,
                            secrets=set(),
                            idempotency_key=_idempotency_key("evt", digest, sub.channel, recipient),
                            source=f"event:{tag}",
                        )
                except (NotFound, Invalid) as exc:
                    log.error("subscription %s on %s could not queue a message: %s", sub.id, tag, exc.detail)

    async def _recipients(
        self, con: asyncpg.Connection, channel: str, value: str, spoken: str = "fr"
    ) -> list[tuple[str, UUID | None, str]]:
        """(address, user id, language) for a recipient field: a user id through the read model, or an
        address (written to in `spoken`)."""
        try:
            user_id: UUID | None = UUID(value)
        except ValueError:
            user_id = None
        if user_id is None:
            if channel in ("email", "sms") and (EMAIL.match(value) if channel == "email" else PHONE.match(value)):
                return [(value, None, spoken)]
            log.warning("notification recipient field is neither a user id nor a %s address", channel)
            return []
        contact = await store.get_contact(con, user_id)
        language = contact.language if contact else "fr"
        if contact is not None and not contact.active:
            return []
        if channel == "in_app":
            return [(str(user_id), user_id, language)]
        if channel == "push":
            return [(token, user_id, language) for token in await store.devices_of(con, user_id)]
        address = contact.address(channel) if contact else None
        if not address:
            log.info("user %s has no %s contact: nothing sent", user_id, channel)
            return []
        return [(address, user_id, language)]

    async def _subscriptions_changed(self, con: asyncpg.Connection) -> None:
        # Dropped now and again when the NOTIFY arrives after commit (here, and in every other
        # process), so a read that reloaded before this transaction committed is not kept.
        self._subs = None
        await con.execute("SELECT pg_notify($1, 'subscriptions')", NOTIFY_CHANNEL)

    @handler
    async def list_subscriptions(self, msg: ListSubscriptions, con: asyncpg.Connection) -> list[Subscription]:
        subs = await store.all_subscriptions(con)
        return [s for s in subs if msg.event_type is None or s.event_type == msg.event_type]

    @handler
    async def put_subscription(self, msg: PutSubscription, con: asyncpg.Connection) -> Subscription:
        if not PARAM.match(msg.recipient_field):
            raise Invalid("recipient_field must name a field of the event", code="invalid_recipient_field")
        if not await store.list_templates(con, msg.template_event, msg.channel):
            raise NotFound(f"no template {msg.template_event!r} for channel {msg.channel}", code="unknown_template")
        saved = await store.put_subscription(
            con, msg.event_type, msg.channel, msg.template_event, msg.recipient_field, msg.active
        )
        await self._subscriptions_changed(con)
        return saved

    # --- templates -----------------------------------------------------------------------------------

    @handler
    async def list_templates(self, msg: ListTemplates, con: asyncpg.Connection) -> list[Template]:
        return await store.list_templates(con, msg.event, msg.channel)

    @handler
    async def update_template(self, msg: UpdateTemplate, con: asyncpg.Connection) -> Template:
        if not msg.body.strip():
            raise Invalid("body: a template cannot be empty", code="empty_template")
        check_syntax(msg.body, "body")
        await self.renderer.check(msg.body, "body")
        if msg.subject is not None:
            check_syntax(msg.subject, "subject")
            await self.renderer.check(msg.subject, "subject")
        for name in msg.secret_params or []:
            if not PARAM.match(name):
                raise Invalid(f"secret_params: {name!r} is not a parameter name", code="invalid_secret_param")
        old = await store.get_template(con, msg.template_id, lock=True)
        if old is None:
            raise NotFound(f"no template {msg.template_id}", code="unknown_template")
        secrets = old.secret_params if msg.secret_params is None else sorted(set(msg.secret_params))
        if secrets and old.channel == "in_app":
            raise Invalid("in-app templates cannot have secret parameters", code="secret_in_app")
        return await store.update_template(
            con,
            msg.template_id,
            old.subject if msg.subject is None else msg.subject,
            msg.body,
            secrets,
            old.description if msg.description is None else msg.description,
            msg.by,
        )

    # --- in-app inbox and devices --------------------------------------------------------------------

    @handler
    async def list_mine(self, msg: ListMyNotifications, con: asyncpg.Connection) -> NotificationPage:
        after = decode_cursor(msg.cursor, datetime, UUID)
        rows = await store.in_app_page(con, msg.user_id, msg.limit + 1, after, msg.unread_only)
        return page(NotificationPage, rows, msg.limit, lambda n: (n.created_at, n.id))

    @handler
    async def count_unread(self, msg: CountUnread, con: asyncpg.Connection) -> UnreadCount:
        return UnreadCount(unread=await store.unread_count(con, msg.user_id))

    @handler
    async def mark_read(self, msg: MarkRead, con: asyncpg.Connection) -> Notification:
        saved = await store.mark_read(con, msg.user_id, msg.notification_id)
        if saved is None:
            # Somebody else's notification is indistinguishable from a missing one.
            raise NotFound("no such notification", code="unknown_notification")
        return saved

    @handler
    async def register_device(self, msg: RegisterDevice, con: asyncpg.Connection) -> Device:
        if not msg.token or len(msg.token) > 4096:
            raise Invalid("token must be 1 to 4096 characters", code="invalid_device_token")
        return await store.register_device(con, msg.user_id, msg.token, msg.platform)

    @handler
    async def unregister_device(self, msg: UnregisterDevice, con: asyncpg.Connection) -> None:
        if not await store.delete_device(con, msg.user_id, msg.token):
            raise NotFound("no such device", code="unknown_device")

    # --- operations ----------------------------------------------------------------------------------

    @handler
    async def get_delivery(self, msg: GetDelivery, con: asyncpg.Connection) -> Delivery:
        found = await store.get_delivery(con, msg.notification_id)
        if found is None:
            raise NotFound("no such notification", code="unknown_notification")
        return found

    @handler
    async def retry_dead(self, msg: RetryDead, con: asyncpg.Connection) -> int:
        count = await store.retry_dead(con, msg.channel)
        await con.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, QUEUED)
        if count:
            log.info("%d dead notification(s) queued again", count)
        return count

    @handler
    async def seed(self, msg: SeedNotifications, con: asyncpg.Connection) -> int:
        if msg.only_if_empty and await store.has_templates(con):
            return 0
        added = await seed_data.load(con)
        await self._subscriptions_changed(con)
        if added:
            log.info("seeded %d notification rows", added)
        return added

    # --- delivery workers ----------------------------------------------------------------------------

    async def _work(self, index: int) -> None:
        s = self.settings.notifications
        while not self._stopping:
            self._wake.clear()
            try:
                if await self.deliver_once():
                    continue
                async with self.db.connection() as con:
                    due_in = await store.seconds_to_next_due(con)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notification worker %d failed; retrying", index)
                due_in = 1.0
            # Something due but claimed by another worker: do not spin on it.
            wait = s.poll_s if due_in is None else min(s.poll_s, max(0.01, due_in))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def deliver_once(self) -> int:
        """Claim one batch of due messages, send them concurrently, settle them; return how many."""
        s = self.settings.notifications
        async with self.db.transaction() as con:
            rows = await store.claim_due(con, s.batch, s.lease_s)
        if not rows:
            return 0
        outcomes = await asyncio.gather(*(self._send(row) for row in rows))
        sent = [(o[1], o[2]) for o in outcomes if o[0] == "sent"]
        retry = [(o[1], o[2], o[3]) for o in outcomes if o[0] == "retry"]
        dead = [(o[1], o[2]) for o in outcomes if o[0] == "dead"]
        async with self.db.transaction() as con:
            if sent:
                await store.mark_sent(con, sent)
            if retry:
                await store.mark_retry(con, retry)
            if dead:
                await store.mark_dead(con, dead)
        return len(rows)

    async def _send(self, row: store.Due) -> tuple[Any, ...]:
        s = self.settings.notifications
        mid: UUID = row.id
        channel = self.channels.get(row.channel)
        if channel is None:
            return ("dead", mid, f"no sender for channel {row.channel}")
        subject, text = row.subject, row.body
        if row.sealed is not None:
            try:
                subject, text = self.sealer.unseal(mid, row.sealed)
            except (InvalidTag, ValueError, KeyError):
                log.error("notification %s: sealed body cannot be opened (seal key changed?)", mid)
                return ("dead", mid, "sealed body cannot be opened")
        out = Outgoing(
            message_id=str(mid),
            recipient=row.recipient,
            subject=subject,
            text=text,
            idempotency_key=row.idempotency_key,
            data={"notification_id": str(mid), "event": row.template_event},
        )
        attempts: int = row.attempts
        try:
            provider_id = await channel.send(out)
        except PermanentFailure as exc:
            log.warning("notification %s via %s refused: %s", mid, row.channel, exc)
            return ("dead", mid, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = str(exc) if isinstance(exc, TransientFailure) else f"unexpected {type(exc).__name__}"
            if not isinstance(exc, TransientFailure):
                log.exception("notification %s via %s: unexpected failure", mid, row.channel)
            if attempts >= s.max_attempts:
                log.error("notification %s via %s is dead after %d attempts: %s", mid, row.channel, attempts, reason)
                return ("dead", mid, reason)
            delay = min(s.retry_max_s, s.retry_base_s * 2 ** (attempts - 1)) * random.uniform(0.8, 1.2)
            log.info(
                "notification %s via %s failed (attempt %d), retry in %.1f s: %s",
                mid,
                row.channel,
                attempts,
                delay,
                reason,
            )
            return ("retry", mid, delay, reason)
        log.info("notification %s sent via %s (attempt %d)", mid, row.channel, attempts)
        return ("sent", mid, provider_id)
