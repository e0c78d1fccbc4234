"""The documents service's contract: uploads, validations, issued certificates, and what others ask.

Uploaded papers (identity, customs clearance, invoice, previous carte grise ...) are linked to what
they prove (a registration request, a vehicle, the user they belong to) and decided by an agent.
Issued documents (the carte grise, payment receipts) are documents too, rendered and signed by the
service; a certificate's QR code carries a compact JWS (EdDSA) that anyone verifies offline with the
published key, and `/verify/{number}` says online whether it is still current.

Every query takes the `caller`; `None` is the service itself (trusted internal callers). A document
the caller may not see is answered as not found.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec

from simveb.errors import (
    BadRequest,
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    NotFound,
    PayloadTooLarge,
)
from simveb.messages import PAGE_LIMIT_DEFAULT, Ask, Caller, Cursor, Event, Limit, Page, Record

DocumentStatus = Literal["pending", "validated", "rejected", "issued"]
Decision = Literal["approve", "reject"]
Code = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{1,49}$")]
Reason = Annotated[str, msgspec.Meta(max_length=1000)]

# Media types the service accepts, and the bytes each starts with: the type of an upload is what its
# bytes are, never what the client declares (a declared type that differs is refused with a 415).
MAGIC: dict[str, tuple[bytes, ...]] = {
    "application/pdf": (b"%PDF-",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
}
EXTENSIONS: dict[str, str] = {
    ".pdf": "application/pdf",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
}
SNIFF_BYTES = 8  # enough bytes to tell every type of MAGIC apart


def sniff(head: bytes) -> str | None:
    """The media type the first bytes of a file are, or None when it is none the service accepts."""
    for media_type, prefixes in MAGIC.items():
        if any(head.startswith(prefix) for prefix in prefixes):
            return media_type
    return None


class UnsupportedMediaType(DomainError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class RangeNotSatisfiable(DomainError):
    status = 416
    code = "range_not_satisfiable"
    title = "Range not satisfiable"


# --- what others ask (agreed with registrations) --------------------------------------------------


class RequiredDocuments(Record):
    """Whether a registration request's required documents are all present and validated."""

    complete: bool
    missing: tuple[str, ...] = ()  # required types with no live upload
    pending: tuple[str, ...] = ()  # uploaded, not validated yet
    rejected: tuple[str, ...] = ()  # the last upload of that type was rejected


class CheckRequiredDocuments(Ask[RequiredDocuments]):
    """Asked by registrations before a request leaves its first status, and before verification.

    With `applicant_id`, only documents that belong to the applicant (or were uploaded by staff for
    them) count, so nobody can complete someone else's request with their own papers.
    """

    request_id: UUID
    required: tuple[str, ...]  # document type codes from the procedure
    applicant_id: UUID | None = None


# --- records ---------------------------------------------------------------------------------------


class DocumentType(Record):
    code: str
    label_fr: str
    label_en: str
    max_bytes: int
    media_types: tuple[str, ...]
    issued: bool = False  # produced by SIMVEB (carte grise, receipt), never uploaded
    active: bool = True


class Validation(Record):
    id: int
    document_id: UUID
    decision: Literal["approved", "rejected"]
    reason: str = ""
    decided_by: str
    decided_at: datetime


class Document(Record):
    id: UUID
    type_code: str
    status: DocumentStatus
    owner_id: UUID | None = None
    request_id: UUID | None = None
    vehicle_id: UUID | None = None
    filename: str
    media_type: str
    size_bytes: int
    sha256: str
    uploaded_by: str
    created_at: datetime
    replaces_id: UUID | None = None
    replaced_by: UUID | None = None
    archived_at: datetime | None = None
    rejection_reason: str | None = None  # the reason of the last rejection, when rejected
    certificate_number: str | None = None  # for an issued carte grise
    validations: tuple[Validation, ...] = ()  # filled by GetDocument


class DocumentPage(Page[Document]):
    """Documents, newest first."""

    items: list[Document]


class Certificate(Record):
    """An issued carte grise: what is printed on it, its QR payload and whether it is still current."""

    number: str
    document_id: UUID
    vehicle_id: UUID
    request_id: UUID | None = None
    plate: str
    vin: str
    holder: str
    duplicate: bool = False
    issued_at: datetime
    status: Literal["current", "replaced"]
    replaced_by: str | None = None
    replaced_at: datetime | None = None
    replaced_reason: str | None = None
    payload: str  # the compact JWS printed in the QR code
    verify_url: str
    fields: dict[str, str] = {}  # every printed field by its code (A, B, C.1 ... Z)


class Verification(Record):
    """What the public verification page says about a certificate number (and a scanned payload)."""

    number: str
    found: bool
    status: Literal["current", "replaced", "unknown"] = "unknown"
    plate: str | None = None
    vin: str | None = None
    holder: str | None = None
    make: str | None = None
    model: str | None = None
    issued_on: date | None = None
    duplicate: bool = False
    replaced_by: str | None = None
    replaced_at: datetime | None = None
    # "valid": the scanned payload is signed by one of our document keys and matches this certificate;
    # "invalid": it is not; "absent": nothing was scanned (the number was typed)
    signature: Literal["valid", "invalid", "absent"] = "absent"
    signature_detail: str = ""


class Receipt(Record):
    invoice_id: UUID
    invoice_number: str
    document_id: UUID
    payer_id: UUID
    issued_at: datetime


class DocumentKeys(Record):
    """The public keys (JWK, Ed25519, with kid) that verify certificate payloads."""

    keys: list[dict[str, str]]


class DownloadOpened(Record):
    """An open download: the bytes start..end (inclusive) of the document, `total` its size."""

    download_id: UUID
    document: Document
    start: int
    end: int
    total: int
    partial: bool


class Chunk(Record):
    data: bytes
    done: bool


# --- commands and queries --------------------------------------------------------------------------


class SeedDocuments(Ask[int]):
    """Load the document types (existing rows are kept); returns rows inserted."""

    only_if_empty: bool = False


class ListDocumentTypes(Ask[list[DocumentType]]):
    include_inactive: bool = False


class GetDocumentType(Ask[DocumentType]):
    """The rules of an upload of this type (limit, media types); NotFound for an unknown or issued type."""

    errors = (NotFound,)

    code: str


class StoreUpload(Ask[Document]):
    """An upload the HTTP layer streamed to a staging file (sniffed, hashed, within the limit): the actor
    checks it again, moves it into storage under its own key and records it."""

    errors = (BadRequest, Forbidden, NotFound, Conflict, PayloadTooLarge, UnsupportedMediaType, Invalid)

    caller: Caller
    type_code: str
    staging_path: str
    filename: str
    media_type: str
    size_bytes: int
    sha256: str
    owner_id: UUID | None = None  # staff uploading for an applicant; default: the caller
    request_id: UUID | None = None
    vehicle_id: UUID | None = None
    replaces_id: UUID | None = None  # a rejected (or pending) document this one replaces


class GetDocument(Ask[Document]):
    errors = (NotFound,)

    document_id: UUID
    caller: Caller | None = None


class ListDocuments(Ask[DocumentPage]):
    """Own documents; staff with documents:read filter by request, vehicle or owner."""

    caller: Caller
    request_id: UUID | None = None
    vehicle_id: UUID | None = None
    owner_id: UUID | None = None
    type_code: str | None = None
    status: DocumentStatus | None = None
    include_archived: bool = False
    cursor: Cursor | None = None
    limit: Limit = PAGE_LIMIT_DEFAULT


class ArchiveDocument(Ask[Document]):
    """Delete = archive (the file is kept). Refused for a document that supports a completed request."""

    errors = (NotFound, Conflict)

    document_id: UUID
    caller: Caller


class DecideDocument(Ask[Document]):
    """An agent approves or rejects a pending document; a rejection needs a reason."""

    errors = (Forbidden, NotFound, Conflict, Invalid)

    document_id: UUID
    caller: Caller
    decision: Decision
    reason: Reason = ""


class OpenDownload(Ask[DownloadOpened]):
    """Open a document's bytes for streaming; `start`/`end` is one byte range (end inclusive, None: to the end)."""

    errors = (NotFound, RangeNotSatisfiable)

    document_id: UUID
    caller: Caller | None = None
    start: int | None = None
    end: int | None = None
    suffix: int | None = None  # the last N bytes (Range: bytes=-N)


class ReadDownload(Ask[Chunk]):
    errors = (NotFound,)

    download_id: UUID


class CloseDownload(Ask[None]):
    download_id: UUID


class IssueCertificate(Ask[Certificate]):
    """Issue a carte grise for a vehicle now (staff, on demand); replaces the vehicle's current one."""

    errors = (Forbidden, NotFound, Invalid)

    caller: Caller
    vehicle_id: UUID
    request_id: UUID | None = None  # when given and already certified, that certificate is returned
    holder_ids: Annotated[tuple[UUID, ...], msgspec.Meta(max_length=20)] = ()  # default: the vehicle's owners
    duplicate: bool = False
    reason: Reason = ""


class GetCertificate(Ask[Certificate]):
    errors = (NotFound,)

    number: str
    caller: Caller | None = None


class VerifyCertificate(Ask[Verification]):
    """Public: the state of a certificate number, and whether a scanned payload is genuine and matches."""

    number: Annotated[str, msgspec.Meta(max_length=40)]
    payload: Annotated[str, msgspec.Meta(max_length=4000)] | None = None


class GenerateReceipt(Ask[Receipt]):
    """Render the receipt of an invoice (payer or staff); idempotent by invoice."""

    errors = (NotFound,)

    caller: Caller
    invoice_id: UUID


class GetDocumentKeys(Ask[DocumentKeys]):
    """The public keys of the document-signing key ring (published with the JWKS)."""


# --- events ----------------------------------------------------------------------------------------


class DocumentUploaded(Event):
    document_id: UUID
    type_code: str
    owner_id: UUID | None
    request_id: UUID | None
    vehicle_id: UUID | None


class DocumentValidated(Event):
    document_id: UUID
    type_code: str
    owner_id: UUID | None
    request_id: UUID | None
    by: str


class DocumentRejected(Event):
    """An agent rejected a document; the owner is told (notifications) and may upload a replacement."""

    document_id: UUID
    type_code: str
    type_label: str
    owner_id: UUID | None
    request_id: UUID | None
    reason: str
    by: str


class CertificateIssued(Event):
    number: str
    document_id: UUID
    vehicle_id: UUID
    request_id: UUID | None
    holder_ids: tuple[UUID, ...]
    plate: str
    duplicate: bool
    replaced: str | None = None  # the number of the certificate this one replaced
