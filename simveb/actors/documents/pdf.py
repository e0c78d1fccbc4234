"""PDF rendering of the documents SIMVEB issues: the carte grise and the payment receipt (fpdf2).

Rendering is CPU work, so it runs in worker processes (`Renderer`, a process pool): the event loop
keeps serving while a page is drawn and signed. A page is a pure function of its fields: the same
fields give the same bytes (fixed creation date, producer and document id, no clock), so a
certificate can be rendered again from what was stored. When `documents.pades` is on, the PDF is
then signed (PAdES B-B, Ed25519) with pyHanko using the document key and its X.509 certificate,
so any PDF reader shows who issued it; that signature carries its own signing time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging
import multiprocessing
import unicodedata
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

# Field codes of the harmonised certificate, in print order, with their French labels.
CERTIFICATE_FIELDS: list[tuple[str, str]] = [
    ("A", "Numéro d'immatriculation"),
    ("B", "Date de première immatriculation"),
    ("I", "Date du présent certificat"),
    ("C.1", "Titulaire (nom, adresse)"),
    ("D.1", "Marque"),
    ("D.2", "Type, variante, version"),
    ("D.3", "Dénomination commerciale"),
    ("E", "Numéro d'identification du véhicule"),
    ("F.1", "Masse en charge maximale (kg)"),
    ("F.2", "Masse en service (kg)"),
    ("G", "Masse à vide (kg)"),
    ("J", "Catégorie"),
    ("K", "Numéro de réception par type"),
    ("P.1", "Cylindrée (cm3)"),
    ("P.2", "Puissance nette maximale (kW)"),
    ("P.3", "Source d'énergie"),
    ("P.6", "Puissance administrative (CV)"),
    ("S.1", "Places assises"),
    ("Z", "Mentions"),
]
FIXED_DATE = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)

log = logging.getLogger("simveb.documents.pdf")


def printable(text: str) -> str:
    """Text the PDF core fonts can draw (Latin-1): accents kept, anything else reduced to its base letter."""
    try:
        text.encode("latin-1")
        return text
    except UnicodeEncodeError:
        decomposed = unicodedata.normalize("NFKD", text)
        return "".join(c if ord(c) < 256 else "?" for c in decomposed if not unicodedata.combining(c))


def _qr_png(text: str) -> io.BytesIO:
    import segno

    buf = io.BytesIO()
    segno.make(text, error="m", micro=False).save(buf, kind="png", scale=4, border=4)
    buf.seek(0)
    return buf


def _document(title: str, created: dt.datetime, *, orientation: str, fmt: str) -> Any:
    import warnings

    from fpdf import FPDF

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fpdf2 announces a fix of the A5 size; nothing to act on
        pdf = FPDF(orientation=orientation, unit="mm", format=fmt)
    pdf.set_creation_date(created)
    pdf.set_producer("SIMVEB")
    pdf.set_creator("SIMVEB")
    pdf.set_author("SIMVEB - République du Bénin")
    pdf.set_title(title)
    pdf.set_auto_page_break(False)
    # The document id is derived from the content, not from the clock: same fields, same bytes.
    pdf.file_id = lambda: -1
    return pdf


def certificate_pdf(fields: dict[str, str], number: str, qr_text: str, *, duplicate: bool) -> bytes:
    """The carte grise page (A5 landscape): every field by its code, the QR code, DUPLICATA if so."""
    issued = dt.datetime.fromisoformat(fields.get("I.iso") or "2020-01-01T00:00:00+00:00")
    pdf = _document(f"Certificat d'immatriculation {number}", issued, orientation="L", fmt="A5")
    pdf.add_page()
    pdf.set_fill_color(0, 122, 77)
    pdf.rect(0, 0, 210, 4, style="F")
    pdf.set_fill_color(252, 209, 22)
    pdf.rect(0, 4, 210, 2, style="F")
    pdf.set_fill_color(232, 17, 45)
    pdf.rect(0, 6, 210, 2, style="F")
    pdf.set_xy(10, 11)
    pdf.set_font("Helvetica", "B", 9)
    pdf.cell(120, 4, printable("RÉPUBLIQUE DU BÉNIN"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_x(10)
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(120, 7, printable("CERTIFICAT D'IMMATRICULATION"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_x(10)
    pdf.set_font("Helvetica", "", 9)
    pdf.cell(120, 5, printable(f"N° {number}"), new_x="LMARGIN", new_y="NEXT")
    if duplicate:
        pdf.set_xy(135, 12)
        pdf.set_text_color(200, 0, 0)
        pdf.set_draw_color(200, 0, 0)
        pdf.set_font("Helvetica", "B", 16)
        pdf.cell(65, 10, "DUPLICATA", border=1, align="C")
        pdf.set_text_color(0, 0, 0)
        pdf.set_draw_color(0, 0, 0)
    y = 32.0
    left_w, right_x = 125.0, 140.0
    for code, label in CERTIFICATE_FIELDS:
        value = fields.get(code) or "-"
        pdf.set_xy(10, y)
        pdf.set_font("Helvetica", "B", 7)
        pdf.cell(10, 4.2, code)
        pdf.set_font("Helvetica", "", 6.5)
        pdf.cell(45, 4.2, printable(label))
        pdf.set_font("Helvetica", "B" if code in ("A", "E") else "", 8)
        if code == "C.1":
            pdf.multi_cell(left_w - 55, 4.2, printable(value), new_x="LMARGIN", new_y="NEXT")
            y = max(pdf.get_y(), y + 4.2) + 1.0
            continue
        pdf.cell(left_w - 55, 4.2, printable(value))
        y += 5.2
    qr = _qr_png(qr_text)
    pdf.image(qr, x=right_x + 8, y=40, w=44, h=44)
    pdf.set_xy(right_x, 86)
    pdf.set_font("Helvetica", "", 6.5)
    pdf.multi_cell(
        60,
        3.2,
        printable(
            "Scannez le code pour vérifier ce certificat. Le code est signé par SIMVEB "
            "(clé publiée avec le JWKS) ; la page de vérification dit s'il est toujours en vigueur."
        ),
        align="C",
    )
    pdf.set_xy(10, 140)
    pdf.set_font("Helvetica", "I", 6)
    pdf.cell(190, 3, printable(f"Délivré par SIMVEB le {fields.get('I', '')}. Toute surcharge annule ce document."))
    return bytes(pdf.output())


def _money(amount: int) -> str:
    return f"{amount:,}".replace(",", " ") + " FCFA"


def receipt_pdf(data: dict[str, Any]) -> bytes:
    """A payment receipt (A5 portrait) with the invoice lines and a QR code to verify it."""
    issued = dt.datetime.fromisoformat(data["issued_at"])
    pdf = _document(f"Reçu {data['invoice_number']}", issued, orientation="P", fmt="A5")
    pdf.add_page()
    pdf.set_xy(10, 10)
    pdf.set_font("Helvetica", "B", 9)
    pdf.cell(128, 5, printable("RÉPUBLIQUE DU BÉNIN - SIMVEB"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(128, 8, printable("REÇU DE PAIEMENT"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)
    for label, value in (
        ("Facture", data["invoice_number"]),
        ("Référence", data["reference"]),
        ("Payé par", data["payer"]),
        ("Date", data["issued_on"]),
        ("Moyen de paiement", data["provider"]),
        ("Référence du prestataire", data.get("provider_reference") or "-"),
    ):
        pdf.cell(45, 5, printable(label))
        pdf.cell(83, 5, printable(str(value)), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    pdf.set_font("Helvetica", "B", 9)
    pdf.cell(30, 6, "Code", border="B")
    pdf.cell(68, 6, printable("Libellé"), border="B")
    pdf.cell(30, 6, "Montant", border="B", align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)
    for line in data["lines"]:
        pdf.cell(30, 6, printable(line["code"]))
        pdf.cell(68, 6, printable(line["label"]))
        pdf.cell(30, 6, _money(line["amount_xof"]), align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "B", 10)
    pdf.cell(98, 7, "Total", border="T")
    pdf.cell(30, 7, _money(data["total_xof"]), border="T", align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.image(_qr_png(data["qr_text"]), x=44, y=pdf.get_y() + 8, w=60, h=60)
    return bytes(pdf.output())


# --- PDF signature (PAdES) ----------------------------------------------------------------------------


def self_signed_certificate(key_pem: bytes) -> bytes:
    """A self-signed X.509 certificate for the document key (PEM), the same for the same key.

    Production may configure a certificate issued by a CA instead (`documents.signing_cert`). Every
    field is derived from the key (serial from its public bytes, fixed validity), so every worker and
    every process presents the same certificate.
    """
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    key = serialization.load_pem_private_key(key_pem, password=None)
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "BJ"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SIMVEB"),
            x509.NameAttribute(NameOID.COMMON_NAME, "SIMVEB - documents officiels"),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(int.from_bytes(hashlib.sha256(public).digest()[:16], "big") >> 1)
        .not_valid_before(FIXED_DATE)
        .not_valid_after(FIXED_DATE + dt.timedelta(days=365 * 30))
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return builder.sign(key, None).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


_signer: Any = None


def init_worker(key_pem: bytes | None, cert_pem: bytes | None) -> None:
    """Worker process start: build the pyHanko signer once (None: PDFs are not signed)."""
    global _signer
    if key_pem is None:
        _signer = None
        return
    from asn1crypto import keys as asn1_keys
    from asn1crypto import pem
    from asn1crypto import x509 as asn1_x509
    from cryptography.hazmat.primitives import serialization
    from pyhanko.sign import signers
    from pyhanko_certvalidator.registry import SimpleCertificateStore

    key = serialization.load_pem_private_key(key_pem, password=None)
    der_key = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _, _, der_cert = pem.unarmor(cert_pem or self_signed_certificate(key_pem))
    cert = asn1_x509.Certificate.load(der_cert)
    _signer = signers.SimpleSigner(
        signing_cert=cert,
        signing_key=asn1_keys.PrivateKeyInfo.load(der_key),
        cert_registry=SimpleCertificateStore.from_certs([cert]),
    )


def sign_pdf(data: bytes, reason: str) -> bytes:
    """PAdES signature of a rendered PDF with the worker's signer (unchanged when there is none)."""
    if _signer is None:
        return data
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.sign import fields, signers

    meta = signers.PdfSignatureMetadata(
        field_name="SIMVEB",
        subfilter=fields.SigSeedSubFilter.PADES,
        reason=reason,
        location="Cotonou, Bénin",
        md_algorithm="sha512",  # Ed25519 signs with SHA-512 (RFC 8419)
    )
    out = signers.sign_pdf(IncrementalPdfFileWriter(io.BytesIO(data)), meta, signer=_signer)
    return out.getvalue()


def certificate_job(fields: dict[str, str], number: str, qr_text: str, duplicate: bool) -> bytes:
    return sign_pdf(certificate_pdf(fields, number, qr_text, duplicate=duplicate), f"Certificat {number}")


def receipt_job(data: dict[str, Any]) -> bytes:
    return sign_pdf(receipt_pdf(data), f"Reçu {data['invoice_number']}")


class Renderer:
    """A pool of worker processes rendering and signing PDFs, started on first use."""

    def __init__(self, workers: int, key_pem: bytes | None, cert_pem: bytes | None) -> None:
        self.workers = workers
        self.initargs = (key_pem, cert_pem)
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: forking a process that runs an event loop and threads is unsafe
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker,
                initargs=self.initargs,
            )
        return self._pool

    async def _run(self, job: Any, *args: Any) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor(), job, *args)
        except BrokenProcessPool:
            # A worker died (killed, out of memory): a broken pool refuses every later job, so it is
            # replaced and the job tried once more; a second failure is the caller's error.
            log.warning("PDF worker pool broken; starting a new one")
            self.close()
            return await loop.run_in_executor(self._executor(), job, *args)

    async def certificate(self, fields: dict[str, str], number: str, qr_text: str, duplicate: bool) -> bytes:
        return await self._run(certificate_job, fields, number, qr_text, duplicate)

    async def receipt(self, data: dict[str, Any]) -> bytes:
        return await self._run(receipt_job, data)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
