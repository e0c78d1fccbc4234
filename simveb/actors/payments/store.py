"""SQL of the payments service (schema `payments` only); returns msgspec Structs.

Locks: a payment row is locked (`FOR UPDATE OF p`) by every change of it or of its transactions,
so two webhooks, a webhook and a reconciliation, or two refunds for one payment are serialised by
the database, not by the mailbox. Invoice numbers come from a per-year counter row updated in the
invoice's own transaction: consecutive, and a rollback leaves no gap.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from simveb.actors.payments.messages import Invoice, Payment, PaymentRequested, Refund, Transaction
from simveb.db import from_row, from_rows

PAYMENT = (
    "SELECT p.*, i.id AS invoice_id, i.number AS invoice_number"
    " FROM payments.payments p LEFT JOIN payments.invoices i ON i.payment_id = p.id"
)


# --- payments ---------------------------------------------------------------------------------------


async def open_payable(con: asyncpg.Connection, ev: PaymentRequested, event_id: UUID | None) -> bool:
    """A payment for a requested payable; the same (kind, id) twice is the same payment."""
    status = await con.execute(
        "INSERT INTO payments.payments (payable_kind, payable_id, reference, payer_id, amount_xof, lines,"
        " description, source_event_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (payable_kind, payable_id) DO NOTHING",
        ev.payable_kind,
        ev.payable_id,
        ev.reference,
        ev.payer_id,
        ev.amount_xof,
        [{"code": line.code, "label": line.label, "amount_xof": line.amount_xof} for line in ev.lines],
        ev.description,
        event_id,
    )
    return status.endswith(" 1")


async def get_payment(con: asyncpg.Connection, payment_id: UUID, *, lock: bool = False) -> Payment | None:
    sql = f"{PAYMENT} WHERE p.id = $1" + (" FOR UPDATE OF p" if lock else "")
    return from_row(Payment, await con.fetchrow(sql, payment_id))


async def get_payment_by_payable(
    con: asyncpg.Connection, kind: str, payable_id: UUID, *, lock: bool = False
) -> Payment | None:
    sql = f"{PAYMENT} WHERE p.payable_kind = $1 AND p.payable_id = $2" + (" FOR UPDATE OF p" if lock else "")
    return from_row(Payment, await con.fetchrow(sql, kind, payable_id))


async def set_payment_status(
    con: asyncpg.Connection, payment: Payment, to: str, *, by: str, reason: str = "", **fields: Any
) -> None:
    """Change a (locked) payment's status and other columns, and append the change to its history."""
    columns = ["status", *fields]
    assignments = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(columns))
    await con.execute(
        f"UPDATE payments.payments SET {assignments}, updated_at = now() WHERE id = $1",
        payment.id,
        to,
        *fields.values(),
    )
    if to != payment.status:
        await con.execute(
            "INSERT INTO payments.history (payment_id, from_status, to_status, by, reason) VALUES ($1, $2, $3, $4, $5)",
            payment.id,
            payment.status,
            to,
            by,
            reason,
        )


async def add_refunded(con: asyncpg.Connection, payment: Payment, amount: int, *, by: str, reason: str) -> Payment:
    total = payment.refunded_xof + amount
    status = "refunded" if total >= payment.amount_xof else "partially_refunded"
    await set_payment_status(con, payment, status, by=by, reason=reason, refunded_xof=total)
    fresh = await get_payment(con, payment.id)
    assert fresh is not None
    return fresh


# --- transactions -----------------------------------------------------------------------------------


async def insert_transaction(
    con: asyncpg.Connection,
    *,
    payment_id: UUID,
    provider: str,
    amount_xof: int,
    created_by: str,
    phone: str | None = None,
    provider_ref: str | None = None,
    status: str = "pending",
) -> Transaction:
    row = await con.fetchrow(
        "INSERT INTO payments.transactions (payment_id, provider, amount_xof, created_by, phone, provider_ref, status,"
        " settled_at) VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $7 = 'pending' THEN NULL ELSE now() END)"
        " RETURNING *",
        payment_id,
        provider,
        amount_xof,
        created_by,
        phone,
        provider_ref,
        status,
    )
    return from_row(Transaction, row)  # type: ignore[return-value]


async def attach_provider(
    con: asyncpg.Connection, transaction_id: UUID, *, provider_ref: str, checkout_url: str | None, status: str | None
) -> Transaction:
    row = await con.fetchrow(
        "UPDATE payments.transactions SET provider_ref = $2, checkout_url = $3, provider_status = $4, updated_at = now()"
        " WHERE id = $1 RETURNING *",
        transaction_id,
        provider_ref,
        checkout_url,
        status,
    )
    return from_row(Transaction, row)  # type: ignore[return-value]


async def get_transaction(con: asyncpg.Connection, transaction_id: UUID) -> Transaction | None:
    return from_row(
        Transaction, await con.fetchrow("SELECT * FROM payments.transactions WHERE id = $1", transaction_id)
    )


async def find_transaction(con: asyncpg.Connection, provider: str, ref: str) -> Transaction | None:
    return from_row(
        Transaction,
        await con.fetchrow(
            "SELECT * FROM payments.transactions WHERE provider = $1 AND provider_ref = $2", provider, ref
        ),
    )


async def settle_transaction(
    con: asyncpg.Connection,
    transaction_id: UUID,
    status: str,
    *,
    provider_status: str | None,
    failure_reason: str | None = None,
    flag_reason: str | None = None,
) -> Transaction:
    row = await con.fetchrow(
        "UPDATE payments.transactions SET status = $2, provider_status = $3, failure_reason = $4,"
        " flagged = flagged OR $5::text IS NOT NULL, flag_reason = coalesce($5, flag_reason),"
        " settled_at = CASE WHEN $2 = 'pending' THEN NULL ELSE now() END, updated_at = now()"
        " WHERE id = $1 RETURNING *",
        transaction_id,
        status,
        provider_status,
        failure_reason,
        flag_reason,
    )
    return from_row(Transaction, row)  # type: ignore[return-value]


async def transactions_of(con: asyncpg.Connection, payment_id: UUID) -> list[Transaction]:
    rows = await con.fetch(
        "SELECT * FROM payments.transactions WHERE payment_id = $1 ORDER BY created_at, id", payment_id
    )
    return from_rows(Transaction, rows)


async def pending_count(con: asyncpg.Connection, payment_id: UUID, *, other_than: UUID | None = None) -> int:
    return await con.fetchval(
        "SELECT count(*) FROM payments.transactions WHERE payment_id = $1 AND status = 'pending'"
        " AND ($2::uuid IS NULL OR id <> $2)",
        payment_id,
        other_than,
    )


async def cancel_pending(con: asyncpg.Connection, payment_id: UUID, reason: str) -> int:
    status = await con.execute(
        "UPDATE payments.transactions SET status = 'cancelled', failure_reason = $2, settled_at = now(),"
        " updated_at = now() WHERE payment_id = $1 AND status = 'pending'",
        payment_id,
        reason,
    )
    return int(status.split()[-1])


async def list_transactions(
    con: asyncpg.Connection,
    *,
    payer_id: UUID | None,
    status: str | None,
    provider: str | None,
    payment_id: UUID | None,
    flagged: bool | None,
    after: tuple[Any, ...] | None,
    limit: int,
) -> list[Transaction]:
    """Newest first, keyset-paginated on (created_at, id)."""
    rows = await con.fetch(
        "SELECT t.*, p.reference, p.payer_id FROM payments.transactions t"
        " JOIN payments.payments p ON p.id = t.payment_id"
        " WHERE ($1::uuid IS NULL OR p.payer_id = $1) AND ($2::text IS NULL OR t.status = $2)"
        " AND ($3::text IS NULL OR t.provider = $3) AND ($4::uuid IS NULL OR t.payment_id = $4)"
        " AND ($5::boolean IS NULL OR t.flagged = $5)"
        " AND ($6::timestamptz IS NULL OR (t.created_at, t.id) < ($6, $7::uuid))"
        " ORDER BY t.created_at DESC, t.id DESC LIMIT $8",
        payer_id,
        status,
        provider,
        payment_id,
        flagged,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return from_rows(Transaction, rows)


async def pending_older_than(con: asyncpg.Connection, seconds: int, limit: int) -> list[UUID]:
    rows = await con.fetch(
        "SELECT id FROM payments.transactions WHERE status = 'pending' AND provider IN ('fedapay', 'kkiapay')"
        " AND provider_ref IS NOT NULL AND created_at <= now() - make_interval(secs => $1)"
        " ORDER BY created_at LIMIT $2",
        float(seconds),
        limit,
    )
    return [r["id"] for r in rows]


# --- invoices ---------------------------------------------------------------------------------------


async def issue_invoice(
    con: asyncpg.Connection, payment: Payment, *, prefix: str, provider: str, provider_reference: str | None
) -> tuple[UUID, str]:
    """The next number of the current year (the counter row stays locked until commit)."""
    year = await con.fetchval("SELECT extract(year FROM now() AT TIME ZONE 'UTC')::int")
    seq = await con.fetchval(
        "INSERT INTO payments.invoice_counters (year, last_number) VALUES ($1, 1)"
        " ON CONFLICT (year) DO UPDATE SET last_number = payments.invoice_counters.last_number + 1"
        " RETURNING last_number",
        year,
    )
    number = f"{prefix}-{year}-{seq:06d}"
    lines = [{"code": x.code, "label": x.label, "amount_xof": x.amount_xof} for x in payment.lines] or [
        {
            "code": payment.payable_kind,
            "label": payment.description or payment.reference,
            "amount_xof": payment.amount_xof,
        }
    ]
    invoice_id = await con.fetchval(
        "INSERT INTO payments.invoices (number, year, seq, payment_id, lines, total_xof, provider, provider_reference)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        number,
        year,
        seq,
        payment.id,
        lines,
        payment.amount_xof,
        provider,
        provider_reference,
    )
    return invoice_id, number


async def get_invoice(con: asyncpg.Connection, invoice_id: UUID) -> Invoice | None:
    row = await con.fetchrow(
        "SELECT i.id, i.number, i.payment_id, p.payable_id, p.payable_kind, p.reference, p.payer_id, i.issued_at,"
        " i.lines, i.total_xof, i.provider, i.provider_reference"
        " FROM payments.invoices i JOIN payments.payments p ON p.id = i.payment_id WHERE i.id = $1",
        invoice_id,
    )
    return from_row(Invoice, row)


# --- refunds ----------------------------------------------------------------------------------------


async def refunds_of(con: asyncpg.Connection, payment_id: UUID) -> list[Refund]:
    rows = await con.fetch("SELECT * FROM payments.refunds WHERE payment_id = $1 ORDER BY created_at, id", payment_id)
    return from_rows(Refund, rows)


async def refund_in_flight(con: asyncpg.Connection, payment_id: UUID) -> int:
    """What non-automatic refunds already claim of the paid amount (pending ones included)."""
    return await con.fetchval(
        "SELECT coalesce(sum(amount_xof), 0)::bigint FROM payments.refunds"
        " WHERE payment_id = $1 AND NOT automatic AND status = 'pending'",
        payment_id,
    )


async def insert_refund(
    con: asyncpg.Connection,
    *,
    payment_id: UUID,
    transaction_id: UUID,
    amount_xof: int,
    reason: str,
    requested_by: str,
    automatic: bool = False,
) -> Refund:
    row = await con.fetchrow(
        "INSERT INTO payments.refunds (payment_id, transaction_id, amount_xof, reason, requested_by, automatic)"
        " VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
        payment_id,
        transaction_id,
        amount_xof,
        reason,
        requested_by,
        automatic,
    )
    return from_row(Refund, row)  # type: ignore[return-value]


async def settle_refund(
    con: asyncpg.Connection, refund_id: UUID, status: str, *, provider_ref: str | None = None, error: str | None = None
) -> Refund:
    row = await con.fetchrow(
        "UPDATE payments.refunds SET status = $2, provider_ref = $3, error = $4, settled_at = now()"
        " WHERE id = $1 RETURNING *",
        refund_id,
        status,
        provider_ref,
        error,
    )
    return from_row(Refund, row)  # type: ignore[return-value]


async def pending_automatic_refunds(con: asyncpg.Connection) -> list[Refund]:
    rows = await con.fetch(
        "SELECT * FROM payments.refunds WHERE automatic AND status IN ('pending', 'failed') ORDER BY created_at"
    )
    return from_rows(Refund, rows)


# --- idempotency keys -------------------------------------------------------------------------------


class ClaimedKey(msgspec.Struct, frozen=True, kw_only=True):
    """An Idempotency-Key already used: by which operation, for which request, and how it ended."""

    operation: str
    request_hash: str
    status: str
    response: Any = None
    error: dict[str, Any] | None = None


async def claim_key(
    con: asyncpg.Connection, owner: str, key: str, operation: str, request_hash: str, ttl_h: int
) -> ClaimedKey | None:
    """None when this request now owns the key; otherwise the stored row (an expired one is replaced)."""
    await con.execute(
        "DELETE FROM payments.idempotency_keys WHERE owner = $1 AND key = $2"
        " AND created_at < now() - make_interval(hours => $3)",
        owner,
        key,
        ttl_h,
    )
    inserted = await con.fetchval(
        "INSERT INTO payments.idempotency_keys (owner, key, operation, request_hash) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (owner, key) DO NOTHING RETURNING true",
        owner,
        key,
        operation,
        request_hash,
    )
    if inserted:
        return None
    row = await con.fetchrow(
        "SELECT operation, request_hash, status, response, error FROM payments.idempotency_keys"
        " WHERE owner = $1 AND key = $2",
        owner,
        key,
    )
    return from_row(ClaimedKey, row)


async def finish_key(
    con: asyncpg.Connection, owner: str, key: str, *, response: Any = None, error: dict[str, Any] | None = None
) -> None:
    await con.execute(
        "UPDATE payments.idempotency_keys SET status = 'done', response = $3, error = $4 WHERE owner = $1 AND key = $2",
        owner,
        key,
        response,
        error,
    )


async def release_key(con: asyncpg.Connection, owner: str, key: str) -> None:
    await con.execute("DELETE FROM payments.idempotency_keys WHERE owner = $1 AND key = $2", owner, key)


async def purge_keys(con: asyncpg.Connection, ttl_h: int) -> int:
    status = await con.execute(
        "DELETE FROM payments.idempotency_keys WHERE created_at < now() - make_interval(hours => $1)", ttl_h
    )
    return int(status.split()[-1])


# --- webhook receipts and reconciliation runs -------------------------------------------------------


async def insert_receipt(
    con: asyncpg.Connection,
    *,
    provider: str,
    signature: str | None,
    raw_body: bytes,
    verified: bool,
    verification_error: str | None,
    event_type: str | None,
    object_id: str | None,
) -> int:
    return await con.fetchval(
        "INSERT INTO payments.webhook_receipts (provider, signature, raw_body, verified, verification_error,"
        " event_type, object_id) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        provider,
        signature,
        raw_body,
        verified,
        verification_error,
        event_type,
        object_id,
    )


async def set_receipt_outcome(con: asyncpg.Connection, receipt_id: int, outcome: str) -> None:
    await con.execute("UPDATE payments.webhook_receipts SET outcome = $2 WHERE id = $1", receipt_id, outcome)


async def claim_run(con: asyncpg.Connection, day: Any) -> bool:
    return bool(
        await con.fetchval(
            "INSERT INTO payments.reconciliation_runs (day) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true", day
        )
    )


async def finish_run(con: asyncpg.Connection, day: Any, report: Any) -> None:
    await con.execute(
        "UPDATE payments.reconciliation_runs SET finished_at = now(), report = $2 WHERE day = $1", day, report
    )
