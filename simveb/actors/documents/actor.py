"""The documents actor: uploads and their validation, streamed downloads, issued certificates and
receipts, and the verification of a certificate.

- An upload arrives as a staging file the HTTP layer streamed, sniffed and hashed; the actor checks
  it again (type from the bytes, per-type limit), moves it into storage under its own key and records
  it, linked to what it proves. Who may read a document: its owner, staff with `documents:read`,
  and the service itself; anyone else is told it does not exist.
- A validated registration (event `RegistrationValidated`) issues the carte grise: the vehicle's
  fields (vehicles) and the holders' names and addresses (users) are asked for, the QR payload is
  signed with the document key, the page is rendered and signed in worker processes, stored, and the
  vehicle's previous certificate is marked replaced, all idempotent by request.
- Downloads are opened, read chunk by chunk and closed (the open streams are the only state kept in
  memory; abandoned ones are closed after `documents.download_idle_timeout_s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import jwt
import msgspec

from simveb.actors.documents import pdf, seed_data, store
from simveb.actors.documents.messages import (
    SNIFF_BYTES,
    ArchiveDocument,
    Certificate,
    CertificateIssued,
    CheckRequiredDocuments,
    Chunk,
    CloseDownload,
    DecideDocument,
    Document,
    DocumentKeys,
    DocumentPage,
    DocumentRejected,
    DocumentType,
    DocumentUploaded,
    DocumentValidated,
    DownloadOpened,
    GenerateReceipt,
    GetCertificate,
    GetDocument,
    GetDocumentKeys,
    GetDocumentType,
    IssueCertificate,
    ListDocuments,
    ListDocumentTypes,
    OpenDownload,
    RangeNotSatisfiable,
    ReadDownload,
    Receipt,
    RequiredDocuments,
    SeedDocuments,
    StoreUpload,
    UnsupportedMediaType,
    Verification,
    VerifyCertificate,
    sniff,
)
from simveb.actors.documents.storage import Storage, open_storage
from simveb.actors.payments.messages import GetInvoice
from simveb.actors.registrations.messages import RegistrationSubmitted, RegistrationValidated
from simveb.actors.users.messages import SYSTEM, GetProfile, Profile
from simveb.actors.vehicles.messages import GetVehicle, ListCategories, ListEnergies, Vehicle
from simveb.audit import Audited
from simveb.bus import Actor, handler
from simveb.errors import BadRequest, Conflict, Forbidden, Invalid, NotFound, PayloadTooLarge, Unavailable
from simveb.keys import ALGORITHM, document_ring
from simveb.messages import Caller, decode_cursor, page

log = logging.getLogger("simveb.documents")

CERTIFICATE_TYP = "simveb-cg+jwt"
RECEIPT_TYP = "simveb-receipt+jwt"
# Crockford base32 without I, L, O, U: certificate numbers are read aloud and typed from paper.
_NUMBER_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
NUMBER = re.compile(r"^CG-\d{4}-[0-9A-HJKMNP-TV-Z]{10}$")
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f\"\\/:*?<>|;]+")


def clean_filename(name: str) -> str:
    """The client's file name as shown to people: its last path part, no control or quoting characters."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = _UNSAFE_NAME.sub("_", base).strip(" ._")
    return base[:120] or "document"


def new_certificate_number(at: datetime) -> str:
    """CG-<year>-<10 random characters>: 50 random bits, so numbers cannot be enumerated on /verify."""
    return f"CG-{at.year}-" + "".join(secrets.choice(_NUMBER_ALPHABET) for _ in range(10))


def holder_name(profile: Profile) -> str:
    if profile.kind == "company" and profile.company_name:
        return profile.company_name
    parts = [(profile.last_name or "").upper(), profile.first_name or ""]
    return " ".join(p for p in parts if p) or str(profile.user_id)


def holder_address(profile: Profile) -> str:
    a = profile.address
    if a is None:
        return ""
    parts = [a.line1, a.line2 or "", a.city, a.department or "", "" if a.country == "BJ" else a.country]
    return ", ".join(p for p in parts if p)


def _fmt_date(value: date | None) -> str:
    return value.strftime("%d/%m/%Y") if value else ""


def _num(value: int | None) -> str:
    return "" if value is None else str(value)


def certificate_fields(
    *,
    vehicle: Vehicle,
    plate: str,
    holders: list[Profile],
    issued_at: datetime,
    first_registration: date | None,
    category_label: str,
    energy_label: str,
    duplicate: bool,
    request_number: str | None,
) -> dict[str, str]:
    """Every printed field of the carte grise by its harmonised code (see pdf.CERTIFICATE_FIELDS)."""
    names = " et ".join(holder_name(p) for p in holders)
    address = holder_address(holders[0]) if holders else ""
    remarks = [vehicle.remarks] if vehicle.remarks else []
    if duplicate:
        remarks.append("DUPLICATA")
    if request_number:
        remarks.append(f"Demande {request_number}")
    if vehicle.colour:
        remarks.append(f"Couleur : {vehicle.colour}")
    return {
        "A": plate,
        "B": _fmt_date(first_registration or vehicle.first_registration_date or issued_at.date()),
        "I": _fmt_date(issued_at.date()),
        "I.iso": issued_at.isoformat(),
        "C.1": names + (f"\n{address}" if address else ""),
        "D.1": vehicle.make,
        "D.2": vehicle.model,
        "D.3": vehicle.commercial_name,
        "E": vehicle.vin,
        "F.1": _num(vehicle.max_mass_kg),
        "F.2": _num(vehicle.service_mass_kg),
        "G": _num(vehicle.empty_mass_kg),
        "J": category_label,
        "K": "",  # the registry records no type-approval number yet
        "P.1": _num(vehicle.cylinder_cc),
        "P.2": _num(vehicle.power_kw),
        "P.3": energy_label,
        "P.6": _num(vehicle.fiscal_hp),
        "S.1": _num(vehicle.seats),
        "Z": " ; ".join(remarks),
    }


def payload_claims(number: str, fields: dict[str, str], holder: str, duplicate: bool) -> dict[str, Any]:
    """What the QR code proves, kept small so a phone reads it at carte grise size."""
    claims: dict[str, Any] = {"n": number, "pl": fields["A"], "vin": fields["E"], "h": holder, "d": fields["I"]}
    if duplicate:
        claims["dup"] = 1
    return claims


def _staff_reader(caller: Caller | None) -> bool:
    return caller is None or caller.can("documents:read")


def _visible(doc: Document, caller: Caller | None) -> bool:
    if _staff_reader(caller):
        return True
    assert caller is not None
    uid = caller.user_id
    return uid is not None and doc.owner_id == uid and doc.archived_at is None


class _Download:
    __slots__ = ("iterator", "remaining", "used")

    def __init__(self, iterator: AsyncIterator[bytes], remaining: int) -> None:
        self.iterator = iterator
        self.remaining = remaining
        self.used = time.monotonic()


class DocumentsActor(Audited, Actor):
    name = "documents"
    # Rendering runs in worker processes and storage I/O is awaited: several messages at once.
    # Correctness comes from the database (row locks, unique request and current-certificate indexes).
    concurrency = 8

    async def on_start(self) -> None:
        conf = self.settings.documents
        self.conf = conf
        self.storage: Storage = open_storage(self.settings)
        self.staging = (
            Path(conf.staging_dir).expanduser()
            if conf.staging_dir
            else self.settings.data_dir / "documents" / "staging"
        ).resolve()
        self.staging.mkdir(parents=True, exist_ok=True)
        self.ring = document_ring(self.settings)
        key_pem = self.ring.private_pem() if conf.pades else None
        cert_pem = conf.signing_cert.encode() if conf.signing_cert else None
        self.renderer = pdf.Renderer(conf.render_workers, key_pem, cert_pem)
        base = conf.verify_base_url or self.settings.server.public_url.rstrip("/") + "/verify/"
        self.verify_base = base if base.endswith("/") else base + "/"
        self.downloads: dict[UUID, _Download] = {}
        self._reaper = asyncio.create_task(self._reap_downloads(), name="documents:reaper")

    async def on_stop(self) -> None:
        self._reaper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reaper
        for ident in list(self.downloads):
            await self._close(ident)
        self.renderer.close()
        await self.storage.close()

    # --- types and seed ----------------------------------------------------------------------------

    @handler
    async def seed(self, msg: SeedDocuments, con: asyncpg.Connection) -> int:
        if msg.only_if_empty and await store.count_types(con):
            return 0
        return await seed_data.load(con)

    @handler
    async def list_types(self, msg: ListDocumentTypes, con: asyncpg.Connection) -> list[DocumentType]:
        return await store.list_types(con, msg.include_inactive)

    @handler
    async def get_type(self, msg: GetDocumentType, con: asyncpg.Connection) -> DocumentType:
        found = await store.get_type(con, msg.code)
        if found is None or found.issued or not found.active:
            raise NotFound(f"no document type {msg.code!r} can be uploaded", code="unknown_document_type")
        return found

    # --- uploads -----------------------------------------------------------------------------------

    def _staging_file(self, raw: str) -> Path:
        path = Path(raw).resolve()
        if path.parent != self.staging or not path.is_file():
            raise BadRequest("not an upload of this process", code="bad_staging_path")
        return path

    @handler
    async def store_upload(self, msg: StoreUpload) -> Document:
        path = self._staging_file(msg.staging_path)
        try:
            return await self._store_upload(msg, path)
        finally:
            path.unlink(missing_ok=True)  # stored (moved) or refused: the staging file never stays

    async def _store_upload(self, msg: StoreUpload, path: Path) -> Document:
        caller = msg.caller
        with path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
        actual = sniff(head)
        if actual is None or actual != msg.media_type:
            raise UnsupportedMediaType("the file is not a PDF, JPEG or PNG document", code="unsupported_media_type")
        size = path.stat().st_size
        if size != msg.size_bytes:
            raise BadRequest("the upload was cut short", code="incomplete_upload")
        staff = caller.can("documents:validate")
        owner_id = msg.owner_id or caller.user_id
        if owner_id is None:
            raise Invalid("owner_id: name the user this document belongs to", code="owner_required")
        if owner_id != caller.user_id and not staff:
            raise Forbidden("only staff may upload a document for another user", code="missing_permission")
        request_id, vehicle_id = msg.request_id, msg.vehicle_id
        async with self.db.connection() as con:
            kind = await store.get_type(con, msg.type_code)
            if kind is None or kind.issued or not kind.active:
                raise NotFound(f"no document type {msg.type_code!r} can be uploaded", code="unknown_document_type")
            if actual not in kind.media_types:
                raise UnsupportedMediaType(
                    f"a {kind.code} must be one of {', '.join(kind.media_types)}", code="unsupported_media_type"
                )
            if size > kind.max_bytes:
                raise PayloadTooLarge(f"a {kind.code} is at most {kind.max_bytes} bytes", code="payload_too_large")
            if msg.replaces_id is not None:
                old = await store.get_document(con, msg.replaces_id)
                if old is None or not _visible(old, caller) or old.archived_at is not None:
                    raise NotFound("no such document to replace", code="document_not_found")
                if old.type_code != kind.code or old.owner_id != owner_id:
                    raise Conflict("a replacement must have the same type and owner", code="replacement_mismatch")
                if old.replaced_by is not None or old.status not in ("pending", "rejected"):
                    raise Conflict("only a pending or rejected document can be replaced", code="not_replaceable")
                request_id = request_id or old.request_id
                vehicle_id = vehicle_id or old.vehicle_id
            if request_id is not None:
                req = await store.get_request(con, request_id)
                if req is not None and req.applicant_id != owner_id and not staff:
                    raise NotFound("no such registration request", code="request_not_found")
                if req is not None and req.completed_at is not None:
                    raise Conflict("this registration is completed; its documents are final", code="request_completed")
        document_id = uuid4()
        now = datetime.now(UTC)
        key = f"uploads/{now:%Y}/{now:%m}/{document_id}"
        await self.storage.put_file(key, path)
        try:
            async with self.db.transaction() as con:
                if msg.replaces_id is not None:
                    old = await store.get_document(con, msg.replaces_id, lock=True)
                    if old is None or old.replaced_by is not None:
                        raise Conflict("that document was replaced meanwhile", code="not_replaceable")
                await store.insert_document(
                    con,
                    id=document_id,
                    type_code=kind.code,
                    status="pending",
                    owner_id=owner_id,
                    request_id=request_id,
                    vehicle_id=vehicle_id,
                    filename=clean_filename(msg.filename),
                    media_type=actual,
                    size_bytes=size,
                    sha256=msg.sha256,
                    storage_key=key,
                    uploaded_by=caller.sub,
                    replaces_id=msg.replaces_id,
                )
                if msg.replaces_id is not None:
                    await store.mark_replaced(con, msg.replaces_id, document_id)
                await self.emit(
                    con,
                    DocumentUploaded(
                        document_id=document_id,
                        type_code=kind.code,
                        owner_id=owner_id,
                        request_id=request_id,
                        vehicle_id=vehicle_id,
                    ),
                )
                doc = await store.get_document(con, document_id)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.storage.delete(key)
            raise
        assert doc is not None
        return doc

    # --- reading, listing, archiving, deciding -----------------------------------------------------

    @handler
    async def get_document(self, msg: GetDocument, con: asyncpg.Connection) -> Document:
        doc = await store.get_document(con, msg.document_id)
        if doc is None or not _visible(doc, msg.caller):
            raise NotFound("no such document", code="document_not_found")
        return msgspec.structs.replace(doc, validations=tuple(await store.validations(con, doc.id)))

    @handler
    async def list_documents(self, msg: ListDocuments, con: asyncpg.Connection) -> DocumentPage:
        caller = msg.caller
        owner_id = msg.owner_id
        include_archived = msg.include_archived
        if not _staff_reader(caller):
            if caller.user_id is None:
                return DocumentPage(items=[])
            owner_id, include_archived = caller.user_id, False  # anyone else sees their own, whatever they ask
        items = await store.list_documents(
            con,
            owner_id=owner_id,
            request_id=msg.request_id,
            vehicle_id=msg.vehicle_id,
            type_code=msg.type_code,
            status=msg.status,
            include_archived=include_archived,
            after=decode_cursor(msg.cursor, datetime, UUID),
            limit=msg.limit + 1,
        )
        return page(DocumentPage, items, msg.limit, lambda d: (d.created_at, d.id))

    @handler
    async def archive_document(self, msg: ArchiveDocument, con: asyncpg.Connection) -> Document:
        doc = await store.get_document(con, msg.document_id, lock=True)
        caller = msg.caller
        staff = caller.can("documents:validate")
        if doc is None or not (staff or _visible(doc, caller)):
            raise NotFound("no such document", code="document_not_found")
        if doc.archived_at is not None:
            return doc
        if doc.status == "issued":
            raise Conflict("a document issued by SIMVEB cannot be deleted", code="issued_document")
        if doc.request_id is not None:
            req = await store.get_request(con, doc.request_id)
            if req is not None and req.completed_at is not None:
                raise Conflict(
                    "this document supports a completed registration and is kept", code="supports_completed_request"
                )
        await store.archive(con, doc.id, caller.sub)
        await self.audit(con, caller, doc.id, "document_archived", type=doc.type_code, status=doc.status)
        found = await store.get_document(con, doc.id)
        assert found is not None
        return found

    @handler
    async def decide(self, msg: DecideDocument, con: asyncpg.Connection) -> Document:
        caller = msg.caller
        if not caller.can("documents:validate"):
            raise Forbidden("needs permission documents:validate", code="missing_permission")
        doc = await store.get_document(con, msg.document_id, lock=True)
        if doc is None or doc.archived_at is not None:
            raise NotFound("no such document", code="document_not_found")
        if doc.status != "pending" or doc.replaced_by is not None:
            raise Conflict(f"this document is {doc.status}; only a pending one is decided", code="not_pending")
        reason = msg.reason.strip()
        if msg.decision == "reject" and not reason:
            raise Invalid("reason: say why the document is rejected", code="reason_required")
        decision = "approved" if msg.decision == "approve" else "rejected"
        await store.add_validation(con, doc.id, decision, reason, caller.sub)
        await store.set_status(con, doc.id, "validated" if decision == "approved" else "rejected")
        await self.audit(
            con, caller, doc.id, f"document_{decision}", type=doc.type_code, request_id=doc.request_id, reason=reason
        )
        if decision == "approved":
            event: Any = DocumentValidated(
                document_id=doc.id,
                type_code=doc.type_code,
                owner_id=doc.owner_id,
                request_id=doc.request_id,
                by=caller.sub,
            )
        else:
            kind = await store.get_type(con, doc.type_code)
            event = DocumentRejected(
                document_id=doc.id,
                type_code=doc.type_code,
                type_label=kind.label_fr if kind else doc.type_code,
                owner_id=doc.owner_id,
                request_id=doc.request_id,
                reason=reason,
                by=caller.sub,
            )
        await self.emit(con, event)
        found = await store.get_document(con, doc.id)
        assert found is not None
        return msgspec.structs.replace(found, validations=tuple(await store.validations(con, doc.id)))

    @handler
    async def check_required(self, msg: CheckRequiredDocuments, con: asyncpg.Connection) -> RequiredDocuments:
        required = list(dict.fromkeys(msg.required))
        found = await store.live_for_request(con, msg.request_id, required, msg.applicant_id)
        missing = tuple(t for t in required if t not in found)
        pending = tuple(t for t in required if found.get(t) == "pending")
        rejected = tuple(t for t in required if found.get(t) == "rejected")
        return RequiredDocuments(
            complete=not (missing or pending or rejected), missing=missing, pending=pending, rejected=rejected
        )

    # --- downloads ---------------------------------------------------------------------------------

    @handler
    async def open_download(self, msg: OpenDownload) -> DownloadOpened:
        async with self.db.connection() as con:
            doc = await store.get_document(con, msg.document_id)
            if doc is None or not _visible(doc, msg.caller):
                raise NotFound("no such document", code="document_not_found")
            key = await store.storage_key(con, doc.id)
        total = doc.size_bytes
        partial = msg.start is not None or msg.suffix is not None
        start, end = 0, total - 1
        if msg.suffix is not None:
            if msg.suffix <= 0 or total == 0:
                raise RangeNotSatisfiable(f"the document has {total} bytes", size=total)
            start = max(0, total - msg.suffix)
        elif msg.start is not None:
            if msg.start >= total:
                raise RangeNotSatisfiable(f"the document has {total} bytes", size=total)
            start = msg.start
            end = total - 1 if msg.end is None else min(msg.end, total - 1)
            if end < start:
                raise RangeNotSatisfiable("the range ends before it starts", size=total)
        ident = uuid4()
        length = end - start + 1
        iterator = self.storage.read(key, start, end, self.conf.chunk_bytes) if length > 0 else _empty()
        self.downloads[ident] = _Download(iterator, length)
        return DownloadOpened(download_id=ident, document=doc, start=start, end=end, total=total, partial=partial)

    @handler
    async def read_download(self, msg: ReadDownload) -> Chunk:
        dl = self.downloads.get(msg.download_id)
        if dl is None:
            raise NotFound("no such open download (closed or expired)", code="download_not_found")
        dl.used = time.monotonic()
        if dl.remaining <= 0:
            await self._close(msg.download_id)
            return Chunk(data=b"", done=True)
        try:
            data = await anext(dl.iterator)
        except StopAsyncIteration:
            await self._close(msg.download_id)
            raise Unavailable("the stored file is shorter than recorded", code="storage_truncated") from None
        except BaseException:
            await self._close(msg.download_id)
            raise
        dl.remaining -= len(data)
        done = dl.remaining <= 0
        if done:
            await self._close(msg.download_id)
        return Chunk(data=data, done=done)

    @handler
    async def close_download(self, msg: CloseDownload) -> None:
        await self._close(msg.download_id)

    async def _close(self, ident: UUID) -> None:
        dl = self.downloads.pop(ident, None)
        if dl is not None:
            aclose = getattr(dl.iterator, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def _reap_downloads(self) -> None:
        while True:
            await asyncio.sleep(min(10.0, self.conf.download_idle_timeout_s))
            limit = time.monotonic() - self.conf.download_idle_timeout_s
            for ident, dl in list(self.downloads.items()):
                if dl.used < limit:
                    await self._close(ident)

    # --- certificates ------------------------------------------------------------------------------

    @handler
    async def on_submitted(self, event: RegistrationSubmitted, con: asyncpg.Connection) -> None:
        await store.upsert_request(con, event.request_id, event.number, event.applicant_id, completed=False)

    @handler
    async def on_validated(self, event: RegistrationValidated) -> None:
        """Issue the carte grise of a validated registration (idempotent by request)."""
        async with self.db.transaction() as con:
            await store.upsert_request(con, event.request_id, event.number, event.applicant_id, completed=True)
        await self._issue(
            by="system",
            vehicle_id=event.vehicle_id,
            request_id=event.request_id,
            request_number=event.number,
            owner_id=event.applicant_id,
            holder_ids=tuple(event.holder_ids),
            plate=event.plate,
            first_registration=event.first_registration_date,
            duplicate=event.duplicate,
            reason="duplicate" if event.duplicate else event.procedure,
            issued_at=event.validated_at,
        )

    @handler
    async def issue(self, msg: IssueCertificate) -> Certificate:
        if not msg.caller.can("documents:issue"):
            raise Forbidden("needs permission documents:issue", code="missing_permission")
        return await self._issue(
            by=msg.caller.sub,
            vehicle_id=msg.vehicle_id,
            request_id=msg.request_id,
            request_number=None,
            owner_id=None,
            holder_ids=msg.holder_ids,
            plate=None,
            first_registration=None,
            duplicate=msg.duplicate,
            reason=msg.reason or ("duplicate" if msg.duplicate else "reissue"),
            issued_at=None,
        )

    async def _issue(
        self,
        *,
        by: str,
        vehicle_id: UUID,
        request_id: UUID | None,
        request_number: str | None,
        owner_id: UUID | None,
        holder_ids: tuple[UUID, ...],
        plate: str | None,
        first_registration: date | None,
        duplicate: bool,
        reason: str,
        issued_at: datetime | None,
    ) -> Certificate:
        if request_id is not None:
            async with self.db.connection() as con:
                existing = await store.certificate_for_request(con, request_id)
            if existing is not None:
                return self._certificate(existing)
        # Read what is printed from its owners, without holding a connection.
        vehicle = await self.bus.ask(GetVehicle(vehicle_id=vehicle_id))
        holders_ids = holder_ids or tuple(vehicle.owners)
        if not holders_ids:
            raise Invalid("the vehicle has no holder to print on the certificate", code="no_holder")
        holders = [await self.bus.ask(GetProfile(user_id=h, caller=SYSTEM)) for h in holders_ids]
        plate = plate or vehicle.plate
        if not plate:
            raise Invalid("the vehicle has no plate yet", code="no_plate")
        categories = {c.code: c.label for c in await self.bus.ask(ListCategories())}
        energies = {e.code: e.label for e in await self.bus.ask(ListEnergies())}
        at = (issued_at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        number = new_certificate_number(at)
        fields = certificate_fields(
            vehicle=vehicle,
            plate=plate,
            holders=holders,
            issued_at=at,
            first_registration=first_registration,
            category_label=categories.get(vehicle.category, vehicle.category),
            energy_label=energies.get(vehicle.energy, vehicle.energy),
            duplicate=duplicate,
            request_number=request_number,
        )
        holder = " et ".join(holder_name(p) for p in holders)
        payload = self.ring.sign(payload_claims(number, fields, holder, duplicate), typ=CERTIFICATE_TYP)
        data = await self.renderer.certificate(fields, number, self._qr_text(number, payload), duplicate)
        key = f"certificates/{at:%Y}/{number}.pdf"
        await self.storage.put_bytes(key, data)
        document_id = uuid4()
        try:
            async with self.db.transaction() as con:
                await store.lock_vehicle_certificates(con, vehicle_id)
                if request_id is not None:
                    existing = await store.certificate_for_request(con, request_id)
                    if existing is not None:  # issued meanwhile by a redelivery: keep that one
                        await self.storage.delete(key)
                        return self._certificate(existing)
                current = await store.current_certificate(con, vehicle_id, lock=True)
                await store.insert_document(
                    con,
                    id=document_id,
                    type_code="issued_certificate",
                    status="issued",
                    owner_id=owner_id or holders_ids[0],
                    request_id=request_id,
                    vehicle_id=vehicle_id,
                    filename=f"carte-grise-{clean_filename(plate.replace(' ', '-'))}.pdf",
                    media_type="application/pdf",
                    size_bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    storage_key=key,
                    uploaded_by=by,
                )
                if current is not None:
                    await store.replace_certificate(con, current.number, number, reason)
                await store.insert_certificate(
                    con,
                    number=number,
                    document_id=document_id,
                    vehicle_id=vehicle_id,
                    request_id=request_id,
                    holder_ids=list(holders_ids),
                    plate=plate,
                    vin=vehicle.vin,
                    holder=holder,
                    duplicate=duplicate,
                    issued_at=at,
                    issued_by=by,
                    fields=fields,
                    payload=payload,
                )
                await self.emit(
                    con,
                    CertificateIssued(
                        number=number,
                        document_id=document_id,
                        vehicle_id=vehicle_id,
                        request_id=request_id,
                        holder_ids=tuple(holders_ids),
                        plate=plate,
                        duplicate=duplicate,
                        replaced=current.number if current is not None else None,
                    ),
                )
                # Last: the chain's head is the last lock this transaction takes.
                await self.audit(
                    con,
                    by,
                    document_id,
                    "certificate_issued",
                    number=number,
                    vehicle_id=vehicle_id,
                    request_id=request_id,
                    plate=plate,
                    duplicate=duplicate,
                    replaces=current.number if current is not None else None,
                )
                row = await store.certificate(con, number)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.storage.delete(key)
            raise
        log.info("certificate %s issued for vehicle %s", number, vehicle_id)
        return self._certificate(row)

    def _qr_text(self, number: str, payload: str) -> str:
        # A URL, so a phone camera opens the verification page; the signed payload rides along for
        # offline checks (the server never needs it to answer, but verifies it when sent).
        return f"{self.verify_base}{number}?p={payload}"

    def _certificate(self, row: store.CertificateRow) -> Certificate:
        return Certificate(
            number=row.number,
            document_id=row.document_id,
            vehicle_id=row.vehicle_id,
            request_id=row.request_id,
            plate=row.plate,
            vin=row.vin,
            holder=row.holder,
            duplicate=row.duplicate,
            issued_at=row.issued_at,
            status="replaced" if row.replaced_at is not None else "current",
            replaced_by=row.replaced_by,
            replaced_at=row.replaced_at,
            replaced_reason=row.replaced_reason,
            payload=row.payload,
            verify_url=self._qr_text(row.number, row.payload),
            fields={k: v for k, v in row.fields.items() if "." not in k or k[-1].isdigit()},
        )

    @handler
    async def get_certificate(self, msg: GetCertificate, con: asyncpg.Connection) -> Certificate:
        row = await store.certificate(con, msg.number)
        if row is None:
            raise NotFound("no such certificate", code="certificate_not_found")
        if msg.caller is not None and not msg.caller.can("documents:read"):
            uid = msg.caller.user_id
            if uid is None or uid not in row.holder_ids:
                raise NotFound("no such certificate", code="certificate_not_found")
        return self._certificate(row)

    @handler
    async def verify(self, msg: VerifyCertificate, con: asyncpg.Connection) -> Verification:
        number = msg.number.strip().upper()
        row = await store.certificate(con, number) if NUMBER.match(number) else None
        if row is None:
            return Verification(number=number, found=False)
        fields = row.fields
        signature, detail = "absent", ""
        if msg.payload:
            signature, detail = self._check_payload(msg.payload, row)
        return Verification(
            number=number,
            found=True,
            status="replaced" if row.replaced_at is not None else "current",
            plate=row.plate,
            vin=row.vin,
            holder=row.holder,
            make=fields.get("D.1"),
            model=fields.get("D.2"),
            issued_on=row.issued_at.date(),
            duplicate=row.duplicate,
            replaced_by=row.replaced_by,
            replaced_at=row.replaced_at,
            signature=signature,  # type: ignore[arg-type]
            signature_detail=detail,
        )

    def _check_payload(self, payload: str, row: store.CertificateRow) -> tuple[str, str]:
        try:
            header = jwt.get_unverified_header(payload)
        except jwt.PyJWTError:
            return "invalid", "not a signed SIMVEB payload"
        key = self.ring.public.get(str(header.get("kid", "")))
        if header.get("alg") != ALGORITHM or header.get("typ") != CERTIFICATE_TYP or key is None:
            return "invalid", "not signed by a SIMVEB document key"
        try:
            claims = jwt.decode(payload, key, algorithms=[ALGORITHM], options={"verify_aud": False})
        except jwt.PyJWTError:
            return "invalid", "the signature does not match the data"
        expected = payload_claims(row.number, row.fields, row.holder, row.duplicate)
        if claims != expected:
            return "invalid", "signed by SIMVEB but for other data than this certificate"
        return "valid", "signed by SIMVEB and identical to the certificate on record"

    @handler
    async def document_keys(self, msg: GetDocumentKeys) -> DocumentKeys:
        return DocumentKeys(keys=self.ring.jwks()["keys"])

    # --- receipts ----------------------------------------------------------------------------------

    @handler
    async def generate_receipt(self, msg: GenerateReceipt) -> Receipt:
        caller = msg.caller
        async with self.db.connection() as con:
            row = await store.receipt(con, msg.invoice_id)
        if row is not None:
            if not (caller.can("documents:issue") or caller.user_id == row.payer_id):
                raise NotFound("no such invoice", code="invoice_not_found")
            return row
        if not self.bus.handles(GetInvoice):
            raise Unavailable("the payments service is not running in this process", code="payments_unavailable")
        invoice = await self.bus.ask(GetInvoice(invoice_id=msg.invoice_id))
        if not (caller.can("documents:issue") or caller.user_id == invoice.payer_id):
            raise NotFound("no such invoice", code="invoice_not_found")
        payer = await self.bus.ask(GetProfile(user_id=invoice.payer_id, caller=SYSTEM))
        at = invoice.issued_at.astimezone(UTC).replace(microsecond=0)
        claims = {"inv": invoice.number, "amt": invoice.total_xof, "d": at.date().isoformat()}
        data = {
            "invoice_number": invoice.number,
            "reference": invoice.reference,
            "payer": holder_name(payer),
            "issued_at": at.isoformat(),
            "issued_on": _fmt_date(at.date()),
            "provider": invoice.provider,
            "provider_reference": invoice.provider_reference,
            "lines": [msgspec.to_builtins(line) for line in invoice.lines],
            "total_xof": invoice.total_xof,
            "qr_text": self.ring.sign(claims, typ=RECEIPT_TYP),
        }
        rendered = await self.renderer.receipt(data)
        document_id = uuid4()
        key = f"receipts/{at:%Y}/{clean_filename(invoice.number)}-{document_id.hex[:8]}.pdf"
        await self.storage.put_bytes(key, rendered)
        try:
            async with self.db.transaction() as con:
                row = await store.receipt(con, msg.invoice_id)
                if row is not None:
                    await self.storage.delete(key)
                    return row
                await store.insert_document(
                    con,
                    id=document_id,
                    type_code="issued_receipt",
                    status="issued",
                    owner_id=invoice.payer_id,
                    filename=f"recu-{clean_filename(invoice.number)}.pdf",
                    media_type="application/pdf",
                    size_bytes=len(rendered),
                    sha256=hashlib.sha256(rendered).hexdigest(),
                    storage_key=key,
                    uploaded_by=caller.sub,
                )
                await store.insert_receipt(con, invoice.id, invoice.number, document_id, invoice.payer_id, at)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.storage.delete(key)
            raise
        return Receipt(
            invoice_id=invoice.id,
            invoice_number=invoice.number,
            document_id=document_id,
            payer_id=invoice.payer_id,
            issued_at=at,
        )


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator
