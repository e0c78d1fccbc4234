"""The carte grise: issued from a validated registration, its text read back from the PDF, its QR code
decoded from a rendering of the page and verified offline against the published key (JWKS), a
tampered payload refused, a replaced certificate shown as replaced, the PDF's own signature, the
verification page in a real browser, and rendering that gives the same bytes for the same data."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest

from simveb.actors.documents import pdf
from tests.documents_support import certificate_of, holder, prepare, validated, vehicle
from tests.support import wait_for

STAFF = ("documents:read", "documents:validate", "documents:issue")


@pytest.fixture
async def api(runtime: Any, client: Any) -> Any:
    await prepare(runtime)
    return client


def pdf_text(data: bytes) -> str:
    from pypdf import PdfReader

    return "\n".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(data)).pages)


def qr_of(data: bytes) -> str:
    """Render the first page (as a printer would) and decode the QR code found on it."""
    import pypdfium2
    import zxingcpp

    document = pypdfium2.PdfDocument(data)
    image = document[0].render(scale=300 / 72).to_pil()  # 300 dpi
    found = zxingcpp.read_barcodes(image)
    assert len(found) == 1, f"expected one QR code on the page, found {len(found)}"
    return found[0].text


def verify_offline(payload: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """What a verifier with only the published keys does: pick the key by kid, check the signature."""
    header = jwt.get_unverified_header(payload)
    jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    key = jwt.PyJWK(jwk, algorithm="EdDSA")
    return jwt.decode(payload, key, algorithms=["EdDSA"])


def tamper(payload: str, **changes: Any) -> str:
    head, body, sig = payload.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{sig}"


async def issue(runtime: Any, **kwargs: Any) -> tuple[str, uuid.UUID]:
    request_id = await validated(runtime, **kwargs)
    number = await wait_for(lambda: certificate_of(runtime, request_id), timeout=60)
    return number, request_id


async def test_a_validated_registration_yields_a_verifiable_carte_grise(
    runtime: Any, api: Any, auth: Any, tmp_path: Path
) -> None:
    owner = await holder(runtime, last="Houngbédji", first="Aïcha")
    car = await vehicle(runtime, [owner.id])
    number, request_id = await issue(
        runtime, vehicle_id=car.id, applicant_id=owner.id, holder_ids=(owner.id,), plate="BJ 4521 RB"
    )
    me = auth(sub=str(owner.id))
    cert = (await api.get(f"/api/documents/certificates/{number}", headers=me)).json()
    assert cert["status"] == "current" and cert["plate"] == "BJ 4521 RB" and cert["request_id"] == str(request_id)
    r = await api.get(f"/api/documents/{cert['document_id']}/download", headers=me)
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    data = r.content
    (tmp_path / "carte-grise.pdf").write_bytes(data)

    text = pdf_text(data)
    for expected in ("CERTIFICAT D'IMMATRICULATION", number, "BJ 4521 RB", car.vin, "HOUNGBÉDJI Aïcha", "Cotonou",
                     "Toyota", "Corolla", "1598", "97", "Essence", "Quatre roues et plus", "1275", "14/03/2019"):  # fmt: skip
        assert expected in text, f"{expected!r} not printed"
    for code in ("A", "B", "I", "C.1", "D.1", "D.2", "D.3", "E", "F.1", "F.2", "G", "J", "K", "P.1", "P.2", "P.3",
                 "P.6", "S.1", "Z"):  # fmt: skip
        assert f"\n{code} " in "\n" + text or f"{code}" in text.split(), f"field {code} missing"
    assert "DUPLICATA" not in text

    scanned = qr_of(data)
    url = urlsplit(scanned)
    assert url.path.endswith(f"/verify/{number}")
    payload = parse_qs(url.query)["p"][0]
    jwks = (await api.get("/api/auth/.well-known/jwks.json")).json()
    claims = verify_offline(payload, jwks)
    assert claims == {
        "n": number,
        "pl": "BJ 4521 RB",
        "vin": car.vin,
        "h": "HOUNGBÉDJI Aïcha",
        "d": cert["fields"]["I"],
    }
    assert len(scanned) < 600  # small enough for a phone camera at carte grise size

    # one changed field: the signature no longer holds, offline and online
    forged = tamper(payload, pl="BJ 9999 RB")
    with pytest.raises(jwt.InvalidSignatureError):
        verify_offline(forged, jwks)
    online = (await api.get(f"/verify/{number}", params={"p": forged, "format": "json"})).json()
    assert online["signature"] == "invalid"
    online = (await api.get(f"/verify/{number}", params={"p": payload}, headers={"Accept": "application/json"})).json()
    assert online["signature"] == "valid" and online["status"] == "current" and online["plate"] == "BJ 4521 RB"
    # the access-token key cannot sign a certificate: same claims signed with it are refused
    token_signed = runtime.keys.sign(claims, typ="simveb-cg+jwt")
    online = (await api.get(f"/verify/{number}", params={"p": token_signed, "format": "json"})).json()
    assert online["signature"] == "invalid"
    assert (await api.get("/verify/CG-2026-0000000000", params={"format": "json"})).status_code == 404

    # a redelivered event changes nothing
    async with runtime.db.connection() as con:
        assert await con.fetchval("SELECT count(*) FROM documents.certificates") == 1


async def test_a_duplicate_replaces_the_certificate_and_the_old_one_shows_replaced(
    runtime: Any, api: Any, auth: Any
) -> None:
    owner = await holder(runtime)
    car = await vehicle(runtime, [owner.id], plate="AC 0042 RB")
    first, _ = await issue(
        runtime, vehicle_id=car.id, applicant_id=owner.id, holder_ids=(owner.id,), plate="AC 0042 RB"
    )
    second, _ = await issue(runtime, vehicle_id=car.id, applicant_id=owner.id, holder_ids=(owner.id,),
                            plate="AC 0042 RB", procedure="duplicate", duplicate=True, replaces_previous=True)  # fmt: skip
    old = (await api.get(f"/verify/{first}", headers={"Accept": "application/json"})).json()
    assert old["status"] == "replaced" and old["replaced_by"] == second
    new = (await api.get(f"/verify/{second}", headers={"Accept": "application/json"})).json()
    assert new["status"] == "current" and new["duplicate"] is True
    page = await api.get(f"/verify/{first}")
    assert page.headers["content-type"].startswith("text/html") and "Certificat remplacé" in page.text
    assert second in page.text
    staff = auth(*STAFF, sub="agent-1")
    cert = (await api.get(f"/api/documents/certificates/{second}", headers=staff)).json()
    data = (await api.get(f"/api/documents/{cert['document_id']}/download", headers=staff)).content
    assert "DUPLICATA" in pdf_text(data)
    # on demand, by staff: a re-issue replaces the duplicate in turn
    r = await api.post("/api/documents/generate-certificate", json={"vehicle_id": str(car.id)}, headers=staff)
    assert r.status_code == 201, r.text
    third = r.json()["number"]
    assert (await api.get(f"/verify/{second}", params={"format": "json"})).json()["replaced_by"] == third
    citizen = auth(sub=str(owner.id))
    r = await api.post("/api/documents/generate-certificate", json={"vehicle_id": str(car.id)}, headers=citizen)
    assert r.status_code == 403
    # an issued document cannot be deleted, even by its holder
    r = await api.delete(f"/api/documents/{cert['document_id']}", headers=citizen)
    assert r.status_code == 409


async def test_the_pdf_carries_a_pades_signature_by_the_document_key(runtime: Any, api: Any, auth: Any) -> None:
    from asn1crypto import pem
    from asn1crypto import x509 as asn1_x509
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.validation import async_validate_pdf_signature
    from pyhanko_certvalidator import ValidationContext

    from simveb.keys import document_ring

    owner = await holder(runtime)
    car = await vehicle(runtime, [owner.id])
    number, _ = await issue(runtime, vehicle_id=car.id, applicant_id=owner.id, holder_ids=(owner.id,), plate="AD 7 RB")
    staff = auth(*STAFF, sub="agent-1")
    cert = (await api.get(f"/api/documents/certificates/{number}", headers=staff)).json()
    data = (await api.get(f"/api/documents/{cert['document_id']}/download", headers=staff)).content
    ring = document_ring(runtime.settings)
    _, _, der = pem.unarmor(pdf.self_signed_certificate(ring.private_pem()))
    root = asn1_x509.Certificate.load(der)
    signatures = PdfFileReader(io.BytesIO(data)).embedded_signatures
    assert len(signatures) == 1
    status = await async_validate_pdf_signature(signatures[0], ValidationContext(trust_roots=[root]))
    assert status.intact and status.valid and status.bottom_line
    assert status.signing_cert.subject.native["organization_name"] == "SIMVEB"
    # one changed byte in the signed range (the producer string, which still parses) breaks it
    at = data.index(b"(SIMVEB)") + 1
    broken = data[:at] + b"T" + data[at + 1 :]
    status = await async_validate_pdf_signature(
        PdfFileReader(io.BytesIO(broken)).embedded_signatures[0], ValidationContext(trust_roots=[root])
    )
    assert not status.intact and not status.bottom_line


def test_rendering_is_deterministic_for_the_same_data() -> None:
    fields = {code: f"value {code}" for code, _ in pdf.CERTIFICATE_FIELDS}
    fields["I.iso"] = "2026-12-02T10:00:00+00:00"
    a = pdf.certificate_pdf(
        fields, "CG-2026-ABCDEFGH12", "https://simveb.bj/verify/CG-2026-ABCDEFGH12?p=x", duplicate=True
    )
    b = pdf.certificate_pdf(
        fields, "CG-2026-ABCDEFGH12", "https://simveb.bj/verify/CG-2026-ABCDEFGH12?p=x", duplicate=True
    )
    assert a == b
    fields["A"] = "other"
    assert pdf.certificate_pdf(fields, "CG-2026-ABCDEFGH12", "x", duplicate=True) != a


async def test_the_verification_page_renders_in_a_headless_browser(runtime: Any, api: Any, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("headless Chromium is not installed (Debian package: chromium)")
    owner = await holder(runtime)
    car = await vehicle(runtime, [owner.id])
    number, _ = await issue(runtime, vehicle_id=car.id, applicant_id=owner.id, holder_ids=(owner.id,), plate="AE 88 RB")
    page = await api.get(f"/verify/{number}", headers={"Accept": "text/html"})
    assert page.status_code == 200
    html_file = tmp_path / "verify.html"
    html_file.write_text(page.text, encoding="utf-8")
    shot = tmp_path / "verify.png"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=412,900"]
    dom = await asyncio.to_thread(
        subprocess.run,
        [*common, "--dump-dom", html_file.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 'data-status="current"' in dom.stdout and "Certificat authentique et en vigueur" in dom.stdout
    assert "AE 88 RB" in dom.stdout
    await asyncio.to_thread(
        subprocess.run, [*common, f"--screenshot={shot}", html_file.as_uri()], capture_output=True, timeout=120
    )
    assert shot.is_file() and shot.stat().st_size > 1000


def test_a_receipt_prints_every_invoice_line_and_the_total() -> None:
    data = {
        "invoice_number": "FAC-2026-000017",
        "reference": "IMM-2026-000042",
        "payer": "DOSSOU Koffi",
        "issued_at": "2026-12-02T10:00:00+00:00",
        "issued_on": "02/12/2026",
        "provider": "fedapay",
        "provider_reference": "TRX-99",
        "lines": [
            {"code": "base", "label": "Immatriculation (première)", "amount_xof": 25_000},
            {"code": "vehicle_category", "label": "Véhicule 4 roues et plus", "amount_xof": 35_000},
        ],
        "total_xof": 60_000,
        "qr_text": "eyJhbGciOiJFZERTQSJ9.e30.sig",
    }
    rendered = pdf.receipt_pdf(data)
    assert rendered == pdf.receipt_pdf(data)  # deterministic too
    text = pdf_text(rendered)
    for expected in ("REÇU DE PAIEMENT", "FAC-2026-000017", "IMM-2026-000042", "DOSSOU Koffi", "Immatriculation (première)",
                     "25 000 FCFA", "35 000 FCFA", "60 000 FCFA", "fedapay"):  # fmt: skip
        assert expected in text, f"{expected!r} not printed"
    assert qr_of(rendered) == data["qr_text"]


async def test_a_receipt_needs_the_payments_service(runtime: Any, api: Any, auth: Any) -> None:
    from simveb.actors.payments.messages import GetInvoice

    if runtime.bus.handles(GetInvoice):
        pytest.skip("the payments service runs in this process: receipts are covered with real invoices")
    r = await api.post(
        "/api/documents/generate-receipt", json={"invoice_id": str(uuid.uuid4())}, headers=auth(sub=str(uuid.uuid4()))
    )
    assert r.status_code == 503 and r.json()["code"] == "payments_unavailable"


async def test_concurrent_issuances_for_one_vehicle_leave_one_current_certificate(runtime: Any, api: Any) -> None:
    from simveb.actors.documents.messages import IssueCertificate
    from simveb.messages import Caller

    owner = await holder(runtime)
    car = await vehicle(runtime, [owner.id], plate="AF 0303 RB")
    staff = Caller(sub="agent-1", permissions=frozenset({"documents:issue"}))
    issued = await asyncio.gather(
        *(runtime.bus.ask(IssueCertificate(caller=staff, vehicle_id=car.id), timeout=120) for _ in range(4))
    )
    async with runtime.db.connection() as con:
        rows = await con.fetch("SELECT number, replaced_by FROM documents.certificates WHERE vehicle_id = $1", car.id)
    assert len(rows) == 4 and {r["number"] for r in rows} == {c.number for c in issued}
    current = [r["number"] for r in rows if r["replaced_by"] is None]
    assert len(current) == 1
    # the replacements form one chain ending at the current certificate
    successors = {r["number"]: r["replaced_by"] for r in rows}
    start = next(n for n in successors if n not in set(successors.values()))
    seen = [start]
    while successors[seen[-1]] is not None:
        seen.append(successors[seen[-1]])
    assert len(seen) == 4 and seen[-1] == current[0]


async def test_a_receipt_of_a_real_invoice_for_its_payer_only(runtime: Any, api: Any, auth: Any) -> None:
    from simveb.actors.payments.messages import ConfirmPayment, GetInvoice
    from simveb.messages import Caller
    from tests.payments_support import request_payment

    if not runtime.bus.handles(GetInvoice):
        pytest.skip("no payments service in this process")
    payer = await holder(runtime, last="Agossou", first="Rémi")
    opened = await request_payment(runtime, payer.id)
    agent = Caller(sub=str(uuid.uuid4()), permissions=frozenset({"payments:confirm", "payments:read"}))
    detail = await runtime.bus.ask(
        ConfirmPayment(caller=agent, payment_id=uuid.UUID(opened["payment_id"]), method="cash", receipt_reference="C-1")
    )
    invoice_id = detail.payment.invoice_id
    assert invoice_id is not None
    me = auth(sub=str(payer.id))
    r = await api.post("/api/documents/generate-receipt", json={"invoice_id": str(invoice_id)}, headers=me)
    assert r.status_code == 201, r.text
    receipt = r.json()
    again = await api.post("/api/documents/generate-receipt", json={"invoice_id": str(invoice_id)}, headers=me)
    assert again.json()["document_id"] == receipt["document_id"]  # one receipt per invoice
    stranger = auth(sub=str(uuid.uuid4()))
    r = await api.post("/api/documents/generate-receipt", json={"invoice_id": str(invoice_id)}, headers=stranger)
    assert r.status_code == 404
    data = (await api.get(f"/api/documents/{receipt['document_id']}/download", headers=me)).content
    text = pdf_text(data)
    assert receipt["invoice_number"] in text and opened["reference"] in text and "AGOSSOU Rémi" in text
    assert "60 000 FCFA" in text


async def test_a_killed_pdf_worker_does_not_break_rendering_for_good() -> None:
    fields = {code: f"value {code}" for code, _ in pdf.CERTIFICATE_FIELDS}
    fields["I.iso"] = "2026-12-02T10:00:00+00:00"
    renderer = pdf.Renderer(1, None, None)
    try:
        first = await renderer.certificate(fields, "CG-2026-ABCDEFGH12", "x", False)
        assert renderer._pool is not None
        for process in list(renderer._pool._processes.values()):
            process.kill()  # what the out-of-memory killer does to a worker
            process.join()
        again = await renderer.certificate(fields, "CG-2026-ABCDEFGH12", "x", False)
        assert again == first
    finally:
        renderer.close()
