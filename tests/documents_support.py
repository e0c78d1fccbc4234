"""Helpers of the documents tests: sample files, uploads over HTTP, a holder and a vehicle, and a
validated registration emitted through the outbox as the registrations service would."""

from __future__ import annotations

import io
import itertools
import uuid
from datetime import UTC, date, datetime
from typing import Any

import httpx

from simveb.actors.documents.messages import SeedDocuments
from simveb.actors.registrations.messages import RegistrationValidated
from simveb.actors.users.messages import SYSTEM, Address, ProfileFields, SeedUsers, UpdateProfile, User
from simveb.actors.vehicles.messages import RegisterVehicle, SeedVehicles, Vehicle, VehicleFields
from simveb.outbox import emit
from simveb.runtime import Runtime
from tests.users_support import make_user

_serial = itertools.count(1)


def png_bytes(width: int = 40, height: int = 30) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 80)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def pdf_bytes(text: str = "scan", pad: int = 0) -> bytes:
    from fpdf import FPDF

    doc = FPDF()
    doc.add_page()
    doc.set_font("Helvetica", size=12)
    doc.cell(text=text)
    data = bytes(doc.output())
    return data + b"%" + b"0" * pad if pad else data


SAMPLES = {"application/pdf": ("scan.pdf", pdf_bytes), "image/png": ("photo.png", png_bytes)}
SAMPLES["image/jpeg"] = ("photo.jpg", jpeg_bytes)


async def prepare(runtime: Runtime) -> None:
    """Document types, roles and the vehicle catalogue."""
    assert runtime.bus is not None
    await runtime.bus.ask(SeedDocuments())
    await runtime.bus.ask(SeedUsers())
    await runtime.bus.ask(SeedVehicles())


async def upload(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    content: bytes,
    *,
    type_code: str = "owner_identity",
    filename: str = "scan.pdf",
    content_type: str = "application/pdf",
    **fields: Any,
) -> httpx.Response:
    data = {"type": type_code, **{k: str(v) for k, v in fields.items() if v is not None}}
    return await client.post(
        "/api/documents/upload", data=data, files={"file": (filename, content, content_type)}, headers=headers
    )


async def holder(runtime: Runtime, last: str = "Dossou", first: str = "Koffi") -> User:
    """A citizen with a postal address (printed on the carte grise)."""
    assert runtime.bus is not None
    user = await make_user(runtime, "citizen", last_name=last, first_name=first)
    await runtime.bus.ask(
        UpdateProfile(
            user_id=user.id,
            caller=SYSTEM,
            fields=ProfileFields(address=Address(line1="Lot 12, rue 245", city="Cotonou", department="Littoral")),
        )
    )
    return user


async def vehicle(runtime: Runtime, owners: list[uuid.UUID], plate: str | None = None) -> Vehicle:
    assert runtime.bus is not None
    n = next(_serial)
    fields = VehicleFields(
        make="Toyota",
        model="Corolla",
        commercial_name="Corolla 1.6 VVT-i",
        energy="essence",
        category="four_wheels_plus",
        year=2019,
        colour="Gris",
        cylinder_cc=1598,
        power_kw=97,
        fiscal_hp=8,
        seats=5,
        max_mass_kg=1760,
        service_mass_kg=1350,
        empty_mass_kg=1275,
        first_registration_date=date(2019, 3, 14),
    )
    return await runtime.bus.ask(
        RegisterVehicle(vin=f"JTDBR32E{n:09d}", fields=fields, owners=owners, plate=plate, by="test")
    )


async def validated(
    runtime: Runtime,
    *,
    vehicle_id: uuid.UUID,
    applicant_id: uuid.UUID,
    holder_ids: tuple[uuid.UUID, ...],
    plate: str,
    request_id: uuid.UUID | None = None,
    procedure: str = "first_registration",
    duplicate: bool = False,
    replaces_previous: bool = False,
) -> uuid.UUID:
    """Emit RegistrationValidated through the outbox, in a transaction, as registrations does."""
    assert runtime.db is not None
    request_id = request_id or uuid.uuid4()
    event = RegistrationValidated(
        request_id=request_id,
        number=f"IMM-2026-{next(_serial):06d}",
        procedure=procedure,
        vehicle_id=vehicle_id,
        applicant_id=applicant_id,
        holder_ids=holder_ids,
        plate=plate,
        first_registration_date=date(2019, 3, 14),
        duplicate=duplicate,
        replaces_previous=replaces_previous,
        validated_at=datetime.now(UTC),
    )
    async with runtime.db.transaction() as con:
        await emit(con, event, source="registrations")
    return request_id


async def certificate_of(runtime: Runtime, request_id: uuid.UUID) -> str | None:
    assert runtime.db is not None
    async with runtime.db.connection() as con:
        return await con.fetchval("SELECT number FROM documents.certificates WHERE request_id = $1", request_id)
