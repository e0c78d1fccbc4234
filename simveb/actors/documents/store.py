"""SQL of the documents service (schema `documents`): types, documents, validations, the request read
model, certificates and receipts. Every function takes the connection of the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from simveb.actors.documents.messages import Document, DocumentType, Receipt, Validation
from simveb.db import from_row, from_rows

# The last rejection's reason and the certificate number come with every document read.
_DOCUMENT = """
SELECT d.id, d.type_code, d.status, d.owner_id, d.request_id, d.vehicle_id, d.filename, d.media_type,
       d.size_bytes, d.sha256, d.uploaded_by, d.created_at, d.replaces_id, d.replaced_by, d.archived_at,
       CASE WHEN d.status = 'rejected' THEN
           (SELECT v.reason FROM documents.document_validations v WHERE v.document_id = d.id ORDER BY v.id DESC LIMIT 1)
       END AS rejection_reason,
       (SELECT c.number FROM documents.certificates c WHERE c.document_id = d.id) AS certificate_number
FROM documents.documents d
"""


# --- types -----------------------------------------------------------------------------------------


async def list_types(con: asyncpg.Connection, include_inactive: bool) -> list[DocumentType]:
    rows = await con.fetch(
        "SELECT code, label_fr, label_en, max_bytes, media_types, issued, active FROM documents.document_types"
        " WHERE active OR $1 ORDER BY issued, code",
        include_inactive,
    )
    return from_rows(DocumentType, rows)


async def get_type(con: asyncpg.Connection, code: str) -> DocumentType | None:
    row = await con.fetchrow(
        "SELECT code, label_fr, label_en, max_bytes, media_types, issued, active FROM documents.document_types"
        " WHERE code = $1",
        code,
    )
    return from_row(DocumentType, row)


async def count_types(con: asyncpg.Connection) -> int:
    return await con.fetchval("SELECT count(*) FROM documents.document_types")


# --- documents -------------------------------------------------------------------------------------


async def insert_document(con: asyncpg.Connection, **values: Any) -> None:
    columns = list(values)
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    await con.execute(
        f"INSERT INTO documents.documents ({', '.join(columns)}) VALUES ({placeholders})",
        *values.values(),
    )


async def get_document(con: asyncpg.Connection, document_id: UUID, *, lock: bool = False) -> Document | None:
    if lock:
        await con.execute("SELECT 1 FROM documents.documents WHERE id = $1 FOR UPDATE", document_id)
    return from_row(Document, await con.fetchrow(_DOCUMENT + " WHERE d.id = $1", document_id))


async def storage_key(con: asyncpg.Connection, document_id: UUID) -> str:
    return await con.fetchval("SELECT storage_key FROM documents.documents WHERE id = $1", document_id)


async def list_documents(
    con: asyncpg.Connection,
    *,
    owner_id: UUID | None,
    request_id: UUID | None,
    vehicle_id: UUID | None,
    type_code: str | None,
    status: str | None,
    include_archived: bool,
    after: tuple[Any, ...] | None,
    limit: int,
) -> list[Document]:
    rows = await con.fetch(
        _DOCUMENT + " WHERE ($1::uuid IS NULL OR d.owner_id = $1) AND ($2::uuid IS NULL OR d.request_id = $2)"
        " AND ($3::uuid IS NULL OR d.vehicle_id = $3) AND ($4::text IS NULL OR d.type_code = $4)"
        " AND ($5::text IS NULL OR d.status = $5) AND ($6 OR d.archived_at IS NULL)"
        " AND ($7::timestamptz IS NULL OR (d.created_at, d.id) < ($7, $8))"
        " ORDER BY d.created_at DESC, d.id DESC LIMIT $9",
        owner_id,
        request_id,
        vehicle_id,
        type_code,
        status,
        include_archived,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return from_rows(Document, rows)


async def live_for_request(
    con: asyncpg.Connection, request_id: UUID, types: list[str], applicant_id: UUID | None
) -> dict[str, str]:
    """The status of the newest live (not archived, not replaced) document of each type of a request."""
    rows = await con.fetch(
        "SELECT DISTINCT ON (type_code) type_code, status FROM documents.documents"
        " WHERE request_id = $1 AND type_code = ANY($2::text[]) AND archived_at IS NULL AND replaced_by IS NULL"
        " AND ($3::uuid IS NULL OR owner_id = $3)"
        " ORDER BY type_code, created_at DESC, id DESC",
        request_id,
        types,
        applicant_id,
    )
    return {r["type_code"]: r["status"] for r in rows}


async def set_status(con: asyncpg.Connection, document_id: UUID, status: str) -> None:
    await con.execute("UPDATE documents.documents SET status = $2 WHERE id = $1", document_id, status)


async def mark_replaced(con: asyncpg.Connection, old_id: UUID, new_id: UUID) -> None:
    await con.execute("UPDATE documents.documents SET replaced_by = $2 WHERE id = $1", old_id, new_id)


async def archive(con: asyncpg.Connection, document_id: UUID, by: str) -> None:
    await con.execute(
        "UPDATE documents.documents SET archived_at = now(), archived_by = $2 WHERE id = $1", document_id, by
    )


async def add_validation(con: asyncpg.Connection, document_id: UUID, decision: str, reason: str, by: str) -> None:
    await con.execute(
        "INSERT INTO documents.document_validations (document_id, decision, reason, decided_by)"
        " VALUES ($1, $2, $3, $4)",
        document_id,
        decision,
        reason,
        by,
    )


async def validations(con: asyncpg.Connection, document_id: UUID) -> list[Validation]:
    rows = await con.fetch(
        "SELECT id, document_id, decision, reason, decided_by, decided_at FROM documents.document_validations"
        " WHERE document_id = $1 ORDER BY id",
        document_id,
    )
    return from_rows(Validation, rows)


# --- registration requests (read model) -----------------------------------------------------------


async def upsert_request(
    con: asyncpg.Connection, request_id: UUID, number: str, applicant_id: UUID, *, completed: bool
) -> None:
    await con.execute(
        "INSERT INTO documents.requests (request_id, number, applicant_id, completed_at)"
        " VALUES ($1, $2, $3, CASE WHEN $4 THEN now() END)"
        " ON CONFLICT (request_id) DO UPDATE SET number = EXCLUDED.number, applicant_id = EXCLUDED.applicant_id,"
        " completed_at = coalesce(documents.requests.completed_at, EXCLUDED.completed_at), updated_at = now()",
        request_id,
        number,
        applicant_id,
        completed,
    )


class RequestRow(msgspec.Struct, frozen=True, kw_only=True):
    """What this actor keeps of a registration request (from its events)."""

    request_id: UUID
    number: str
    applicant_id: UUID
    completed_at: datetime | None = None


class CertificateRow(msgspec.Struct, frozen=True, kw_only=True):
    """An issued certificate as stored (the actor makes the Certificate reply from it)."""

    number: str
    document_id: UUID
    vehicle_id: UUID
    request_id: UUID | None
    holder_ids: list[UUID]
    plate: str
    vin: str
    holder: str
    duplicate: bool
    issued_at: datetime
    issued_by: str
    fields: dict[str, Any]
    payload: str
    replaced_by: str | None = None
    replaced_at: datetime | None = None
    replaced_reason: str | None = None


async def get_request(con: asyncpg.Connection, request_id: UUID) -> RequestRow | None:
    row = await con.fetchrow(
        "SELECT request_id, number, applicant_id, completed_at FROM documents.requests WHERE request_id = $1",
        request_id,
    )
    return from_row(RequestRow, row)


# --- certificates ----------------------------------------------------------------------------------

_CERTIFICATE = (
    "SELECT number, document_id, vehicle_id, request_id, holder_ids, plate, vin, holder, duplicate, issued_at,"
    " issued_by, fields, payload, replaced_by, replaced_at, replaced_reason FROM documents.certificates"
)


async def certificate(con: asyncpg.Connection, number: str) -> CertificateRow | None:
    return from_row(CertificateRow, await con.fetchrow(_CERTIFICATE + " WHERE number = $1", number))


async def certificate_for_request(con: asyncpg.Connection, request_id: UUID) -> CertificateRow | None:
    return from_row(CertificateRow, await con.fetchrow(_CERTIFICATE + " WHERE request_id = $1", request_id))


async def lock_vehicle_certificates(con: asyncpg.Connection, vehicle_id: UUID) -> None:
    """Serialise issuances for one vehicle until the transaction ends. A row lock on the current
    certificate is not enough: a second issuer waiting on it would find it replaced, so no current
    one at all, and insert a second current certificate."""
    await con.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('documents.certificates:' || $1::uuid::text, 0))", vehicle_id
    )


async def current_certificate(
    con: asyncpg.Connection, vehicle_id: UUID, *, lock: bool = False
) -> CertificateRow | None:
    row = await con.fetchrow(
        _CERTIFICATE + " WHERE vehicle_id = $1 AND replaced_at IS NULL" + (" FOR UPDATE" if lock else ""), vehicle_id
    )
    return from_row(CertificateRow, row)


async def replace_certificate(con: asyncpg.Connection, number: str, by_number: str, reason: str) -> None:
    await con.execute(
        "UPDATE documents.certificates SET replaced_by = $2, replaced_at = now(), replaced_reason = $3"
        " WHERE number = $1",
        number,
        by_number,
        reason,
    )


async def insert_certificate(con: asyncpg.Connection, **values: Any) -> None:
    columns = list(values)
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    await con.execute(
        f"INSERT INTO documents.certificates ({', '.join(columns)}) VALUES ({placeholders})", *values.values()
    )


# --- receipts --------------------------------------------------------------------------------------


async def receipt(con: asyncpg.Connection, invoice_id: UUID) -> Receipt | None:
    row = await con.fetchrow(
        "SELECT invoice_id, invoice_number, document_id, payer_id, issued_at FROM documents.receipts"
        " WHERE invoice_id = $1",
        invoice_id,
    )
    return from_row(Receipt, row)


async def insert_receipt(
    con: asyncpg.Connection, invoice_id: UUID, invoice_number: str, document_id: UUID, payer_id: UUID, at: datetime
) -> None:
    await con.execute(
        "INSERT INTO documents.receipts (invoice_id, invoice_number, document_id, payer_id, issued_at)"
        " VALUES ($1, $2, $3, $4, $5)",
        invoice_id,
        invoice_number,
        document_id,
        payer_id,
        at,
    )
