"""The tamper-evident audit trail: one hash chain per actor, kept in the actor's own schema.

Every security-relevant action (a sign-in, a lockout, a role change, a payment confirmation, a
registration decision...) is appended to `<actor>.audit` by the actor that did it, **inside the
transaction of the state change**: a rollback leaves no entry, a commit never lacks one. Each row
carries seq, at, actor (who did it: a user id, "system", "cli:..."), subject, action, detail,
request id, prev_hash and hash, where

    hash = sha256(canonical(chain, seq, at, actor, subject, action, detail, request_id, prev_hash))

so editing a row breaks its hash, deleting one breaks the next row's prev_hash (and leaves a gap
in seq), and re-hashing a forged row breaks the link to the row after it. The chain name is in the
hash, so a row copied from one actor's chain into another's does not verify either.

Appends to one chain are serialised by a row lock on the chain's head (`<actor>.audit_head`, the
last seq and hash), held to the end of the appending transaction; seq is therefore gap-free (a
rolled-back append takes its number with it), and a deleted tail shows as a head ahead of the rows.
What a hash chain cannot show is the whole chain and its head replaced together: operators anchor
the head hash `simveb audit verify` prints somewhere the database's owner cannot write.

This module owns the canonical encoding, `append`, `verify`, the filtered listing, the two
messages the CLI and the HTTP layer use to reach every chain (`VerifyAudit`, `ListAudit`, both
addressed to one actor by name: the bus routes them by their `to` field) and the `Audited` mixin
that gives an actor `self.audit(...)` and the handlers for those messages. The schema is always
the calling actor's own name: no actor ever names another's.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any, ClassVar

import asyncpg
import msgspec

from simveb.bus import current_request_id, handler, reader
from simveb.errors import BadRequest, Forbidden, InvalidCursor
from simveb.messages import (
    PAGE_LIMIT_DEFAULT,
    Ask,
    Caller,
    Cursor,
    Limit,
    Page,
    Record,
    decode_cursor,
    encode_cursor,
)

PERMISSION = "audit:read"
GENESIS = "0" * 64
_SCHEMA = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# Chains are verified in pages of this many rows: memory stays flat however long a chain gets.
_VERIFY_PAGE = 2000


# --- the contract: what the CLI and the HTTP layer send ------------------------------------------


class AuditEntry(Record):
    """One audit row as readers see it; `chain` is the actor whose trail holds it."""

    chain: str
    seq: int
    at: datetime
    actor: str
    subject: str
    action: str
    detail: dict[str, Any]
    request_id: str | None
    hash: str


class AuditFilter(Record):
    """Filters of a listing; every one optional, all of them ANDed."""

    actor: str | None = None
    subject: str | None = None
    action: str | None = None
    at_from: datetime | None = None
    at_to: datetime | None = None


class AuditPage(Page[AuditEntry]):
    items: list[AuditEntry]


class AuditBreak(Record):
    """The first link of a chain that does not hold, and what is wrong with it."""

    seq: int
    problem: str


class AuditReport(Record):
    """A walk of one chain: how many rows, the head, and the first broken link (None: intact)."""

    chain: str
    rows: int
    head_seq: int
    head_hash: str
    broken: AuditBreak | None = None


class VerifyAudit(Ask[AuditReport], tag=True):
    """Sent by `simveb audit verify` to each audited actor (`to`): walk your chain."""

    addressed: ClassVar[bool] = True  # every audited actor answers it: the bus routes by `to`
    errors = (Forbidden,)
    to: str
    caller: Caller


class ListAudit(Ask[AuditPage], tag=True):
    """Sent by GET /api/audit to each audited actor (`to`): your entries matching `filter`, newest
    first, strictly after `cursor` (an opaque value from a previous page, which may come from
    another chain: the order is (at, chain, seq) descending across every chain)."""

    addressed: ClassVar[bool] = True
    errors = (Forbidden, InvalidCursor, BadRequest)
    to: str
    caller: Caller
    filter: AuditFilter = AuditFilter()
    cursor: Cursor | None = None
    limit: Limit = PAGE_LIMIT_DEFAULT


# --- canonical encoding and hashing -------------------------------------------------------------


def canonical_detail(detail: Any) -> Any:
    """Detail as plain JSON values (UUIDs, datetimes as strings): what jsonb stores and gives back."""
    return json.loads(msgspec.json.encode(detail or {}))


def canonical(
    chain: str,
    seq: int,
    at: datetime,
    actor: str,
    subject: str,
    action: str,
    detail: Any,
    request_id: str | None,
    prev_hash: str,
) -> bytes:
    """The bytes a row's hash covers: a JSON array, sorted keys, no spaces, UTC time in microseconds.

    jsonb keeps neither key order nor spacing, so the detail is re-encoded from its value, never
    hashed as stored text; the time is what timestamptz keeps (microseconds, UTC).
    """
    stamp = at.astimezone(UTC).isoformat(timespec="microseconds")
    body = ["simveb-audit-1", chain, seq, stamp, actor, subject, action, detail, request_id, prev_hash]
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def row_hash(chain: str, seq: int, at: datetime, actor: str, subject: str, action: str, detail: Any,
             request_id: str | None, prev_hash: str) -> str:  # fmt: skip
    return hashlib.sha256(canonical(chain, seq, at, actor, subject, action, detail, request_id, prev_hash)).hexdigest()


def _schema(name: str) -> str:
    # The schema is an identifier formatted into SQL, so it is checked, never taken from a value.
    if not _SCHEMA.match(name):
        raise ValueError(f"not an actor schema name: {name!r}")
    return name


# --- append -------------------------------------------------------------------------------------


async def append(
    con: asyncpg.Connection,
    schema: str,
    *,
    actor: str,
    subject: Any,
    action: str,
    detail: Any = None,
    request_id: str | None = None,
) -> int:
    """Append one entry to `schema`'s chain inside the caller's transaction; returns its seq.

    The head row is locked FOR UPDATE until the transaction ends, so appends to one chain are
    serialised and each links to the one committed before it. `request_id` defaults to the request
    the current message belongs to. Call it late in the transaction, after the other row locks: a
    transaction holding the head while it waits for a row another holds, who then waits for the
    head, would deadlock.
    """
    s = _schema(schema)
    if not con.is_in_transaction():
        raise RuntimeError("audit.append runs inside the transaction of the state change it records")
    plain = canonical_detail(detail)
    # The detail comes back as jsonb will store and return it (1e20 becomes an integer, say), in the
    # round trip that locks the head: what is hashed is what verify will read.
    lock = f"SELECT seq, hash, $1::jsonb AS detail FROM {s}.audit_head FOR UPDATE"
    head = await con.fetchrow(lock, plain)
    if head is None:
        # An empty chain (a new database, or emptied tables in tests): the head starts at genesis.
        await con.execute(f"INSERT INTO {s}.audit_head (seq, hash) VALUES (0, $1) ON CONFLICT DO NOTHING", GENESIS)
        head = await con.fetchrow(lock, plain)
    seq = head["seq"] + 1
    prev = head["hash"]
    value = head["detail"]
    # timestamptz keeps microseconds: the hashed time is the stored time.
    at = datetime.now(UTC)
    rid = request_id if request_id is not None else current_request_id.get()
    digest = row_hash(s, seq, at, actor, str(subject), action, value, rid, prev)
    await con.execute(
        f"INSERT INTO {s}.audit (seq, at, actor, subject, action, detail, request_id, prev_hash, hash)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        seq,
        at,
        actor,
        str(subject),
        action,
        value,
        rid,
        prev,
        digest,
    )
    await con.execute(f"UPDATE {s}.audit_head SET seq = $1, hash = $2", seq, digest)
    return seq


# --- verify -------------------------------------------------------------------------------------


async def verify(con: asyncpg.Connection, schema: str) -> AuditReport:
    """Walk the chain in seq order and report the first link that does not hold.

    Checked for every row: seq follows the previous one (a gap is a deleted row), prev_hash is the
    previous row's hash (a deleted or re-hashed row), and the hash matches the row's content (an
    edited row). At the end the head must be the last row (a deleted tail).
    """
    s = _schema(schema)
    head = await con.fetchrow(f"SELECT seq, hash FROM {s}.audit_head")
    head_seq, head_hash = (head["seq"], head["hash"]) if head is not None else (0, GENESIS)
    prev_seq, prev_hash, rows = 0, GENESIS, 0

    def report(seq: int | None = None, problem: str | None = None) -> AuditReport:
        broken = AuditBreak(seq=seq, problem=problem) if problem is not None and seq is not None else None
        return AuditReport(chain=s, rows=rows, head_seq=head_seq, head_hash=head_hash, broken=broken)

    while True:
        page = await con.fetch(
            f"SELECT seq, at, actor, subject, action, detail, request_id, prev_hash, hash FROM {s}.audit"
            " WHERE seq > $1 ORDER BY seq LIMIT $2",
            prev_seq,
            _VERIFY_PAGE,
        )
        for r in page:
            seq = r["seq"]
            if seq != prev_seq + 1:
                missing = f"seq {prev_seq + 1}" if seq == prev_seq + 2 else f"seq {prev_seq + 1} to {seq - 1}"
                return report(seq, f"{missing} missing (deleted): the chain jumps from seq {prev_seq} to {seq}")
            if r["prev_hash"] != prev_hash:
                return report(
                    seq,
                    f"prev_hash {r['prev_hash'][:12]}... does not link to the hash of seq {prev_seq}"
                    f" ({prev_hash[:12]}...): seq {prev_seq} was replaced or re-hashed",
                )
            expected = row_hash(
                s, seq, r["at"], r["actor"], r["subject"], r["action"], r["detail"], r["request_id"], r["prev_hash"]
            )
            if r["hash"] != expected:
                return report(
                    seq,
                    "hash does not match the row's content: at, actor, subject, action, detail or request_id edited",
                )
            prev_seq, prev_hash = seq, r["hash"]
            rows += 1
        if len(page) < _VERIFY_PAGE:
            break
    if head is not None and (head_seq, head_hash) != (prev_seq, prev_hash):
        if head_seq > prev_seq:
            return report(head_seq, f"the head is at seq {head_seq} but the last row is seq {prev_seq}: tail deleted")
        return report(head_seq, f"the head (seq {head_seq}) does not match the last row (seq {prev_seq})")
    if head is None and rows:
        return report(prev_seq, "the chain's head row is missing")
    return report()


# --- listing ------------------------------------------------------------------------------------


def read_cursor(cursor: str | None) -> tuple[datetime, str, int] | None:
    """The keyset (at, chain, seq) of a listing's cursor; InvalidCursor (400) for anything else."""
    key = decode_cursor(cursor, datetime, str, int)
    return None if key is None else (key[0], key[1], key[2])


async def entries(
    con: asyncpg.Connection, schema: str, f: AuditFilter, *, cursor: str | None = None, limit: int = 50
) -> AuditPage:
    """This chain's entries matching `f`, newest first by (at, chain, seq), after `cursor`."""
    s = _schema(schema)
    if any("\x00" in v for v in (f.actor, f.subject, f.action) if v is not None):
        raise BadRequest("a filter holds a NUL character", code="invalid_filter")
    clauses, args = [], []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    for column, value in (("actor", f.actor), ("subject", f.subject), ("action", f.action)):
        if value is not None:
            clauses.append(f"{column} = {arg(value)}")
    if f.at_from is not None:
        clauses.append(f"at >= {arg(f.at_from)}")
    if f.at_to is not None:
        clauses.append(f"at < {arg(f.at_to)}")
    after = read_cursor(cursor)
    if after is not None:
        at, chain, seq = after
        # The order across chains is (at, chain, seq) descending; within this chain the name is fixed.
        if s < chain:
            clauses.append(f"at <= {arg(at)}")
        elif s > chain:
            clauses.append(f"at < {arg(at)}")
        else:
            clauses.append(f"(at, seq) < ({arg(at)}, {arg(seq)})")
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = await con.fetch(
        f"SELECT seq, at, actor, subject, action, detail, request_id, hash FROM {s}.audit{where}"
        f" ORDER BY at DESC, seq DESC LIMIT {arg(limit + 1)}",
        *args,
    )
    items = [AuditEntry(chain=s, **dict(r)) for r in rows[:limit]]
    last = items[-1] if len(rows) > limit else None
    return AuditPage(items=items, next_cursor=encode_cursor(last.at, s, last.seq) if last else None)


def merge_pages(pages: list[AuditPage], limit: int) -> AuditPage:
    """One page from every chain's page: the newest `limit` by (at, chain, seq), and its cursor."""
    everything = sorted(
        (e for p in pages for e in p.items), key=lambda e: (e.at, e.chain, e.seq), reverse=True
    )  # fmt: skip
    items = everything[:limit]
    more = len(everything) > limit or any(p.next_cursor for p in pages)
    last = items[-1] if items and more else None
    return AuditPage(items=items, next_cursor=encode_cursor(last.at, last.chain, last.seq) if last else None)


# --- the actor side -----------------------------------------------------------------------------


class Audited:
    """Mixin of actors that keep an audit trail (their migrations create `<name>.audit`).

    `await self.audit(con, caller_or_sub, subject, action, **detail)` appends inside the handler's
    transaction; the two handlers answer `simveb audit verify` and GET /api/audit.
    """

    name: ClassVar[str]

    async def audit(self, con: asyncpg.Connection, who: Caller | str | None, subject: Any, action: str,
                    **detail: Any) -> int:  # fmt: skip
        """Append (who, subject, action, detail) to this actor's chain, in `con`'s transaction."""
        actor = who.sub if isinstance(who, Caller) else (who or "system")
        return await append(con, self.name, actor=actor, subject=subject, action=action, detail=detail)

    @handler
    async def verify_audit(self, msg: VerifyAudit, con: asyncpg.Connection) -> AuditReport:
        if not msg.caller.can(PERMISSION):
            raise Forbidden("reading the audit trail needs audit:read", code="missing_permission")
        # Repeatable read: one snapshot of rows and head, however many pages the walk takes.
        await con.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return await verify(con, self.name)

    @reader
    async def list_audit(self, msg: ListAudit, con: asyncpg.Connection) -> AuditPage:
        if not msg.caller.can(PERMISSION):
            raise Forbidden("reading the audit trail needs audit:read", code="missing_permission")
        return await entries(con, self.name, msg.filter, cursor=msg.cursor, limit=msg.limit)
