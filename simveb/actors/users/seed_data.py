"""The seeded roles and permissions: exactly the grid of the README ("Roles and permissions")."""

from __future__ import annotations

import asyncpg

# role code -> (French label, English label, description)
ROLES: dict[str, tuple[str, str, str]] = {
    "citizen": ("Usager", "Citizen", "A person who registers and follows their own vehicles"),
    "company": ("Entreprise", "Company", "A company account acting through its representatives"),
    "affiliate": ("Affilié", "Affiliate", "Dealers, garages, auctioneers, banks filing for customers"),
    "agent": ("Agent", "Agent", "Back-office staff: verify documents, pre-validate"),
    "validator": ("Validateur", "Validator", "Validates or rejects requests"),
    "supervisor": ("Superviseur", "Supervisor", "Assigns work, sees statistics"),
    "police": ("Police", "Police", "Checks vehicles and plates, sees alerts"),
    "admin": ("Administrateur", "Administrator", "Users, roles, fees, services, flags, reference data"),
}

# permission -> (description, roles that hold it)
PERMISSIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "users:read": ("list and read any user", ("agent", "validator", "supervisor", "admin")),
    "users:write": ("create staff, change or deactivate any user", ("admin",)),
    "users:roles": ("assign roles", ("admin",)),
    "users:kyc": ("mark a user kyc_verified", ("agent", "supervisor", "admin")),
    "config:read": ("read private settings and config history", ("supervisor", "admin")),
    "config:write": ("change settings, services, fees, flags", ("admin",)),
    "integrations:lookup": ("ANIP / DGI lookups", ("agent", "validator", "supervisor", "admin")),
    "integrations:status": ("breaker and error-rate status", ("supervisor", "admin")),
    "notifications:send": ("send email / SMS / push through the API", ("agent", "supervisor", "admin")),
    "notifications:templates": ("edit templates", ("admin",)),
    "vehicles:read": ("read and search every vehicle", ("agent", "validator", "supervisor", "admin")),
    "vehicles:write": ("create, update, archive vehicles", ("agent", "supervisor", "admin")),
    "vehicles:standing": ("declare or lift pledges, oppositions, theft, blacklist", ("agent", "supervisor", "admin")),
    "vehicles:file": ("file vehicles on behalf of customers (sees those it filed)", ("affiliate",)),
    "vehicles:lookup": ("roadside plate lookup", ("police", "agent", "supervisor", "admin")),
    "vehicles:import": ("bulk import and export", ("admin",)),
    "documents:read": ("read any uploaded or issued document", ("agent", "validator", "supervisor", "admin")),
    "documents:validate": ("approve or reject documents, upload for an applicant", ("agent", "supervisor")),
    "documents:issue": ("issue certificates and receipts on demand", ("validator", "supervisor", "admin")),
    "registrations:submit": ("file a registration request", ("citizen", "company", "affiliate")),
    "registrations:verify": ("verify documents, pre-validate", ("agent", "supervisor")),
    "registrations:validate": ("validate or reject", ("validator", "supervisor")),
    "registrations:assign": ("assign work", ("supervisor",)),
    "registrations:read": ("read every registration request, overdue list, statistics", ("supervisor", "admin")),
    "registrations:print": ("order and record the printing of cartes grises", ("agent", "supervisor")),
    "registrations:deliver": ("hand over the carte grise and plate, close requests", ("agent", "supervisor")),
    "registrations:plates": ("reserve and release plate numbers, see series", ("admin",)),
    "payments:confirm": ("confirm a payment made at the counter", ("agent", "supervisor")),
    "payments:read": ("see every payment, transaction and invoice (finance)", ("supervisor", "admin")),
    "payments:refund": ("refund a payment, in part or in full", ("supervisor",)),
    "audit:read": ("read the audit trail of every service", ("admin",)),
}


async def load(con: asyncpg.Connection) -> int:
    """Insert what is missing (existing rows are kept); return the number of rows added."""
    added = 0
    for code, (label_fr, label_en, description) in ROLES.items():
        status = await con.execute(
            "INSERT INTO users.roles (code, label_fr, label_en, description) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (code) DO NOTHING",
            code,
            label_fr,
            label_en,
            description,
        )
        added += int(status.rsplit(" ", 1)[-1])
    for code, (description, roles) in PERMISSIONS.items():
        status = await con.execute(
            "INSERT INTO users.permissions (code, description) VALUES ($1, $2) ON CONFLICT (code) DO NOTHING",
            code,
            description,
        )
        added += int(status.rsplit(" ", 1)[-1])
        for role in roles:
            status = await con.execute(
                "INSERT INTO users.role_permissions (role, permission) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                role,
                code,
            )
            added += int(status.rsplit(" ", 1)[-1])
    return added
