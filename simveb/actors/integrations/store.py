"""SQL of the integrations service: every query on the `integrations` schema.

Call logs hold a keyed hash of the identifier, never the identifier itself (nor any response data).
The retry queue must hold the raw identifier to call again; its rows are deleted once the lookup
completes.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import datetime

import asyncpg
import msgspec

from simveb.db import from_rows
from simveb.messages import Record


def hash_identifier(identifier: str, key: str = "") -> str:
    """Hex SHA-256 of an NPI/IFU, keyed (HMAC) when a key is configured, for logs that must not hold it."""
    data = identifier.encode()
    if key:
        return hmac.new(key.encode(), data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


class CallLog(Record):
    """One HTTP attempt to a registry, as written to integration_logs."""

    service: str
    x_road_id: uuid.UUID
    identifier_hash: str
    attempt: int
    origin: str  # "ask" (someone waits) or "queue" (background retry)
    duration_ms: int
    outcome: str
    http_status: int | None = None
    error_code: str | None = None


class QueuedLookup(Record):
    id: int
    service: str
    identifier: str
    requested_by: str | None
    attempts: int


class Figures(Record):
    """Recent call figures of one service, for the status."""

    calls: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    queued: int = 0
    abandoned: int = 0


class Transition(Record):
    at: datetime
    from_state: str
    to_state: str
    process: str


async def log_call(con: asyncpg.Connection, entry: CallLog) -> None:
    await con.execute(
        "INSERT INTO integrations.integration_logs (service, x_road_id, identifier_hash, attempt, origin,"
        " duration_ms, outcome, http_status, error_code) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        entry.service,
        entry.x_road_id,
        entry.identifier_hash,
        entry.attempt,
        entry.origin,
        entry.duration_ms,
        entry.outcome,
        entry.http_status,
        entry.error_code,
    )


async def record_transition(con: asyncpg.Connection, service: str, old: str, new: str, process: str) -> None:
    await con.execute(
        "INSERT INTO integrations.breaker_transitions (service, from_state, to_state, process) VALUES ($1, $2, $3, $4)",
        service,
        old,
        new,
        process,
    )


async def last_transitions(con: asyncpg.Connection) -> dict[str, Transition]:
    rows = await con.fetch(
        "SELECT DISTINCT ON (service) service, at, from_state, to_state, process"
        " FROM integrations.breaker_transitions ORDER BY service, at DESC, id DESC"
    )
    return {
        r["service"]: Transition(at=r["at"], from_state=r["from_state"], to_state=r["to_state"], process=r["process"])
        for r in rows
    }


async def enqueue(
    con: asyncpg.Connection, service: str, identifier: str, requested_by: str | None, delay_s: float
) -> None:
    """Queue a lookup; a pending one for the same identifier stays as it is, an abandoned one revives."""
    await con.execute(
        "INSERT INTO integrations.retry_queue (service, identifier, requested_by, next_attempt_at)"
        " VALUES ($1, $2, $3, now() + make_interval(secs => $4))"
        " ON CONFLICT (service, identifier) DO UPDATE SET dead_at = NULL, attempts = 0, last_error = NULL,"
        " next_attempt_at = EXCLUDED.next_attempt_at, requested_by = EXCLUDED.requested_by"
        " WHERE integrations.retry_queue.dead_at IS NOT NULL",
        service,
        identifier,
        requested_by,
        delay_s,
    )


async def claim_due(con: asyncpg.Connection, services: list[str], limit: int, lease_s: float) -> list[QueuedLookup]:
    """Claim due rows for a while (a lease): another process skips them, a crash frees them later."""
    rows = await con.fetch(
        "UPDATE integrations.retry_queue SET next_attempt_at = now() + make_interval(secs => $3)"
        " WHERE id IN (SELECT id FROM integrations.retry_queue"
        "   WHERE dead_at IS NULL AND next_attempt_at <= now() AND service = ANY($1)"
        "   ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
        " RETURNING id, service, identifier, requested_by, attempts",
        services,
        limit,
        lease_s,
    )
    rows = sorted(rows, key=lambda r: r["id"])
    return from_rows(QueuedLookup, rows)


async def delete_queued(con: asyncpg.Connection, row_id: int) -> None:
    await con.execute("DELETE FROM integrations.retry_queue WHERE id = $1", row_id)


async def reschedule(con: asyncpg.Connection, row_id: int, delay_s: float, error: str, *, consumed: bool) -> None:
    """Try again after delay_s; `consumed` says whether this round counts as an attempt."""
    await con.execute(
        "UPDATE integrations.retry_queue SET next_attempt_at = now() + make_interval(secs => $2),"
        " last_error = $3, attempts = attempts + $4 WHERE id = $1",
        row_id,
        delay_s,
        error,
        1 if consumed else 0,
    )


async def abandon(con: asyncpg.Connection, row_id: int, error: str) -> None:
    await con.execute(
        "UPDATE integrations.retry_queue SET dead_at = now(), attempts = attempts + 1, last_error = $2 WHERE id = $1",
        row_id,
        error,
    )


async def figures(con: asyncpg.Connection, window_s: float) -> dict[str, Figures]:
    """Calls, errors ("not found" is an answer, not an error) and latency percentiles per service."""
    found: dict[str, dict[str, object]] = {}
    rows = await con.fetch(
        "SELECT service, count(*) AS calls,"
        " count(*) FILTER (WHERE outcome NOT IN ('ok', 'not_found')) AS errors,"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_ms,"
        " percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_ms"
        " FROM integrations.integration_logs WHERE at > now() - make_interval(secs => $1) GROUP BY service",
        window_s,
    )
    for r in rows:
        found[r["service"]] = {k: r[k] for k in ("calls", "errors", "p50_ms", "p95_ms")}
    rows = await con.fetch(
        "SELECT service, count(*) FILTER (WHERE dead_at IS NULL) AS queued,"
        " count(*) FILTER (WHERE dead_at IS NOT NULL) AS abandoned FROM integrations.retry_queue GROUP BY service"
    )
    for r in rows:
        found.setdefault(r["service"], {}).update(queued=r["queued"], abandoned=r["abandoned"])
    return {name: msgspec.convert(values, Figures) for name, values in found.items()}


async def prune_logs(con: asyncpg.Connection, days: int) -> int:
    result = await con.execute(
        "DELETE FROM integrations.integration_logs WHERE at < now() - make_interval(days => $1)", days
    )
    return int(result.split()[-1])
