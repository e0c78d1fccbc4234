"""Benchmark: certificates issued per second through the documents actor, and 2 MB uploads per second.

In the same run:
- certificates through the actor: `IssueCertificate` asks (vehicle and holder asked of their actors,
  QR payload signed, page rendered and PAdES-signed in the worker processes, stored, recorded with
  the replaced certificate), several in flight; against fpdf2 rendering the same page directly in
  this process (no signature, no storage, no database);
- uploads: `POST /api/documents/upload` of a 2 MB PDF through the application (multipart parsed as
  it streams, sniffed, hashed, staged, moved into local storage, recorded); against a plain copy of
  the same file on the same disk (shutil.copyfile).

Runs on the embedded PostgreSQL, or on the server named by SIMVEB_TEST_DATABASE_URL (a scratch
database is created and dropped).

Run it from a clean clone, with the project's `bench` extra:

    pip install -e ".[bench]" && python bench/documents.py [--certificates 40] [--uploads 100]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from common import database  # bench/common.py

from simveb.actors.documents import pdf
from simveb.actors.documents.messages import IssueCertificate, SeedDocuments
from simveb.actors.users.messages import SYSTEM, CreateUser, SeedUsers
from simveb.actors.vehicles.messages import RegisterVehicle, SeedVehicles, VehicleFields
from simveb.config import Settings, with_overrides
from simveb.http.app import create_app
from simveb.messages import Caller
from simveb.runtime import Runtime

MB = 1024 * 1024


def two_mb_pdf() -> bytes:
    from fpdf import FPDF

    doc = FPDF()
    doc.add_page()
    doc.set_font("Helvetica", size=12)
    doc.cell(text="scan")
    data = bytes(doc.output())
    return data + b"%" + b"0" * (2 * MB - len(data) - 1)


async def certificates(rt: Runtime, count: int, in_flight: int) -> tuple[float, dict[str, str], str, str]:
    assert rt.bus is not None
    user = await rt.bus.ask(
        CreateUser(
            caller=SYSTEM,
            kind="person",
            roles=["citizen"],
            npi="0000000042",
            phone="+2290100000042",
            last_name="Dossou",
            first_name="Koffi",
        )
    )
    fields = VehicleFields(
        make="Toyota",
        model="Corolla",
        energy="essence",
        category="four_wheels_plus",
        cylinder_cc=1598,
        power_kw=97,
        fiscal_hp=8,
        seats=5,
    )
    car = await rt.bus.ask(
        RegisterVehicle(vin="JTDBR32E000000042", fields=fields, owners=[user.id], plate="AB 0042 RB", by="bench")
    )
    staff = Caller(sub="bench", permissions=frozenset({"documents:issue"}))
    await rt.bus.ask(IssueCertificate(caller=staff, vehicle_id=car.id), timeout=120)  # start the workers
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    last = None

    async def worker() -> None:
        nonlocal last
        while not queue.empty():
            queue.get_nowait()
            last = await rt.bus.ask(IssueCertificate(caller=staff, vehicle_id=car.id, duplicate=True), timeout=120)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    assert last is not None
    return count / elapsed, dict(last.fields), last.number, last.verify_url


def direct_rendering(fields: dict[str, str], number: str, qr: str, count: int) -> float:
    fields = {**fields, "I.iso": "2026-12-02T10:00:00+00:00"}
    pdf.certificate_pdf(fields, number, qr, duplicate=True)
    started = time.perf_counter()
    for _ in range(count):
        pdf.certificate_pdf(fields, number, qr, duplicate=True)
    return count / (time.perf_counter() - started)


async def uploads(rt: Runtime, settings: Settings, count: int, content: bytes) -> float:
    assert rt.keys is not None
    app = create_app(settings, runtime=rt)
    now = int(time.time())
    token = rt.keys.sign(
        {
            "iss": settings.security.issuer,
            "aud": settings.security.audience,
            "sub": str(uuid.uuid4()),
            "iat": now,
            "exp": now + 3600,
            "jti": uuid.uuid4().hex,
        }
    )
    headers = {"Authorization": f"Bearer {token}"}
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        # The multipart body is built once: the client's own encoding is not what is measured.
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="type"\r\n\r\npurchase_invoice\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="invoice.pdf"\r\n'
                "Content-Type: application/pdf\r\n\r\n"
            ).encode()
            + content
            + f"\r\n--{boundary}--\r\n".encode()
        )
        posted = {**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}

        async def one() -> None:
            r = await client.post("/api/documents/upload", content=body, headers=posted)
            assert r.status_code == 201, r.text

        await one()
        started = time.perf_counter()
        for _ in range(count):
            await one()
        return count / (time.perf_counter() - started)


def file_copies(source: Path, folder: Path, count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        shutil.copyfile(source, folder / f"copy-{i}")
    return count / (time.perf_counter() - started)


async def run(args: argparse.Namespace, url: str, scratch: Path) -> str:
    settings = with_overrides(
        Settings(),
        server={"data_dir": str(scratch / "data"), "log_level": "WARNING"},
        database={"url": url, "migrate_on_start": False},
        ratelimit={"enabled": False},
        documents={"render_workers": args.workers},
    )
    rt = Runtime(settings)
    await rt.start(migrate_first=False, seed_if_empty=False)
    try:
        assert rt.bus is not None
        for seed in (SeedDocuments(), SeedUsers(), SeedVehicles()):
            await rt.bus.ask(seed, timeout=120)
        actor_rate, fields, number, qr = await certificates(rt, args.certificates, args.in_flight)
        direct_rate = direct_rendering(fields, number, qr, args.certificates)
        content = two_mb_pdf()
        upload_rate = await uploads(rt, settings, args.uploads, content)
    finally:
        await rt.stop()
    source = scratch / "source.pdf"
    source.write_bytes(content)
    (scratch / "copies").mkdir()
    copy_rate = file_copies(source, scratch / "copies", args.uploads)
    print(f"certificates through the actor (render+sign+store, {args.in_flight} in flight): {actor_rate:.1f}/s")
    print(f"fpdf2 rendering the same page directly (one process, unsigned): {direct_rate:.1f}/s")
    print(f"2 MB uploads through POST /api/documents/upload: {upload_rate:.1f}/s")
    print(f"plain copies of the same file (shutil.copyfile): {copy_rate:.1f}/s")
    return (
        f"bench documents: certificates_per_s={actor_rate:.1f} direct_render_per_s={direct_rate:.1f}"
        f" certificate_ratio={actor_rate / direct_rate:.2f} uploads_per_s={upload_rate:.1f}"
        f" copies_per_s={copy_rate:.1f} upload_ratio={upload_rate / copy_rate:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--certificates", type=int, default=40)
    parser.add_argument("--uploads", type=int, default=100)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="render worker processes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        with database(scratch / "pg") as url:
            line = asyncio.run(run(args, url, scratch))
    print(line)


if __name__ == "__main__":
    main()
