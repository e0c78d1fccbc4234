"""HTTP routes of the documents service: uploads, reads, downloads, validation, issued certificates and
receipts (`/api/documents`), and the public verification page of a certificate (`/verify/{number}`).

Uploads are `multipart/form-data` parsed as they arrive (never the whole body in memory): the form
fields before the file (`type` first, then `request_id`, `vehicle_id`, `owner_id`, `replaces_id`)
say what it is; the file part is streamed to a staging file while its first bytes are sniffed (a
declared type that differs from the bytes is a 415), its SHA-256 computed and its size checked
against the type's limit (413 as soon as it is exceeded); the actor then stores it under its own key.
Downloads are streamed chunk by chunk with a strong `ETag` (the content hash), `If-None-Match`,
single byte ranges (`Range`, `If-Range`) and a `Content-Disposition` that no file name can break.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import os
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote
from uuid import UUID

from litestar import Controller, MediaType, Request, Response, delete, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.response import Stream

from simveb.actors.documents.messages import (
    EXTENSIONS,
    SNIFF_BYTES,
    ArchiveDocument,
    Certificate,
    CloseDownload,
    DecideDocument,
    Document,
    DocumentPage,
    DocumentStatus,
    DocumentType,
    GenerateReceipt,
    GetCertificate,
    GetDocument,
    GetDocumentType,
    IssueCertificate,
    ListDocuments,
    ListDocumentTypes,
    OpenDownload,
    ReadDownload,
    Receipt,
    StoreUpload,
    UnsupportedMediaType,
    Verification,
    VerifyCertificate,
    sniff,
)
from simveb.bus import Bus
from simveb.config import Settings
from simveb.errors import BadRequest, DomainError, PayloadTooLarge
from simveb.http.inputs import CursorQuery, LimitQuery, body_of
from simveb.http.security import requires
from simveb.messages import PAGE_LIMIT_DEFAULT, Caller

PUBLIC = {"public": True}
FIELDS = {"type", "request_id", "vehicle_id", "owner_id", "replaces_id"}
MAX_FIELD_BYTES = 200


# Bodies are the messages' own fields, less what the route sets (the caller, the document in the path).
DecisionIn = body_of(DecideDocument, exclude=("document_id", "caller"), name="DecisionIn")
CertificateIn = body_of(IssueCertificate, exclude=("caller",), name="CertificateIn")
ReceiptIn = body_of(GenerateReceipt, exclude=("caller",), name="ReceiptIn")


def staging_dir(settings: Settings) -> Path:
    conf = settings.documents
    folder = Path(conf.staging_dir).expanduser() if conf.staging_dir else settings.data_dir / "documents" / "staging"
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


def etag(doc: Document) -> str:
    return f'"{doc.sha256[:32]}"'


def content_disposition(filename: str, *, inline: bool = False) -> str:
    """RFC 6266: an ASCII fallback with nothing that could end the header value, and the UTF-8 name."""
    fallback = re.sub(r"[^A-Za-z0-9._ -]", "_", filename).strip() or "document"
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None) -> tuple[int | None, int | None, int | None] | None:
    """(start, end, suffix) of one byte range, or None to send the whole document (absent, several
    ranges or a unit we do not serve: RFC 9110 lets a server ignore Range)."""
    if not header:
        return None
    match = _RANGE.match(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        return None, None, int(last)
    start = int(first)
    end = int(last) if last else None
    if end is not None and end < start:
        return None
    return start, end, None


def _uuid_field(name: str, value: str | None) -> UUID | None:
    if not value:
        return None
    try:
        return UUID(value)
    except ValueError:
        raise BadRequest(f"{name}: not a UUID", code="validation_error") from None


async def _receive_upload(request: Request[Any, Any, Any], bus: Bus, caller: Caller) -> Document:
    import multipart

    media, options = multipart.parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get("boundary")
    if media != "multipart/form-data" or not boundary:
        raise BadRequest("send the document as multipart/form-data with a file part", code="multipart_required")
    settings: Settings = request.app.state.settings
    folder = staging_dir(settings)
    fields: dict[str, str] = {}
    path: Path | None = None
    fh: Any = None
    kind: DocumentType | None = None
    limit = 0
    size = 0
    head = b""
    digest = hashlib.sha256()
    sniffed: str | None = None
    declared: str | None = None
    filename = ""
    in_file = False
    done_file = False
    value = bytearray()
    segment: Any = None
    try:
        with multipart.PushMultipartParser(
            boundary, max_header_size=4096, max_header_count=8, max_segment_count=12
        ) as parser:
            stream = request.stream()
            while not parser.closed:
                chunk = await anext(stream, b"")
                for event in parser.parse(chunk):
                    if isinstance(event, multipart.MultipartSegment):
                        segment = event
                        if event.filename is not None:
                            if event.name != "file" or done_file:
                                raise BadRequest("send exactly one file, in the part named file", code="one_file")
                            code = fields.get("type")
                            if not code:
                                raise BadRequest("the type field must come before the file", code="type_first")
                            kind = await bus.ask(GetDocumentType(code=code))
                            limit = kind.max_bytes
                            filename = event.filename
                            declared = (event.content_type or "").split(";")[0].strip().lower() or None
                            path = folder / uuid.uuid4().hex
                            fh = path.open("xb")
                            in_file = True
                        elif event.name not in FIELDS:
                            raise BadRequest(f"unknown form field {event.name!r}", code="unknown_field")
                        value = bytearray()
                    elif event is None:  # end of a part
                        if in_file:
                            in_file, done_file = False, True
                            if sniffed is None:
                                _check_type(head, declared, filename, kind)
                                sniffed = sniff(head)
                        elif segment is not None:
                            fields[segment.name] = value.decode("utf-8", "replace").strip()
                        segment = None
                    elif in_file:
                        size += len(event)
                        if size > limit:
                            raise PayloadTooLarge(f"a {kind.code if kind else 'document'} is at most {limit} bytes")
                        if sniffed is None:
                            head += bytes(event[: SNIFF_BYTES - len(head)])
                            if len(head) >= SNIFF_BYTES:
                                sniffed = _check_type(head, declared, filename, kind)
                        digest.update(event)
                        fh.write(event)
                    else:
                        value += event
                        if len(value) > MAX_FIELD_BYTES:
                            raise BadRequest("form field too long", code="field_too_long")
        if not done_file or path is None or kind is None or sniffed is None:
            raise BadRequest("no file part named file in the form", code="file_required")
        fh.close()
        fh = None
        return await bus.ask(
            StoreUpload(
                caller=caller,
                type_code=kind.code,
                staging_path=str(path),
                filename=filename,
                media_type=sniffed,
                size_bytes=size,
                sha256=digest.hexdigest(),
                owner_id=_uuid_field("owner_id", fields.get("owner_id")),
                request_id=_uuid_field("request_id", fields.get("request_id")),
                vehicle_id=_uuid_field("vehicle_id", fields.get("vehicle_id")),
                replaces_id=_uuid_field("replaces_id", fields.get("replaces_id")),
            )
        )
    except multipart.ParserError as exc:
        refused = BadRequest(f"malformed multipart body: {exc}", code="bad_multipart")
        refused.headers["Connection"] = "close"
        raise refused from None
    except DomainError as exc:
        # Refused before the whole body was read: the rest of it is still on the wire, so the
        # connection cannot carry another request (a client reusing it would see a broken stream).
        exc.headers["Connection"] = "close"
        raise
    finally:
        if fh is not None:
            fh.close()
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # the actor moved it already, or it is refused


def _check_type(head: bytes, declared: str | None, filename: str, kind: DocumentType | None) -> str:
    """The sniffed type, or a 415: unknown bytes, a type the document type refuses, or a declared
    Content-Type or file extension that says something else than the bytes."""
    actual = sniff(head)
    if actual is None:
        raise UnsupportedMediaType("the file is not a PDF, JPEG or PNG document")
    if kind is not None and actual not in kind.media_types:
        raise UnsupportedMediaType(f"a {kind.code} must be one of {', '.join(kind.media_types)}; this file is {actual}")
    if declared and declared != "application/octet-stream" and declared != actual:
        raise UnsupportedMediaType(f"declared as {declared} but the file is {actual}")
    ext = os.path.splitext(filename.lower())[1]
    if ext in EXTENSIONS and EXTENSIONS[ext] != actual:
        raise UnsupportedMediaType(f"named {ext} but the file is {actual}")
    return actual


# The upload's form, documented by hand: the handler parses the stream itself (fields before the file).
_UUID = {"type": "string", "format": "uuid"}
UPLOAD_FORM = {
    "multipart/form-data": {
        "type": "object",
        "required": ["type", "file"],
        "properties": {
            "type": {"type": "string", "description": "The document type's code (GET /api/documents/types); first."},
            "request_id": {**_UUID, "description": "The immatriculation request it supports."},
            "vehicle_id": {**_UUID, "description": "The vehicle it concerns."},
            "owner_id": {**_UUID, "description": "Staff uploading for an applicant: whose paper it is."},
            "replaces_id": {**_UUID, "description": "The rejected paper this one replaces."},
            "file": {"type": "string", "format": "binary", "description": "PDF, JPEG or PNG; last."},
        },
    }
}


class DocumentsController(Controller):
    path = "/api/documents"
    tags = ["documents"]

    @post("/upload", request_max_body_size=None, status_code=201, opt={"request_body": UPLOAD_FORM})
    async def upload(self, request: Request[Any, Any, Any], bus: Bus, caller: Caller) -> Document:
        """Upload a document (multipart: type, optional request_id / vehicle_id / owner_id / replaces_id, then file)."""
        return await _receive_upload(request, bus, caller)

    @get("/types")
    async def types(self, bus: Bus) -> list[DocumentType]:
        """Document types with their size limit and accepted media types."""
        return await bus.ask(ListDocumentTypes())

    @get("/")
    async def list_documents(
        self,
        bus: Bus,
        caller: Caller,
        request_id: UUID | None = None,
        vehicle_id: UUID | None = None,
        owner_id: UUID | None = None,
        type: Annotated[str | None, Parameter(max_length=50, description="document type code")] = None,
        status: DocumentStatus | None = None,
        include_archived: bool = False,
        cursor: CursorQuery = None,
        limit: LimitQuery = PAGE_LIMIT_DEFAULT,
    ) -> DocumentPage:
        """Your documents; staff with documents:read by request, vehicle or owner."""
        return await bus.ask(
            ListDocuments(
                caller=caller,
                request_id=request_id,
                vehicle_id=vehicle_id,
                owner_id=owner_id,
                type_code=type,
                status=status,
                include_archived=include_archived,
                cursor=cursor,
                limit=limit,
            )
        )

    @post("/generate-certificate", guards=[requires("documents:issue")], status_code=201)
    async def generate_certificate(self, bus: Bus, caller: Caller, data: CertificateIn) -> Certificate:
        """Issue a carte grise for a vehicle now (replaces its current one)."""
        return await bus.ask(
            IssueCertificate(
                caller=caller,
                vehicle_id=data.vehicle_id,
                request_id=data.request_id,
                holder_ids=tuple(data.holder_ids),
                duplicate=data.duplicate,
                reason=data.reason,
            ),
            timeout=60,
        )

    @post("/generate-receipt", status_code=201)
    async def generate_receipt(self, bus: Bus, caller: Caller, data: ReceiptIn) -> Receipt:
        """The PDF receipt of an invoice (its payer, or staff with documents:issue)."""
        return await bus.ask(GenerateReceipt(caller=caller, invoice_id=data.invoice_id), timeout=60)

    @get("/certificates/{number:str}")
    async def certificate(self, bus: Bus, caller: Caller, number: str) -> Certificate:
        """An issued certificate (its holders, or staff with documents:read)."""
        return await bus.ask(GetCertificate(number=number, caller=caller))

    @get("/{document_id:uuid}")
    async def get_document(self, bus: Bus, caller: Caller, document_id: UUID) -> Response[Document]:
        """One document with its validations."""
        doc = await bus.ask(GetDocument(document_id=document_id, caller=caller))
        return Response(doc, headers={"ETag": etag(doc)})

    @delete("/{document_id:uuid}", status_code=200)
    async def archive(self, bus: Bus, caller: Caller, document_id: UUID) -> Document:
        """Delete (archive) a document; refused when it supports a completed registration."""
        return await bus.ask(ArchiveDocument(document_id=document_id, caller=caller))

    @post("/{document_id:uuid}/validate", guards=[requires("documents:validate")], status_code=200)
    async def validate(self, bus: Bus, caller: Caller, document_id: UUID, data: DecisionIn) -> Document:
        """Approve or reject (with a reason) a pending document."""
        return await bus.ask(
            DecideDocument(document_id=document_id, caller=caller, decision=data.decision, reason=data.reason)
        )

    @get("/{document_id:uuid}/download")
    async def download(
        self, request: Request[Any, Any, Any], bus: Bus, caller: Caller, document_id: UUID
    ) -> Response[Any]:
        """The document's bytes, streamed; ETag, If-None-Match and one byte range."""
        return await stream_document(request, bus, caller, document_id)


async def stream_document(
    request: Request[Any, Any, Any], bus: Bus, caller: Caller | None, document_id: UUID
) -> Response[Any]:
    wanted = parse_range(request.headers.get("range"))
    if_range = request.headers.get("if-range")
    doc = None
    if request.headers.get("if-none-match") or (wanted and if_range):
        doc = await bus.ask(GetDocument(document_id=document_id, caller=caller))
        tags = {t.strip() for t in (request.headers.get("if-none-match") or "").split(",")}
        if etag(doc) in tags or "*" in tags:
            return Response(b"", status_code=304, headers={"ETag": etag(doc)})
        if if_range and if_range.strip() != etag(doc):
            wanted = None  # the client's copy is stale: send it all
    start, end, suffix = wanted or (None, None, None)
    opened = await bus.ask(OpenDownload(document_id=document_id, caller=caller, start=start, end=end, suffix=suffix))
    doc = opened.document

    async def body() -> AsyncIterator[bytes]:
        done = opened.end < opened.start
        try:
            while not done:
                chunk = await bus.ask(ReadDownload(download_id=opened.download_id))
                done = chunk.done
                if chunk.data:
                    yield chunk.data
        finally:
            if not done:  # the client went away: release the stream now
                with contextlib.suppress(Exception):
                    await bus.ask(CloseDownload(download_id=opened.download_id))

    headers = {
        "ETag": etag(doc),
        "Accept-Ranges": "bytes",
        "Content-Length": str(opened.end - opened.start + 1),
        "Content-Disposition": content_disposition(doc.filename),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-cache",
    }
    if opened.partial:
        headers["Content-Range"] = f"bytes {opened.start}-{opened.end}/{opened.total}"
    return Stream(body(), media_type=doc.media_type, status_code=206 if opened.partial else 200, headers=headers)


# --- public verification -----------------------------------------------------------------------------


def _wants_json(request: Request[Any, Any, Any], format: str | None) -> bool:
    if format:
        return format == "json"
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:0;background:#f4f6f5;color:#1b1b1b}"
    "main{max-width:32rem;margin:0 auto;padding:1rem}"
    ".badge{border-radius:.6rem;padding:1rem;font-size:1.2rem;font-weight:700;color:#fff;margin:1rem 0}"
    ".ok{background:#007a4d}.warn{background:#b35c00}.bad{background:#b00020}"
    "dl{display:grid;grid-template-columns:auto 1fr;gap:.4rem 1rem;background:#fff;padding:1rem;border-radius:.6rem}"
    "dt{color:#555}dd{margin:0;font-weight:600;word-break:break-all}small{color:#555}"
)


def verification_html(v: Verification) -> str:
    e = html.escape
    scanned = {
        "valid": "Code signé par SIMVEB et identique au certificat enregistré.",
        "invalid": "Le code scanné n'est pas signé par SIMVEB ou ne correspond pas à ce certificat.",
        "absent": "Certificat enregistré par SIMVEB (numéro saisi, aucun code scanné).",
    }[v.signature]
    if not v.found:
        badge = ("bad", "Certificat inconnu", "Aucun certificat SIMVEB ne porte ce numéro.")
    elif v.signature == "invalid":
        badge = ("bad", "Code falsifié ou modifié", scanned)
    elif v.status == "replaced":
        badge = ("warn", "Certificat remplacé", f"Remplacé par le certificat {v.replaced_by or ''}. {scanned}")
    else:
        badge = ("ok", "Certificat authentique et en vigueur", scanned)
    rows = ""
    if v.found:
        items = [
            ("Numéro", v.number),
            ("Immatriculation (A)", v.plate),
            ("VIN (E)", v.vin),
            ("Titulaire (C.1)", v.holder),
            ("Marque / type (D.1, D.2)", " ".join(p for p in (v.make, v.model) if p)),
            ("Délivré le (I)", v.issued_on.strftime("%d/%m/%Y") if v.issued_on else ""),
            ("Duplicata", "oui" if v.duplicate else "non"),
        ]
        rows = "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(str(val or '-'))}</dd>" for k, val in items) + "</dl>"
    kind, title, detail = badge
    return (
        "<!doctype html><html lang=fr><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>Vérification {e(v.number)} - SIMVEB</title><style>{_STYLE}</style></head><body><main>"
        "<h1>SIMVEB - vérification</h1>"
        f'<div class="badge {kind}" id=status data-status="{e(v.status)}" data-signature="{e(v.signature)}">'
        f"{e(title)}</div><p>{e(detail)}</p>{rows}"
        "<p><small>Seule cette page dit si un certificat est encore en vigueur : une mutation ou un duplicata "
        "le remplace.</small></p></main></body></html>"
    )


class VerifyController(Controller):
    path = "/verify"
    tags = ["documents"]

    @get(
        "/{number:str}",
        opt={**PUBLIC, "content": {200: {"text/html": {"type": "string"}}, 404: {"text/html": {"type": "string"}}}},
        responses={
            200: ResponseSpec(
                Verification,
                description="The certificate's standing (HTML unless JSON is asked for).",
                generate_examples=False,
            ),
            404: ResponseSpec(
                Verification,
                description="No such certificate: the same answer, `found` false.",
                generate_examples=False,
            ),
        },
    )
    async def verify(
        self,
        request: Request[Any, Any, Any],
        bus: Bus,
        number: str,
        p: Annotated[str | None, Parameter(max_length=4000, description="the signed payload from the QR code")] = None,
        format: Annotated[str | None, Parameter(pattern="^(json|html)$")] = None,
    ) -> Response[Any]:
        """Is this certificate genuine and still current? HTML for a phone, JSON for programs."""
        result = await bus.ask(VerifyCertificate(number=number[:40], payload=p))
        headers = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex"}
        status = 200 if result.found else 404
        if _wants_json(request, format):
            return Response(result, status_code=status, media_type=MediaType.JSON, headers=headers)
        headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
        return Response(verification_html(result), status_code=status, media_type=MediaType.HTML, headers=headers)


CONTROLLERS: list[Any] = [DocumentsController, VerifyController]
