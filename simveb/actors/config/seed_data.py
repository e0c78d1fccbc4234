"""Placeholder reference data of the config service: procedures, fee grid, settings, feature flags.

No official tariff of Benin was found: every amount here is plausible and marked as a placeholder
(README, "Reference data"). Loading is idempotent: rows that exist are kept as they are.
"""

from __future__ import annotations

import asyncpg
import msgspec

# The main line of the legacy request life cycle, as transitions with the permission each needs.
_MAIN_LINE = [
    ("pending", "submitted", "registrations:submit", True),
    ("submitted", "waiting_for_payment", "registrations:submit", True),
    ("waiting_for_payment", "paid", "payments:confirm", True),
    ("paid", "assigned_to_staff", "registrations:assign", False),
    ("assigned_to_staff", "verified", "registrations:verify", False),
    ("verified", "pre_validated", "registrations:verify", False),
    ("pre_validated", "validated", "registrations:validate", True),
    ("validated", "print_order_emitted", "registrations:print", False),
    ("print_order_emitted", "printed", "registrations:print", False),
    ("printed", "given_to_applicant", "registrations:deliver", True),
    ("given_to_applicant", "closed", "registrations:deliver", True),
]
_SIDE = [
    ("assigned_to_staff", "rejected", "registrations:verify", True),
    ("pre_validated", "rejected", "registrations:validate", True),
    ("verified", "suspended", "registrations:verify", True),
    ("suspended", "verified", "registrations:verify", False),
    ("pending", "canceled", "registrations:submit", True),
    ("rejected", "resubmitted", "registrations:submit", True),
    ("resubmitted", "assigned_to_staff", "registrations:assign", False),
]
WORKFLOW = [
    {"from_status": a, "to_status": b, "permission": p, "visible_to_applicant": v} for a, b, p, v in _MAIN_LINE + _SIDE
]

# code, label fr, label en, required document types
SERVICES = [
    ("first_registration", "Immatriculation (première)", "First registration",
     ["customs_clearance", "purchase_invoice", "owner_identity", "technical_inspection"]),
    ("re_registration", "Ré-immatriculation", "Re-registration", ["carte_grise", "owner_identity"]),
    ("renewal", "Renouvellement de carte grise", "Carte grise renewal", ["carte_grise", "owner_identity"]),
    ("transfer", "Mutation (changement de propriétaire)", "Ownership transfer",
     ["carte_grise", "sale_certificate", "owner_identity", "buyer_identity"]),
    ("duplicate", "Duplicata de carte grise", "Carte grise duplicate", ["loss_declaration", "owner_identity"]),
    ("plate_duplicate", "Duplicata de plaque", "Plate duplicate", ["loss_declaration", "carte_grise"]),
    ("pledge", "Inscription de gage", "Pledge registration", ["loan_agreement", "carte_grise"]),
    ("pledge_lifting", "Mainlevée de gage", "Pledge lifting", ["release_letter", "carte_grise"]),
    ("prestige_number", "Numéro de prestige", "Prestige number", ["owner_identity", "carte_grise"]),
]  # fmt: skip

# service -> base cost, in XOF (placeholders)
BASE = {
    "first_registration": 25_000,
    "re_registration": 15_000,
    "renewal": 12_000,
    "transfer": 20_000,
    "duplicate": 10_000,
    "plate_duplicate": 7_500,
    "pledge": 5_000,
    "pledge_lifting": 5_000,
    "prestige_number": 150_000,
}
# (kind, match, label, amount) added to every service that has a base cost (placeholders)
ADJUSTMENTS = [
    ("vehicle_category", "four_wheels_plus", "Véhicule 4 roues et plus", 35_000),
    ("vehicle_category", "two_three_wheels", "Deux et trois roues", 0),
    ("owner_type", "company", "Personne morale", 5_000),
    ("owner_type", "person", "Personne physique", 0),
    ("owner_type", "government", "Administration", 0),
    ("owner_type", "diplomatic", "Corps diplomatique", 0),
    ("characteristic", "tinted_windows", "Vitres teintées", 10_000),
    ("characteristic", "power_over_10cv", "Puissance fiscale > 10 CV", 20_000),
    ("characteristic", "utility", "Véhicule utilitaire", 10_000),
]

# key, type, value, public, description
SETTINGS = [
    ("site.name", "string", "SIMVEB", True, "Name shown on the portals"),
    ("site.support_phone", "string", "+2290121000000", True, "Help line shown to applicants"),
    ("site.support_email", "string", "support@simveb.bj", True, "Help address shown to applicants"),
    ("registration.max_vehicles_per_batch", "integer", 500, True, "Affiliates' bulk filing limit"),
    ("registration.temporary_plate_days", "integer", 30, True, "Validity of a temporary plate"),
    ("payments.receipt_prefix", "string", "SIMVEB-REC", False, "Prefix of receipt numbers"),
    ("payments.reconciliation_hour", "integer", 2, False, "Hour (UTC) of the nightly reconciliation"),
    ("security.staff_session_minutes", "integer", 480, False, "Longest staff session before a new login"),
]

# key, enabled, rollout percent, description
FLAGS = [
    ("online_payment", True, None, "Applicants pay online (mobile money)"),
    ("qr_verification", True, 50, "QR code on the carte grise for roadside verification"),
    ("affiliate_bulk_filing", False, None, "Affiliates file requests in bulk"),
    ("sms_notifications", True, None, "Send SMS on request status changes"),
]


async def load(con: asyncpg.Connection) -> int:
    """Insert what is missing; return how many rows were added."""
    added = 0
    for code, fr, en, docs in SERVICES:
        added += await _count(
            con.execute(
                "INSERT INTO config.services (code, label_fr, label_en, required_documents, workflow)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (code) DO NOTHING",
                code,
                fr,
                en,
                docs,
                WORKFLOW,
            )
        )
    for code, amount in BASE.items():
        lines = [("base", "", "Coût de base", amount), *ADJUSTMENTS]
        for kind, match, label, value in lines:
            added += await _count(
                con.execute(
                    "INSERT INTO config.fees (service_code, kind, match, label, amount) VALUES ($1, $2, $3, $4, $5)"
                    " ON CONFLICT (service_code, kind, match) DO NOTHING",
                    code,
                    kind,
                    match,
                    label,
                    value,
                )
            )
    for key, type_, value, public, description in SETTINGS:
        added += await _count(
            con.execute(
                "INSERT INTO config.settings (key, type, value, public, description) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (key) DO NOTHING",
                key,
                type_,
                msgspec.to_builtins(value),
                public,
                description,
            )
        )
    for key, enabled, percent, description in FLAGS:
        added += await _count(
            con.execute(
                "INSERT INTO config.feature_flags (key, enabled, rollout_percent, description)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING",
                key,
                enabled,
                percent,
                description,
            )
        )
    return added


async def _count(status: object) -> int:
    """asyncpg returns 'INSERT 0 n' for an INSERT."""
    result = await status  # type: ignore[misc]
    return int(str(result).rsplit(" ", 1)[-1])
