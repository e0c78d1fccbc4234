"""The document types: what applicants upload for each procedure and what SIMVEB issues, with limits.

Codes match the procedures' required documents in the config service's catalogue. Limits are
placeholders sized for a scanned page or a phone photo; an admin may change them in the table.
"""

from __future__ import annotations

import asyncpg

MB = 1024 * 1024
SCANS = ["application/pdf", "image/jpeg", "image/png"]
PDF_ONLY = ["application/pdf"]

# code, label fr, label en, max bytes, media types, issued by SIMVEB
TYPES: list[tuple[str, str, str, int, list[str], bool]] = [
    ("owner_identity", "Pièce d'identité du propriétaire", "Owner's identity document", 5 * MB, SCANS, False),
    ("buyer_identity", "Pièce d'identité de l'acquéreur", "Buyer's identity document", 5 * MB, SCANS, False),
    ("customs_clearance", "Déclaration en douane", "Customs clearance", 10 * MB, SCANS, False),
    ("purchase_invoice", "Facture d'achat", "Purchase invoice", 10 * MB, SCANS, False),
    ("technical_inspection", "Visite technique", "Technical inspection", 5 * MB, SCANS, False),
    ("carte_grise", "Carte grise précédente", "Previous carte grise", 5 * MB, SCANS, False),
    ("sale_certificate", "Certificat de vente", "Sale certificate", 5 * MB, SCANS, False),
    ("loss_declaration", "Déclaration de perte", "Loss declaration", 5 * MB, SCANS, False),
    ("loan_agreement", "Contrat de prêt", "Loan agreement", 20 * MB, PDF_ONLY, False),
    ("release_letter", "Lettre de mainlevée", "Release letter", 5 * MB, SCANS, False),
    ("issued_certificate", "Certificat d'immatriculation", "Registration certificate", 2 * MB, PDF_ONLY, True),
    ("issued_receipt", "Reçu de paiement", "Payment receipt", 2 * MB, PDF_ONLY, True),
]


async def load(con: asyncpg.Connection) -> int:
    """Insert the types that are missing (an admin's changes are kept); return rows added."""
    added = 0
    for code, label_fr, label_en, max_bytes, media_types, issued in TYPES:
        status = await con.execute(
            "INSERT INTO documents.document_types (code, label_fr, label_en, max_bytes, media_types, issued)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (code) DO NOTHING",
            code,
            label_fr,
            label_en,
            max_bytes,
            media_types,
            issued,
        )
        added += int(status.rsplit(" ", 1)[-1])
    return added
