"""SQL of the auth service: every query on the `auth` schema, and nothing else.

Functions take a connection (the caller owns the transaction) and return plain values, the
messages' Structs, or the row Structs below (internal to this actor). Secrets arrive here already hashed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from simveb.actors.auth.messages import DeniedToken, DeniedTokens, Session
from simveb.db import from_row, from_rows


class RefreshRow(msgspec.Struct, frozen=True, kw_only=True):
    """A refresh token with the session it belongs to."""

    token_hash: bytes
    rotated_at: datetime | None
    session_id: UUID
    user_id: UUID
    method: str
    mfa: bool
    limited: bool
    revoked_at: datetime | None
    expired: bool
    rotated_age_s: float | None = None  # seconds since it was exchanged
    successor_sealed: bytes | None = None  # the pair it was exchanged for, within the grace window
    session_age_s: float = 0.0


class RecentChallenge(msgspec.Struct, frozen=True, kw_only=True):
    """A code sent within the resend cooldown, and the seconds left of that cooldown."""

    id: UUID
    expires_at: datetime
    wait: float


class Challenge(msgspec.Struct, frozen=True, kw_only=True):
    """A one-time code or second-factor challenge (`expired` computed by the database clock)."""

    id: UUID
    account: str
    user_id: UUID | None
    purpose: str
    code_hash: bytes | None
    attempts: int
    method: str | None
    new_email: str | None = None  # the address an email_change code proves
    created_at: datetime
    expires_at: datetime
    consumed_at: datetime | None
    expired: bool


class Totp(msgspec.Struct, frozen=True, kw_only=True):
    """A user's TOTP secret, sealed (or in clear, written before sealing), enabled once a first code
    proved it, and the last step used."""

    secret: str | None
    secret_sealed: bytes | None
    enabled_at: datetime | None
    last_used_step: int


# --- passwords ---------------------------------------------------------------------------------------


async def password_hash(con: asyncpg.Connection, user_id: UUID) -> str | None:
    return await con.fetchval("SELECT password_hash FROM auth.credentials WHERE user_id = $1", user_id)


async def recent_password_hashes(con: asyncpg.Connection, user_id: UUID, limit: int) -> list[str]:
    rows = await con.fetch(
        "SELECT password_hash FROM auth.password_history WHERE user_id = $1 ORDER BY id DESC LIMIT $2",
        user_id,
        limit,
    )
    return [r["password_hash"] for r in rows]


async def set_password(con: asyncpg.Connection, user_id: UUID, hashed: str, by: str) -> None:
    await con.execute(
        "INSERT INTO auth.credentials (user_id, password_hash, updated_by) VALUES ($1, $2, $3)"
        " ON CONFLICT (user_id) DO UPDATE SET password_hash = EXCLUDED.password_hash, updated_at = now(),"
        " updated_by = EXCLUDED.updated_by",
        user_id,
        hashed,
        by,
    )
    await con.execute("INSERT INTO auth.password_history (user_id, password_hash) VALUES ($1, $2)", user_id, hashed)


async def rehash_password(con: asyncpg.Connection, user_id: UUID, old: str, new: str) -> None:
    """Replace a hash made with older parameters (same password), only if it did not change meanwhile."""
    await con.execute(
        "UPDATE auth.credentials SET password_hash = $3 WHERE user_id = $1 AND password_hash = $2", user_id, old, new
    )


# --- sessions, refresh and access tokens -------------------------------------------------------------

_SESSION_COLS = "id, method, mfa, limited, client_ip, user_agent, created_at, last_used_at, expires_at"


async def create_session(
    con: asyncpg.Connection,
    *,
    session_id: UUID,
    user_id: UUID,
    method: str,
    mfa: bool,
    limited: bool,
    client_ip: str | None,
    user_agent: str | None,
    ttl_s: int,
) -> None:
    await con.execute(
        "INSERT INTO auth.sessions (id, user_id, method, mfa, limited, client_ip, user_agent, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8))",
        session_id,
        user_id,
        method,
        mfa,
        limited,
        client_ip,
        user_agent,
        float(ttl_s),
    )


async def add_tokens(
    con: asyncpg.Connection, session_id: UUID, refresh_hash: bytes, jti: str, access_exp: datetime
) -> None:
    await con.execute(
        "INSERT INTO auth.refresh_tokens (token_hash, session_id) VALUES ($1, $2)", refresh_hash, session_id
    )
    await con.execute(
        "INSERT INTO auth.access_tokens (jti, session_id, expires_at) VALUES ($1, $2, $3)",
        jti,
        session_id,
        access_exp,
    )


async def refresh_token(con: asyncpg.Connection, token_hash: bytes, *, lock: bool = True) -> RefreshRow | None:
    """The refresh token with its session; with `lock` both rows are locked (a concurrent exchange
    waits, then sees it used)."""
    row = await con.fetchrow(
        "SELECT r.token_hash, r.rotated_at, s.id AS session_id, s.user_id, s.method, s.mfa, s.limited,"
        " s.revoked_at, s.expires_at <= now() AS expired,"
        " extract(epoch FROM now() - r.rotated_at)::float8 AS rotated_age_s, r.successor_sealed,"
        " extract(epoch FROM now() - s.created_at)::float8 AS session_age_s"
        " FROM auth.refresh_tokens r JOIN auth.sessions s ON s.id = r.session_id"
        " WHERE r.token_hash = $1" + (" FOR UPDATE" if lock else ""),
        token_hash,
    )
    return from_row(RefreshRow, row)


async def rotate(
    con: asyncpg.Connection, token_hash: bytes, session_id: UUID, limited: bool, successor_sealed: bytes | None
) -> None:
    await con.execute(
        "UPDATE auth.refresh_tokens SET rotated_at = now(), successor_sealed = $2 WHERE token_hash = $1",
        token_hash,
        successor_sealed,
    )
    await con.execute("UPDATE auth.sessions SET last_used_at = now(), limited = $2 WHERE id = $1", session_id, limited)


async def unused(con: asyncpg.Connection, token_hash: bytes) -> bool:
    """Is this refresh token still unexchanged?"""
    return bool(
        await con.fetchval("SELECT rotated_at IS NULL FROM auth.refresh_tokens WHERE token_hash = $1", token_hash)
    )


async def session_owner(con: asyncpg.Connection, session_id: UUID) -> UUID | None:
    return await con.fetchval(
        "SELECT user_id FROM auth.sessions WHERE id = $1 AND revoked_at IS NULL AND expires_at > now()", session_id
    )


async def session_of_token(con: asyncpg.Connection, jti: str) -> UUID | None:
    return await con.fetchval("SELECT session_id FROM auth.access_tokens WHERE jti = $1", jti)


async def list_sessions(
    con: asyncpg.Connection, user_id: UUID, after: tuple[Any, ...] | None, limit: int
) -> list[Session]:
    """A user's live sessions, newest first, after the keyset `after` (created_at, id)."""
    at, sid = after or (None, None)
    rows = await con.fetch(
        f"SELECT {_SESSION_COLS} FROM auth.sessions WHERE user_id = $1 AND revoked_at IS NULL"
        " AND expires_at > now() AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))"
        " ORDER BY created_at DESC, id DESC LIMIT $4",
        user_id,
        at,
        sid,
        limit,
    )
    return from_rows(Session, rows)


async def revoke_sessions(
    con: asyncpg.Connection,
    session_ids: list[UUID],
    reason: str,
    *,
    user_id: UUID | None = None,
    keep: UUID | None = None,
) -> int:
    """Revoke live sessions (all of a user's when user_id is given, but `keep`) and deny their
    unexpired access tokens."""
    if user_id is not None:
        ids = await con.fetch(
            "UPDATE auth.sessions SET revoked_at = now(), revoked_reason = $2"
            " WHERE user_id = $1 AND revoked_at IS NULL AND id IS DISTINCT FROM $3 RETURNING id",
            user_id,
            reason,
            keep,
        )
    else:
        ids = await con.fetch(
            "UPDATE auth.sessions SET revoked_at = now(), revoked_reason = $2"
            " WHERE id = ANY($1) AND revoked_at IS NULL RETURNING id",
            session_ids,
            reason,
        )
    revoked = [r["id"] for r in ids]
    if revoked:
        await con.execute(
            "INSERT INTO auth.denied_tokens (jti, expires_at, reason)"
            " SELECT jti, expires_at, $2 FROM auth.access_tokens WHERE session_id = ANY($1) AND expires_at > now()"
            " ON CONFLICT (jti) DO NOTHING",
            revoked,
            reason,
        )
    return len(revoked)


async def deny_token(con: asyncpg.Connection, jti: str, expires_at: datetime, reason: str) -> None:
    await con.execute(
        "INSERT INTO auth.denied_tokens (jti, expires_at, reason) VALUES ($1, $2, $3) ON CONFLICT (jti) DO NOTHING",
        jti,
        expires_at,
        reason,
    )


async def denied_since(con: asyncpg.Connection, cursor: int, limit: int = 5000) -> DeniedTokens:
    """Live denials from transactions at or after `cursor` (a transaction id), and the next cursor.

    The next cursor never passes the oldest transaction still in flight (the snapshot's xmin): a
    denial can only commit at or after it, so the next page still sees it however late it commits.
    A page is cut between transactions, never inside one, so each page ends on a complete one.
    """
    watermark = int(await con.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"))
    rows = await con.fetch(
        "SELECT id, jti, txid::text::bigint AS tx, extract(epoch FROM expires_at)::bigint AS exp"
        " FROM auth.denied_tokens WHERE txid >= $1::bigint::text::xid8 AND txid < $2::bigint::text::xid8"
        " AND expires_at > now() ORDER BY txid, id LIMIT $3",
        cursor,
        watermark,
        limit,
    )
    if len(rows) < limit:
        nxt = max(cursor, watermark)
        # Denials of transactions that committed after the watermark are visible already: send them
        # now too (they come again on the next page, which is harmless) so a long transaction
        # elsewhere in the cluster does not delay a revocation.
        tail = await con.fetch(
            "SELECT id, jti, txid::text::bigint AS tx, extract(epoch FROM expires_at)::bigint AS exp"
            " FROM auth.denied_tokens WHERE txid >= $1::bigint::text::xid8 AND expires_at > now()"
            " ORDER BY txid, id LIMIT $2",
            nxt,
            # A page shorter than `limit` tells the verifier it is up to date; the tail is bounded
            # because it is sent again at every poll while the watermark is held back.
            min(limit - len(rows) - 1, 1000),
        )
        rows = [*rows, *tail]
    else:
        # Full page: finish the last transaction's rows, and continue after it.
        last = rows[-1]
        rows = [
            *rows,
            *await con.fetch(
                "SELECT id, jti, txid::text::bigint AS tx, extract(epoch FROM expires_at)::bigint AS exp"
                " FROM auth.denied_tokens WHERE txid = $1::bigint::text::xid8 AND id > $2 AND expires_at > now()"
                " ORDER BY id",
                last["tx"],
                last["id"],
            ),
        ]
        nxt = last["tx"] + 1
    return DeniedTokens(items=[DeniedToken(jti=r["jti"], exp=r["exp"]) for r in rows], cursor=nxt)


# --- attempts and lockouts ---------------------------------------------------------------------------


async def record_attempt(
    con: asyncpg.Connection,
    account: str,
    user_id: UUID | None,
    client_ip: str | None,
    kind: str,
    success: bool,
    *,
    partial: bool = False,
) -> None:
    await con.execute(
        "INSERT INTO auth.login_attempts (account, user_id, client_ip, kind, success, partial)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        account,
        user_id,
        client_ip,
        kind,
        success,
        partial,
    )


async def active_lockout(con: asyncpg.Connection, scope: str, key: str) -> float | None:
    """Seconds left of the lockout in force, if any."""
    return await con.fetchval(
        "SELECT extract(epoch FROM max(locked_until) - now())::float8 FROM auth.lockouts"
        " WHERE scope = $1 AND key = $2 AND locked_until > now()",
        scope,
        key,
    )


async def recent_failures(con: asyncpg.Connection, scope: str, key: str, window_s: int) -> int:
    """Failures of one account scope inside the window, after the end of its last lockout.

    - account: wrong passwords and one-time codes of the account, after its last completed sign-in;
    - two_factor: wrong second-factor codes of the account, after its last completed sign-in.
    A first factor proved while the second is owed (`partial`) resets nothing. (Client addresses
    are throttled by a token bucket instead, below.)
    """
    kinds = ["two_factor"] if scope == "two_factor" else ["password", "otp"]
    return await con.fetchval(
        """
        SELECT count(*) FROM auth.login_attempts
        WHERE account = $1 AND NOT success AND kind = ANY($4::text[]) AND at > greatest(
            now() - make_interval(secs => $2),
            (SELECT max(at) FROM auth.login_attempts WHERE account = $1 AND success AND NOT partial),
            (SELECT max(locked_until) FROM auth.lockouts WHERE scope = $3 AND key = $1)
        )
        """,
        key,
        float(window_s),
        scope,
        kinds,
    )


class Bucket(msgspec.Struct, frozen=True, kw_only=True):
    """A client address's token bucket as of now (the database clock)."""

    tokens: float  # attempts it may still fail now (fractional between refills)
    throttled_at: datetime | None  # when it last emptied, None once full again


# The count now: what was stored plus what flowed back since, capped at the burst. The wall clock
# (clock_timestamp), not the transaction's start: a transaction that waited for the address's lock
# must not count the time it waited as not yet elapsed.
_TOKENS_NOW = (
    "least($2::float8, tokens + greatest(0, extract(epoch FROM clock_timestamp() - updated_at))::float8 / $3::float8)"
)


async def address_bucket(
    con: asyncpg.Connection, address: str, burst: int, refill_s: float, *, lock: bool = False
) -> Bucket:
    """The address's bucket now (a full one when it has none); with `lock` the row is locked."""
    row = await con.fetchrow(
        f"SELECT {_TOKENS_NOW} AS tokens, throttled_at FROM auth.address_buckets WHERE address = $1"
        + (" FOR UPDATE" if lock else ""),
        address,
        float(burst),
        float(refill_s),
    )
    if row is None:
        return Bucket(tokens=float(burst), throttled_at=None)
    tokens = float(row["tokens"])
    # Full again: the episode is over, the next emptying is a new one.
    return Bucket(tokens=tokens, throttled_at=None if tokens >= burst else row["throttled_at"])


async def save_address_bucket(
    con: asyncpg.Connection, address: str, tokens: float, throttled_at: datetime | None, *, emptied: bool
) -> None:
    """Store the address's count as of now; `emptied` stamps the start of a throttling episode."""
    await con.execute(
        "INSERT INTO auth.address_buckets (address, tokens, updated_at, throttled_at)"
        " VALUES ($1, $2, clock_timestamp(), CASE WHEN $4 THEN clock_timestamp() ELSE $3 END)"
        " ON CONFLICT (address) DO UPDATE SET tokens = EXCLUDED.tokens, updated_at = EXCLUDED.updated_at,"
        " throttled_at = EXCLUDED.throttled_at",
        address,
        max(0.0, tokens),
        throttled_at,
        emptied,
    )


async def add_lockout(
    con: asyncpg.Connection,
    scope: str,
    key: str,
    *,
    user_id: UUID | None,
    client_ip: str | None,
    failures: int,
    seconds: int,
) -> None:
    await con.execute(
        "INSERT INTO auth.lockouts (scope, key, user_id, client_ip, failures, locked_until)"
        " VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))",
        scope,
        key,
        user_id,
        client_ip,
        failures,
        float(seconds),
    )


# --- one-time codes and challenges -------------------------------------------------------------------

_OTP_COLS = (
    "id, account, user_id, purpose, code_hash, attempts, method, new_email, created_at, expires_at, consumed_at,"
    " expires_at <= now() AS expired"
)


async def recent_challenge(
    con: asyncpg.Connection, account: str, purpose: str, cooldown_s: int, *, user_id: UUID | None = None
) -> RecentChallenge | None:
    """The newest unconsumed code sent to this account for this purpose within the cooldown (with
    `user_id`: only one this user asked for)."""
    row = await con.fetchrow(
        "SELECT id, expires_at, extract(epoch FROM created_at + make_interval(secs => $3) - now())::float8 AS wait"
        " FROM auth.otp_verifications WHERE account = $1 AND purpose = $2 AND consumed_at IS NULL"
        " AND created_at > now() - make_interval(secs => $3) AND ($4::uuid IS NULL OR user_id = $4)"
        " ORDER BY created_at DESC LIMIT 1",
        account,
        purpose,
        float(cooldown_s),
        user_id,
    )
    return from_row(RecentChallenge, row)


class CodeRequests(msgspec.Struct, frozen=True, kw_only=True):
    """Code requests (second-factor challenges excluded) counted for the abuse budgets."""

    address_hour: int
    identifier_day: int
    total_day: int


async def count_code_requests(con: asyncpg.Connection, account: str, client_ip: str | None) -> CodeRequests:
    row = await con.fetchrow(
        "SELECT"
        " count(*) FILTER (WHERE client_ip = $2 AND created_at > now() - interval '1 hour') AS address_hour,"
        " count(*) FILTER (WHERE account = $1) AS identifier_day,"
        " count(*) AS total_day"
        " FROM auth.otp_verifications WHERE purpose <> 'two_factor' AND created_at > now() - interval '1 day'",
        account,
        client_ip,
    )
    counted = from_row(CodeRequests, row)
    assert counted is not None  # an aggregate: always one row
    return counted


async def create_challenge(
    con: asyncpg.Connection,
    *,
    challenge_id: UUID,
    account: str,
    user_id: UUID | None,
    purpose: str,
    code_hash: bytes | None,
    client_ip: str | None,
    ttl_s: int,
    method: str | None = None,
    new_email: str | None = None,
) -> datetime:
    return await con.fetchval(
        "INSERT INTO auth.otp_verifications"
        " (id, account, user_id, purpose, code_hash, client_ip, method, new_email, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9)) RETURNING expires_at",
        challenge_id,
        account,
        user_id,
        purpose,
        code_hash,
        client_ip,
        method,
        new_email,
        float(ttl_s),
    )


async def challenge(con: asyncpg.Connection, challenge_id: UUID) -> Challenge | None:
    """The challenge, locked (the caller decides on it and consumes or counts it)."""
    row = await con.fetchrow(f"SELECT {_OTP_COLS} FROM auth.otp_verifications WHERE id = $1 FOR UPDATE", challenge_id)
    return from_row(Challenge, row)


async def challenge_failed(con: asyncpg.Connection, challenge_id: UUID) -> None:
    await con.execute("UPDATE auth.otp_verifications SET attempts = attempts + 1 WHERE id = $1", challenge_id)


async def consume_challenge(con: asyncpg.Connection, challenge_id: UUID) -> None:
    await con.execute("UPDATE auth.otp_verifications SET consumed_at = now() WHERE id = $1", challenge_id)


async def release_challenge(con: asyncpg.Connection, challenge_id: UUID) -> None:
    """Give a consumed code back (it was right, but what it was for was refused)."""
    await con.execute("UPDATE auth.otp_verifications SET consumed_at = NULL WHERE id = $1", challenge_id)


# --- TOTP and recovery codes -------------------------------------------------------------------------


async def totp(con: asyncpg.Connection, user_id: UUID, *, lock: bool = False) -> Totp | None:
    row = await con.fetchrow(
        "SELECT secret, secret_sealed, enabled_at, last_used_step FROM auth.totp WHERE user_id = $1"
        + (" FOR UPDATE" if lock else ""),
        user_id,
    )
    return from_row(Totp, row)


async def totp_enabled(con: asyncpg.Connection, user_id: UUID) -> bool:
    return bool(await con.fetchval("SELECT enabled_at IS NOT NULL FROM auth.totp WHERE user_id = $1", user_id))


async def start_totp(con: asyncpg.Connection, user_id: UUID, sealed: bytes) -> None:
    await con.execute(
        "INSERT INTO auth.totp (user_id, secret_sealed) VALUES ($1, $2)"
        " ON CONFLICT (user_id) DO UPDATE SET secret = NULL, secret_sealed = EXCLUDED.secret_sealed,"
        " created_at = now(), last_used_step = 0 WHERE auth.totp.enabled_at IS NULL",
        user_id,
        sealed,
    )


async def clear_totps(con: asyncpg.Connection) -> list[tuple[UUID, str]]:
    """TOTP secrets still in clear (written before sealing), locked, skipping rows in use."""
    rows = await con.fetch("SELECT user_id, secret FROM auth.totp WHERE secret IS NOT NULL FOR UPDATE SKIP LOCKED")
    return [(r["user_id"], r["secret"]) for r in rows]


async def seal_totp(con: asyncpg.Connection, user_id: UUID, sealed: bytes) -> None:
    await con.execute("UPDATE auth.totp SET secret = NULL, secret_sealed = $2 WHERE user_id = $1", user_id, sealed)


async def reset_totp(con: asyncpg.Connection, user_id: UUID, actor: str, reason: str) -> bool:
    """Remove a user's second factor and recovery codes, audited; False when there was none."""
    gone = await con.fetchval("DELETE FROM auth.totp WHERE user_id = $1 RETURNING true", user_id)
    await con.execute("DELETE FROM auth.recovery_codes WHERE user_id = $1", user_id)
    await con.execute(
        "INSERT INTO auth.admin_actions (action, user_id, actor, reason) VALUES ('totp_reset', $1, $2, $3)",
        user_id,
        actor,
        reason,
    )
    return bool(gone)


async def use_totp_step(con: asyncpg.Connection, user_id: UUID, step: int, *, enable: bool = False) -> None:
    await con.execute(
        "UPDATE auth.totp SET last_used_step = $2"
        + (", enabled_at = coalesce(enabled_at, now())" if enable else "")
        + " WHERE user_id = $1",
        user_id,
        step,
    )


async def replace_recovery_codes(con: asyncpg.Connection, user_id: UUID, hashes: list[bytes]) -> None:
    await con.execute("DELETE FROM auth.recovery_codes WHERE user_id = $1", user_id)
    await con.executemany(
        "INSERT INTO auth.recovery_codes (user_id, code_hash) VALUES ($1, $2)", [(user_id, h) for h in hashes]
    )


async def use_recovery_code(con: asyncpg.Connection, user_id: UUID, code_hash: bytes) -> bool:
    """Spend a recovery code; False when it is not this user's or was used already."""
    done = await con.fetchval(
        "UPDATE auth.recovery_codes SET used_at = now() WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL"
        " RETURNING true",
        user_id,
        code_hash,
    )
    return bool(done)


async def purge(con: asyncpg.Connection, *, address_burst: int, address_refill_s: float) -> None:
    """Drop rows that can no longer matter: expired denials and access tokens, codes a day old,
    address buckets full again (a missing bucket is a full one: nothing changes for the address).

    Attempts, lockouts and sessions stay: they are the audit trail.
    """
    await con.execute(
        "DELETE FROM auth.address_buckets"
        " WHERE tokens + extract(epoch FROM clock_timestamp() - updated_at)::float8 / $2::float8 >= $1::float8",
        float(address_burst),
        float(address_refill_s),
    )
    await con.execute("DELETE FROM auth.denied_tokens WHERE expires_at < now() - interval '1 minute'")
    await con.execute("DELETE FROM auth.access_tokens WHERE expires_at < now() - interval '1 minute'")
    await con.execute("DELETE FROM auth.otp_verifications WHERE expires_at < now() - interval '1 day'")
    await con.execute(
        "UPDATE auth.refresh_tokens SET successor_sealed = NULL"
        " WHERE successor_sealed IS NOT NULL AND rotated_at < now() - interval '5 minutes'"
    )
