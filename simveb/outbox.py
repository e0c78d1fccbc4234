"""The transactional outbox: `emit` writes events with the state change; the relay delivers them.

An actor writes its events to `bus.outbox` inside the transaction that changes its state (`emit`); a
rollback publishes nothing. After commit a relay (woken by NOTIFY on its own connection, and by a slow
poll) claims a batch with a lease in one short statement (`FOR UPDATE SKIP LOCKED`, so several relays
in several processes share the work), delivers each row to its subscribers **outside** any
transaction, and settles each row on its own:

- delivered to every subscriber: published (purged after `bus.retention_s`);
- a payload that does not decode: quarantined with its error, and the rest of the batch flows;
- a type this process does not know (a newer process's event during a rolling deploy): never claimed
  here, left for a process that knows it;
- delivery is per subscriber: the row's `pending` lists the subscribers still to reach (every actor
  that subscribes, in this process or another, filled at the first claim). A relay claims only rows
  with a subscriber it hosts (or not yet fanned out), delivers to those, and removes them from
  `pending`; a row whose remaining subscribers live in other processes is left to their relays
  (with a NOTIFY to wake them), and is published once `pending` is empty;
- a subscriber failed: retried with exponential backoff (capped at `bus.event_backoff_max_s`) until
  `bus.event_retry_horizon_s` has passed since the first failure; then dead, listed by
  `simveb events dead` and delivered again by `simveb events redrive`.

Delivery is at least once; each consumer records handled event ids in `bus.inbox` (in the same
transaction as its own writes) so a redelivery changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import msgspec

from simveb.messages import Event, Record, event_types

if TYPE_CHECKING:
    import asyncpg

    from simveb.bus import Bus
    from simveb.db import Database, Listener

log = logging.getLogger("simveb.outbox")
CHANNEL = "simveb_outbox"


async def emit(con: asyncpg.Connection, *events: Event, source: str, request_id: str | None = None) -> None:
    """Insert events into bus.outbox on `con` (inside its transaction) and wake the relays on commit.

    `request_id` (the request that caused them) is delivered with the events, so what their
    consumers do is traced, and audited, under the same request.
    """
    if not events:
        return
    await con.executemany(
        "INSERT INTO bus.outbox (event_id, source, type, payload, request_id) VALUES ($1, $2, $3, $4::text::jsonb, $5)",
        [
            (uuid.uuid4(), source, ev.__struct_config__.tag, msgspec.json.encode(ev).decode(), request_id)
            for ev in events
        ],
    )
    # NOTIFY is transactional: the relays wake only if this transaction commits.
    await con.execute("SELECT pg_notify($1, '')", CHANNEL)


# --- operator views: dead and quarantined events, redrive, purge -------------------------------------


class StoredEvent(Record):
    """One outbox row as an operator sees it."""

    id: int
    event_id: uuid.UUID
    source: str
    type: str
    status: str  # dead | quarantined
    attempts: int
    last_error: str | None
    created_at: Any
    failed_at: Any


async def list_dead(con: asyncpg.Connection, *, limit: int = 100) -> list[StoredEvent]:
    """Dead and quarantined events, oldest first."""
    rows = await con.fetch(
        "SELECT id, event_id, source, type, attempts, last_error, created_at,"
        " CASE WHEN quarantined_at IS NOT NULL THEN 'quarantined' ELSE 'dead' END AS status,"
        " coalesce(quarantined_at, dead_at) AS failed_at"
        " FROM bus.outbox WHERE published_at IS NULL AND (dead_at IS NOT NULL OR quarantined_at IS NOT NULL)"
        " ORDER BY id LIMIT $1",
        limit,
    )
    return [msgspec.convert(dict(r), StoredEvent) for r in rows]


async def redrive(con: asyncpg.Connection, ids: list[int] | None = None) -> int:
    """Make dead (and quarantined) events deliverable again now, with a fresh retry horizon.

    `ids` None redrives all of them. Consumers that handled an event already skip it (inbox).
    """
    status = await con.execute(
        "UPDATE bus.outbox SET dead_at = NULL, quarantined_at = NULL, attempts = 0, lease_until = NULL,"
        " claimed_by = NULL, next_attempt_at = now(), retry_from = NULL"
        " WHERE published_at IS NULL AND (dead_at IS NOT NULL OR quarantined_at IS NOT NULL)"
        " AND ($1::bigint[] IS NULL OR id = ANY($1::bigint[]))",
        ids,
    )
    await con.execute("SELECT pg_notify($1, '')", CHANNEL)
    return int(status.split()[-1])


async def purge(con: asyncpg.Connection, retention_s: float) -> tuple[int, int]:
    """Delete delivered outbox rows and inbox rows older than the retention; returns (outbox, inbox).

    An inbox row is kept while its event is still undelivered somewhere (pending, dead or
    quarantined): a redrive must still find who handled it already.
    """
    out = await con.execute(
        "DELETE FROM bus.outbox WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)",
        retention_s,
    )
    inbox = await con.execute(
        "DELETE FROM bus.inbox i WHERE handled_at < now() - make_interval(secs => $1)"
        " AND NOT EXISTS (SELECT 1 FROM bus.outbox o WHERE o.event_id = i.event_id AND o.published_at IS NULL)",
        retention_s,
    )
    return int(out.split()[-1]), int(inbox.split()[-1])


REDACTED = {"redacted": True}


async def redact_failed(con: asyncpg.Connection, retention_s: float) -> int:
    """Blank the payload of dead and quarantined rows that failed longer ago than the retention.

    Event payloads carry personal data (names, phone numbers, NPIs); delivered rows are purged,
    and a row that never got delivered must not keep them for ever either. The row stays (id,
    type, error, times) for operators; a redacted row can no longer be redriven: it would be
    quarantined again, its payload no longer decoding.
    """
    status = await con.execute(
        "UPDATE bus.outbox SET payload = $2::jsonb WHERE published_at IS NULL"
        " AND coalesce(quarantined_at, dead_at) < now() - make_interval(secs => $1)"
        " AND payload <> $2::jsonb",
        retention_s,
        REDACTED,
    )
    return int(status.split()[-1])


# --- the relay ----------------------------------------------------------------------------------------


class OutboxRelay:
    """Claims committed outbox rows with a lease, delivers them outside any transaction, settles each."""

    def __init__(self, bus: Bus, db: Database, *, name: str | None = None) -> None:
        self.bus = bus
        self.db = db
        # The lease owner's name must be unique across processes: a relay only settles its own claims.
        self.name = f"{name or 'relay'}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: Listener | None = None
        self._stopping = False
        self._types = event_types()  # by tag; the event classes are all imported by now
        self._last_purge = 0.0
        self.delivered = 0
        self.retried = 0
        self.dead = 0
        self.quarantined = 0
        self.handed_on = 0  # rows delivered here and left for subscribers hosted in other processes

    async def start(self) -> None:
        self._listener = self.db.listener(CHANNEL, self._notified)
        await self._listener.start()
        self._wake.set()  # catch up on whatever was committed before this start
        self._task = asyncio.create_task(self._run(), name=f"outbox:{self.name}")

    def _notified(self, _payload: str) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None

    async def _run(self) -> None:
        settings = self.bus.settings
        while not self._stopping:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
            # arrives just as the inner wait completes (a NOTIFY), and the relay would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.relay_poll_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                while await self.drain_once():
                    pass
                if time.monotonic() - self._last_purge >= settings.purge_interval_s:
                    self._last_purge = time.monotonic()
                    async with self.db.connection() as con:
                        purged = await purge(con, settings.retention_s)
                        redacted = await redact_failed(con, settings.retention_s)
                    if any(purged):
                        log.info("purged %d outbox and %d inbox rows", *purged)
                    if redacted:
                        log.info("redacted the payload of %d dead or quarantined outbox rows", redacted)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay %s failed; retrying", self.name)
                await asyncio.sleep(1.0)

    def _refresh_types(self) -> list[str]:
        # Event classes imported after start (tests, plugins) are picked up on the next claim.
        self._types = event_types()
        return list(self._types)

    async def drain_once(self) -> int:
        """Claim one batch, deliver and settle each row; return how many rows were claimed."""
        settings = self.bus.settings
        async with self.db.connection() as con:
            rows = await con.fetch(
                "UPDATE bus.outbox SET lease_until = now() + make_interval(secs => $3), claimed_by = $4"
                " WHERE id IN (SELECT id FROM bus.outbox"
                "   WHERE published_at IS NULL AND dead_at IS NULL AND quarantined_at IS NULL"
                "   AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now())"
                "   AND type = ANY($2::text[]) AND (pending IS NULL OR pending && $5::text[])"
                "   ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)"
                " RETURNING id, event_id, type, payload::text AS payload, attempts, pending, request_id",
                settings.relay_batch,
                self._refresh_types(),
                settings.relay_lease_s,
                self.name,
                list(self.bus.cells),
            )
        rows = sorted(rows, key=lambda r: r["id"])
        lease_end = time.monotonic() + settings.relay_lease_s
        for index, row in enumerate(rows):
            if lease_end - time.monotonic() < settings.ask_timeout_s + 1:
                lease_end = await self._extend([r["id"] for r in rows[index:]])
            await self._deliver_one(row)
        return len(rows)

    async def _extend(self, ids: list[int]) -> float:
        lease = self.bus.settings.relay_lease_s
        async with self.db.connection() as con:
            await con.execute(
                "UPDATE bus.outbox SET lease_until = now() + make_interval(secs => $2)"
                " WHERE id = ANY($1) AND claimed_by = $3",
                ids,
                lease,
                self.name,
            )
        return time.monotonic() + lease

    async def _deliver_one(self, row: Any) -> None:
        settings = self.bus.settings
        try:
            event = msgspec.json.decode(row["payload"], type=self._types[row["type"]])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("outbox row %s (%s) does not decode, quarantined: %s", row["id"], row["type"], exc)
            await self._settle(
                "UPDATE bus.outbox SET quarantined_at = now(), last_error = $3, lease_until = NULL"
                " WHERE id = $1 AND claimed_by = $2",
                row["id"],
                f"undecodable: {exc}",
            )
            self.quarantined += 1
            self.bus.dead_letters += 1
            return
        # Who must still get it: the row's list, or (first claim) every subscriber of the type wherever
        # it is hosted. This relay delivers to those hosted here; the others are left to their relays.
        pending = row["pending"] if row["pending"] is not None else self.bus.subscriber_names(type(event))
        here = [name for name in pending if name in self.bus.cells]
        elsewhere = [name for name in pending if name not in self.bus.cells]
        failed = await self.bus.deliver(row["event_id"], event, only=here, request_id=row["request_id"]) if here else []
        if not failed and elsewhere:
            # The hand-on and the NOTIFY waking the other relays in one statement (a data-modifying
            # WITH runs whether or not its rows are read).
            await self._settle(
                "WITH handed AS (UPDATE bus.outbox SET pending = $3, lease_until = NULL"
                " WHERE id = $1 AND claimed_by = $2) SELECT pg_notify($4, '')",
                row["id"],
                elsewhere,
                CHANNEL,
            )
            self.handed_on += 1
            return
        if not failed:
            await self._settle(
                "UPDATE bus.outbox SET published_at = now(), lease_until = NULL, pending = '{}'"
                " WHERE id = $1 AND claimed_by = $2",
                row["id"],
            )
            self.delivered += 1
            return
        # Retry with backoff from the first failure until the horizon; then dead until redriven.
        dead = await self._settle(
            "UPDATE bus.outbox SET attempts = attempts + 1, last_error = $3, lease_until = NULL, pending = $6,"
            " retry_from = coalesce(retry_from, now()),"
            " next_attempt_at = now() + make_interval(secs => least($4::float8, 2 ^ least(attempts, 30))),"
            " dead_at = CASE WHEN coalesce(retry_from, now()) + make_interval(secs => $5) <= now()"
            "   THEN now() END"
            " WHERE id = $1 AND claimed_by = $2 RETURNING dead_at IS NOT NULL",
            row["id"],
            "subscriber failed: " + ", ".join(failed),
            settings.event_backoff_max_s,
            settings.event_retry_horizon_s,
            [*failed, *elsewhere],
        )
        if dead:
            log.error("dead letter: event %s (%s) failed at %s", row["event_id"], row["type"], failed)
            self.dead += 1
            self.bus.dead_letters += 1
        else:
            self.retried += 1

    async def _settle(self, sql: str, row_id: int, *args: Any) -> Any:
        async with self.db.connection() as con:
            return await con.fetchval(sql, row_id, self.name, *args)
