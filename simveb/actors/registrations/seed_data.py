"""Reference data of the registrations service: what each procedure does once validated, and the
plate formats with their sequence counters (placeholders modelled on the legacy system's plates).

Loading is idempotent: rows that exist are kept, so an admin's changes survive a re-seed.
"""

from __future__ import annotations

import asyncpg

# procedure -> (plate: new | keep | prestige, owners: keep | transfer, duplicate, replaces the
# current certificate, history table). A procedure absent here keeps plate and owners.
EFFECTS: dict[str, tuple[str, str, bool, bool, str | None]] = {
    "first_registration": ("new", "keep", False, False, None),
    "re_registration": ("new", "keep", False, True, None),
    "renewal": ("keep", "keep", False, True, "renewal"),
    "transfer": ("keep", "transfer", False, True, "transfer"),
    "duplicate": ("keep", "keep", True, True, "duplicate"),
    "plate_duplicate": ("keep", "keep", True, False, "duplicate"),
    "prestige_number": ("prestige", "keep", False, True, None),
}

# code, vehicle category, registration type, template, series letters. Private cars `AB 1234 RB`;
# motorcycles carry the legacy numeric prefix 2; government plates the country code BJ.
FORMATS: list[tuple[str, str, str, str, int]] = [
    ("car", "four_wheels_plus", "ordinary", "{series} {number} RB", 2),
    ("car_government", "four_wheels_plus", "government", "{series} {number} BJ", 2),
    ("car_diplomatic", "four_wheels_plus", "diplomatic", "CD {series} {number}", 2),
    ("moto", "two_three_wheels", "ordinary", "2{series} {number}", 1),
    ("moto_government", "two_three_wheels", "government", "2{series} {number} BJ", 1),
]


async def load(con: asyncpg.Connection) -> int:
    """Insert what is missing; return rows added."""
    added = 0
    for procedure, (plate, owners, duplicate, replaces, history) in EFFECTS.items():
        status = await con.execute(
            "INSERT INTO registrations.procedure_effects (procedure, plate, owners, duplicate, replaces, history)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (procedure) DO NOTHING",
            procedure,
            plate,
            owners,
            duplicate,
            replaces,
            history,
        )
        added += int(status.rsplit(" ", 1)[-1])
    for code, category, reg_type, template, letters in FORMATS:
        status = await con.execute(
            "INSERT INTO registrations.plate_formats (code, category, registration_type, template, series_length)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            code,
            category,
            reg_type,
            template,
            letters,
        )
        added += int(status.rsplit(" ", 1)[-1])
    status = await con.execute(
        "INSERT INTO registrations.plate_series (format_code, series)"
        " SELECT code, repeat('A', series_length) FROM registrations.plate_formats ON CONFLICT DO NOTHING"
    )
    return added + int(status.rsplit(" ", 1)[-1])


async def is_empty(con: asyncpg.Connection) -> bool:
    return not await con.fetchval("SELECT EXISTS (SELECT 1 FROM registrations.plate_formats)")
