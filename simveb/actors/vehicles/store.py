"""SQL of the vehicle service: the catalogue, the registry, searches, history and legal standing, on
the `vehicles` schema, returning msgspec Structs. The SQL of bulk import and export is in bulk_store.

Searches are built from a `VehicleFilter` into one parameterised WHERE clause (shared by the paginated
search and, through bulk_store, the export cursor).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg
import msgspec

from simveb.actors.vehicles.messages import (
    BlacklistEntry,
    Brand,
    Category,
    CharacteristicCategory,
    CharacteristicValue,
    Encumbrance,
    Energy,
    HistoryEntry,
    Vehicle,
    VehicleFields,
    VehicleFilter,
    VehicleModel,
    VehicleType,
    Viewer,
)
from simveb.db import from_row, from_rows

FuzzyMode = Literal["trgm", "fts"]
# pg_trgm's default word-similarity threshold (0.6) misses a one-letter typo in a short word
# ("cruser" scores 0.5 against "cruiser").
TRGM_THRESHOLD = 0.45
NameMatch = tuple[str, str | None]  # (make, model) lower-cased; model None = every model of the make
MAX_NAME_MATCHES = 40


async def fuzzy_mode(con: asyncpg.Connection) -> FuzzyMode:
    """'trgm' when the server has pg_trgm (the migration creates it if it can), 'fts' (core) otherwise."""
    found = await con.fetchval("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm')")
    return "trgm" if found else "fts"


# --- catalogue -----------------------------------------------------------------------------------------


async def list_brands(con: asyncpg.Connection, include_inactive: bool) -> list[Brand]:
    rows = await con.fetch(
        "SELECT code, name, country, active FROM vehicles.brands WHERE active OR $1 ORDER BY name", include_inactive
    )
    return from_rows(Brand, rows)


_MODEL_SELECT = (
    "SELECT m.id, m.brand_code, b.name AS brand, m.name, m.vehicle_type, t.category, m.active"
    " FROM vehicles.models m JOIN vehicles.brands b ON b.code = m.brand_code"
    " JOIN vehicles.types t ON t.code = m.vehicle_type"
)


async def list_models(con: asyncpg.Connection, brand: str | None, include_inactive: bool) -> list[VehicleModel]:
    rows = await con.fetch(
        _MODEL_SELECT + " WHERE ($1::text IS NULL OR m.brand_code = lower($1) OR lower(b.name) = lower($1))"
        " AND (m.active OR $2) ORDER BY b.name, m.name",
        brand,
        include_inactive,
    )
    return from_rows(VehicleModel, rows)


async def list_types(con: asyncpg.Connection) -> list[VehicleType]:
    return from_rows(
        VehicleType, await con.fetch("SELECT code, label, category FROM vehicles.types ORDER BY category, code")
    )


async def list_categories(con: asyncpg.Connection) -> list[Category]:
    return from_rows(Category, await con.fetch("SELECT code, label FROM vehicles.categories ORDER BY code"))


async def list_energies(con: asyncpg.Connection) -> list[Energy]:
    return from_rows(Energy, await con.fetch("SELECT code, label FROM vehicles.energies ORDER BY code"))


async def list_characteristics(con: asyncpg.Connection) -> list[CharacteristicCategory]:
    rows = await con.fetch(
        "SELECT c.code, c.label, coalesce(jsonb_agg(jsonb_build_object('code', v.code, 'label', v.label)"
        " ORDER BY v.code) FILTER (WHERE v.code IS NOT NULL), '[]') AS values"
        " FROM vehicles.characteristic_categories c"
        " LEFT JOIN vehicles.characteristic_values v ON v.category_code = c.code GROUP BY c.code, c.label"
        " ORDER BY c.code"
    )
    return from_rows(CharacteristicCategory, rows)


async def insert_brand(con: asyncpg.Connection, code: str, name: str, country: str) -> Brand | None:
    row = await con.fetchrow(
        "INSERT INTO vehicles.brands (code, name, country) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
        " RETURNING code, name, country, active",
        code,
        name,
        country,
    )
    return from_row(Brand, row)


async def insert_model(con: asyncpg.Connection, brand_code: str, name: str, vehicle_type: str) -> VehicleModel | None:
    new_id = await con.fetchval(
        "INSERT INTO vehicles.models (brand_code, name, vehicle_type) VALUES ($1, $2, $3)"
        " ON CONFLICT DO NOTHING RETURNING id",
        brand_code,
        name,
        vehicle_type,
    )
    if new_id is None:
        return None
    return from_row(VehicleModel, await con.fetchrow(_MODEL_SELECT + " WHERE m.id = $1", new_id))


async def insert_type(con: asyncpg.Connection, code: str, label: str, category: str) -> VehicleType | None:
    row = await con.fetchrow(
        "INSERT INTO vehicles.types (code, label, category) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
        " RETURNING code, label, category",
        code,
        label,
        category,
    )
    return from_row(VehicleType, row)


async def insert_characteristic(
    con: asyncpg.Connection, category_code: str, category_label: str | None, code: str, label: str
) -> CharacteristicValue | None:
    if category_label is not None:
        await con.execute(
            "INSERT INTO vehicles.characteristic_categories (code, label) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            category_code,
            category_label,
        )
    row = await con.fetchrow(
        "INSERT INTO vehicles.characteristic_values (code, category_code, label) VALUES ($1, $2, $3)"
        " ON CONFLICT DO NOTHING RETURNING code, label",
        code,
        category_code,
        label,
    )
    return from_row(CharacteristicValue, row)


async def exists(con: asyncpg.Connection, table: str, code: str) -> bool:
    assert table in {"brands", "types", "categories", "characteristic_categories"}  # never from input
    return bool(await con.fetchval(f"SELECT EXISTS (SELECT 1 FROM vehicles.{table} WHERE code = $1)", code))


async def catalogue_is_empty(con: asyncpg.Connection) -> bool:
    return not await con.fetchval("SELECT EXISTS (SELECT 1 FROM vehicles.brands)")


class Resolved(msgspec.Struct, kw_only=True):
    """A catalogue lookup for one vehicle: None where the given value is unknown."""

    make: str | None
    model: str | None
    model_type: str | None
    type_category: str | None
    energy: str | None
    unknown_characteristics: list[str]


async def resolve(
    con: asyncpg.Connection, make: str, model: str, vehicle_type: str | None, energy: str, characteristics: list[str]
) -> Resolved:
    """Find the catalogue spelling of make, model and energy (case-insensitive; energy by code or label)."""
    row = await con.fetchrow(
        "SELECT b.name AS make, m.name AS model, m.vehicle_type AS model_type,"
        " (SELECT category FROM vehicles.types WHERE code = coalesce($3, m.vehicle_type)) AS type_category,"
        " (SELECT label FROM vehicles.energies WHERE code = lower($4) OR lower(label) = lower($4)) AS energy,"
        " ARRAY(SELECT c FROM unnest($5::text[]) c"
        "       WHERE c NOT IN (SELECT code FROM vehicles.characteristic_values)) AS unknown_characteristics"
        " FROM (SELECT 1) one"
        " LEFT JOIN vehicles.brands b ON lower(b.name) = lower($1) OR b.code = lower($1)"
        " LEFT JOIN vehicles.models m ON m.brand_code = b.code AND lower(m.name) = lower($2)",
        make,
        model,
        vehicle_type,
        energy,
        characteristics,
    )
    return from_row(Resolved, row)


# --- vehicles ------------------------------------------------------------------------------------------

_VEHICLE_COLS = (
    "id, vin, plate, make, model, vehicle_type, category, commercial_name, year, colour, energy, cylinder_cc,"
    " power_kw, fiscal_hp, seats, max_mass_kg, service_mass_kg, empty_mass_kg, first_registration_date,"
    " customs_ref, characteristics, remarks, owners, status, filed_by, version, created_at, created_by,"
    " updated_at, updated_by, archived_at, archived_by"
)
_FIELD_NAMES = VehicleFields.__struct_fields__


async def insert_vehicle(
    con: asyncpg.Connection,
    vin: str,
    fields: dict[str, Any],
    owners: list[UUID],
    plate: str | None,
    filed_by: str | None,
    by: str,
) -> Vehicle | None:
    """Insert a vehicle; None when the VIN is taken. A plate taken by another vehicle raises UniqueViolation."""
    cols = ", ".join(_FIELD_NAMES)
    params = ", ".join(f"${i}" for i in range(7, 7 + len(_FIELD_NAMES)))
    row = await con.fetchrow(
        f"INSERT INTO vehicles.vehicles (vin, plate, owners, filed_by, created_by, updated_by, {cols})"
        f" VALUES ($1, $2, $3, $4, $5, $6, {params}) ON CONFLICT (vin) DO NOTHING RETURNING {_VEHICLE_COLS}",
        vin,
        plate,
        owners,
        filed_by,
        by,
        by,
        *(fields[name] for name in _FIELD_NAMES),
    )
    return from_row(Vehicle, row)


async def get_vehicle(con: asyncpg.Connection, vehicle_id: UUID, *, lock: bool = False) -> Vehicle | None:
    row = await con.fetchrow(
        f"SELECT {_VEHICLE_COLS} FROM vehicles.vehicles WHERE id = $1" + (" FOR UPDATE" if lock else ""),
        vehicle_id,
    )
    return from_row(Vehicle, row)


async def find_vehicle(
    con: asyncpg.Connection, *, vin: str | None = None, plate_key: str | None = None
) -> Vehicle | None:
    if vin is not None:
        row = await con.fetchrow(f"SELECT {_VEHICLE_COLS} FROM vehicles.vehicles WHERE vin = $1", vin)
    else:
        row = await con.fetchrow(f"SELECT {_VEHICLE_COLS} FROM vehicles.vehicles WHERE plate_key = $1", plate_key)
    return from_row(Vehicle, row)


async def record_lookup(con: asyncpg.Connection, by: str, plate_key: str, *, found: bool) -> None:
    await con.execute(
        "INSERT INTO vehicles.roadside_lookups (by, plate, found) VALUES ($1, $2, $3)", by, plate_key, found
    )


async def plate_holder(con: asyncpg.Connection, plate_key: str) -> UUID | None:
    return await con.fetchval("SELECT id FROM vehicles.vehicles WHERE plate_key = $1", plate_key)


async def update_fields(con: asyncpg.Connection, vehicle_id: UUID, fields: dict[str, Any], by: str) -> Vehicle:
    sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(_FIELD_NAMES, start=3))
    row = await con.fetchrow(
        f"UPDATE vehicles.vehicles SET {sets}, version = version + 1, updated_at = now(), updated_by = $2"
        f" WHERE id = $1 RETURNING {_VEHICLE_COLS}",
        vehicle_id,
        by,
        *(fields[name] for name in _FIELD_NAMES),
    )
    return from_row(Vehicle, row)


async def set_column(con: asyncpg.Connection, vehicle_id: UUID, column: str, value: Any, by: str) -> Vehicle:
    """Change plate, owners or status (one column), bumping the version."""
    assert column in {"plate", "owners", "status"}  # never from input
    row = await con.fetchrow(
        f"UPDATE vehicles.vehicles SET {column} = $3, version = version + 1, updated_at = now(), updated_by = $2"
        f" WHERE id = $1 RETURNING {_VEHICLE_COLS}",
        vehicle_id,
        by,
        value,
    )
    return from_row(Vehicle, row)


async def archive(con: asyncpg.Connection, vehicle_id: UUID, by: str) -> Vehicle:
    row = await con.fetchrow(
        "UPDATE vehicles.vehicles SET archived_at = now(), archived_by = $2, version = version + 1,"
        f" updated_at = now(), updated_by = $2 WHERE id = $1 RETURNING {_VEHICLE_COLS}",
        vehicle_id,
        by,
    )
    return from_row(Vehicle, row)


# --- search --------------------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def _like_prefix(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def plate_key(plate: str) -> str:
    return re.sub(r"\s+", "", plate).upper()


def _identifier_terms(q: str, arg: Any) -> tuple[str, list[str]]:
    """The VIN-prefix and plate-prefix terms a free-text query may stand for."""
    terms = []
    key = plate_key(q.strip())
    if re.fullmatch(r"[A-HJ-NPR-Z0-9]{3,17}", key):
        terms.append(f"vin LIKE {arg(_like_prefix(key))}")
    if re.fullmatch(r"[A-Z0-9]{2,12}", key):
        terms.append(f"plate_key LIKE {arg(_like_prefix(key))}")
    return key, terms


def build_where(
    f: VehicleFilter, viewer: Viewer | None, names: list[NameMatch], args: list[Any]
) -> tuple[list[str], bool]:
    """WHERE terms for a filter and a viewer, appending parameters to args.

    `names` are the catalogue entries `f.q` matched (see catalogue_matches). Returns (terms,
    possible): possible is False when nothing can match (the viewer sees nothing, q matches nothing).
    """
    where: list[str] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if viewer is not None and viewer.scope != "all":
        try:
            sub_uuid: UUID | None = UUID(viewer.sub)
        except ValueError:
            sub_uuid = None
        if viewer.scope == "own":
            if sub_uuid is None:
                return where, False
            where.append(f"owners @> ARRAY[{arg(sub_uuid)}::uuid]")
        elif sub_uuid is None:
            where.append(f"filed_by = {arg(viewer.sub)}")
        else:
            where.append(f"(filed_by = {arg(viewer.sub)} OR owners @> ARRAY[{arg(sub_uuid)}::uuid])")
    if not (f.include_archived and (viewer is None or viewer.scope == "all")):
        where.append("archived_at IS NULL")
    if f.vin:
        vin = f.vin.strip().upper()
        if len(vin) == 17:
            where.append(f"vin = {arg(vin)}")
        else:
            where.append(f"vin LIKE {arg(_like_prefix(vin))}")
    if f.plate:
        where.append(f"plate_key LIKE {arg(_like_prefix(plate_key(f.plate)))}")
    if f.owner is not None:
        where.append(f"owners @> ARRAY[{arg(f.owner)}::uuid]")
    if f.make:
        where.append(f"lower(make) = lower({arg(f.make.strip())})")
    if f.model:
        where.append(f"lower(model) = lower({arg(f.model.strip())})")
    if f.status:
        where.append(f"status = {arg(f.status)}")
    if f.year_min is not None:
        where.append(f"year >= {arg(f.year_min)}")
    if f.year_max is not None:
        where.append(f"year <= {arg(f.year_max)}")
    if f.q and f.q.strip():
        q = f.q.strip()
        _, alternatives = _identifier_terms(q, arg)
        for make, model in names:
            if model is None:
                alternatives.append(f"lower(make) = {arg(make)}")
            else:
                alternatives.append(f"(lower(make) = {arg(make)} AND lower(model) = {arg(model)})")
        if not alternatives:
            return where, False
        where.append("(" + " OR ".join(alternatives) + ")")
    return where, True


async def catalogue_matches(con: asyncpg.Connection, q: str, mode: FuzzyMode) -> list[NameMatch]:
    """The makes and models `q` names, typos tolerated with pg_trgm, word prefixes without it.

    Matching the few hundred catalogue names instead of a million vehicle rows keeps fuzzy search
    fast at national scale: the vehicles are then found by (make, model) through a btree.
    """
    words = _WORD.findall(q.lower())
    if not words:
        return []
    base = "SELECT lower(b.name) AS make, lower(m.name) AS model, {score} AS score FROM vehicles.models m JOIN vehicles.brands b ON b.code = m.brand_code"
    if mode == "trgm":
        text = " ".join(words)
        score = "greatest(word_similarity($1, lower(b.name || ' ' || m.name)), word_similarity($1, lower(m.name)))"
        rows = await con.fetch(
            f"SELECT * FROM ({base.format(score=score)}) x WHERE score >= $2 ORDER BY score DESC, make, model",
            text,
            TRGM_THRESHOLD,
        )
    else:
        query = " & ".join(f"{w}:*" for w in words)
        score = (
            "(to_tsvector('simple'::regconfig, lower(b.name || ' ' || m.name))"
            " @@ to_tsquery('simple'::regconfig, $1))::int"
        )
        rows = await con.fetch(
            f"SELECT * FROM ({base.format(score=score)}) x WHERE score = 1 ORDER BY make, model", query
        )
    matches: list[NameMatch] = [(r["make"], r["model"]) for r in rows]
    return matches[:MAX_NAME_MATCHES]


async def search(
    con: asyncpg.Connection,
    f: VehicleFilter,
    viewer: Viewer | None,
    mode: FuzzyMode,
    after: UUID | None,
    limit: int,
) -> list[Vehicle]:
    names = await catalogue_matches(con, f.q, mode) if f.q else []
    if names:
        return await _search_by_names(con, f, viewer, names, after, limit)
    args: list[Any] = []
    where, possible = build_where(f, viewer, names, args)
    if not possible:
        return []
    if after is not None:
        args.append(after)
        where.append(f"id > ${len(args)}")
    args.append(limit)
    sql = (
        f"SELECT {_VEHICLE_COLS} FROM vehicles.vehicles"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY id LIMIT ${len(args)}"
    )
    return from_rows(Vehicle, await con.fetch(sql, *args))


async def _search_by_names(
    con: asyncpg.Connection,
    f: VehicleFilter,
    viewer: Viewer | None,
    names: list[NameMatch],
    after: UUID | None,
    limit: int,
) -> list[Vehicle]:
    """One branch per matched (make, model), each the first `limit` ids of the (make, model, id)
    index, merged: a rare model is never found by walking the whole table in id order, and a
    common one stops after `limit` rows. The identifier alternatives of q get a branch each too."""
    args: list[Any] = []
    base, possible = build_where(msgspec.structs.replace(f, q=None), viewer, [], args)
    if not possible:
        return []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if after is not None:
        base.append(f"id > {arg(after)}")
    lim = arg(limit)
    branches = [f"lower(make) = {arg(make)} AND lower(model) = {arg(model)}" for make, model in names]
    _, identifiers = _identifier_terms(f.q or "", arg)
    branches.extend(identifiers)
    selects = [
        f"(SELECT {_VEHICLE_COLS} FROM vehicles.vehicles WHERE {' AND '.join([*base, branch])} ORDER BY id LIMIT {lim})"
        for branch in branches
    ]
    sql = f"SELECT DISTINCT ON (id) * FROM ({' UNION ALL '.join(selects)}) u ORDER BY id LIMIT {lim}"
    return from_rows(Vehicle, await con.fetch(sql, *args))


# --- history -------------------------------------------------------------------------------------------


async def record(
    con: asyncpg.Connection, vehicle_id: UUID, by: str, changes: list[tuple[str, Any, Any]], reason: str = ""
) -> None:
    """Append (field, old, new) changes to vehicles.history in the caller's transaction."""
    if not changes:
        return
    await con.executemany(
        "INSERT INTO vehicles.history (vehicle_id, actor, field, old_value, new_value, reason)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        [
            (vehicle_id, by, field, msgspec.to_builtins(old), msgspec.to_builtins(new), reason)
            for field, old, new in changes
        ],
    )


async def history(con: asyncpg.Connection, vehicle_id: UUID, after: int | None, limit: int) -> list[HistoryEntry]:
    """A vehicle's entries oldest first (by id), after the keyset `after` (id)."""
    rows = await con.fetch(
        "SELECT id, vehicle_id, at, actor, field, old_value, new_value, reason FROM vehicles.history"
        " WHERE vehicle_id = $1 AND ($2::bigint IS NULL OR id > $2) ORDER BY id LIMIT $3",
        vehicle_id,
        after,
        limit,
    )
    return from_rows(HistoryEntry, rows)


class Origin(msgspec.Struct, frozen=True, kw_only=True):
    """How a vehicle came in: when, by whom, and the import job and file when it was imported."""

    created_at: datetime
    created_by: str
    import_job: UUID | None
    source: str | None


async def import_origin(con: asyncpg.Connection, vehicle_id: UUID) -> Origin | None:
    row = await con.fetchrow(
        "SELECT v.created_at, v.created_by, v.import_job, j.source FROM vehicles.vehicles v"
        " LEFT JOIN vehicles.import_jobs j ON j.id = v.import_job WHERE v.id = $1",
        vehicle_id,
    )
    return from_row(Origin, row)


# --- standing ------------------------------------------------------------------------------------------

_ENC_COLS = (
    "id, vehicle_id, kind, holder, reference, reason, declared_by, declared_at, lifted_by, lifted_at, lift_reason"
)
_BL_COLS = "id, subject_kind, subject, reason, added_by, added_at, lifted_by, lifted_at"
_BL_COLS_B = ", ".join(f"b.{c.strip()}" for c in _BL_COLS.split(","))


async def active_encumbrances(con: asyncpg.Connection, vehicle_id: UUID) -> list[Encumbrance]:
    rows = await con.fetch(
        f"SELECT {_ENC_COLS} FROM vehicles.encumbrances WHERE vehicle_id = $1 AND lifted_at IS NULL"
        " ORDER BY declared_at",
        vehicle_id,
    )
    return from_rows(Encumbrance, rows)


async def insert_encumbrance(
    con: asyncpg.Connection, vehicle_id: UUID, kind: str, holder: str, reference: str, reason: str, by: str
) -> Encumbrance:
    row = await con.fetchrow(
        "INSERT INTO vehicles.encumbrances (vehicle_id, kind, holder, reference, reason, declared_by)"
        f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_ENC_COLS}",
        vehicle_id,
        kind,
        holder,
        reference,
        reason,
        by,
    )
    return from_row(Encumbrance, row)


async def get_encumbrance(con: asyncpg.Connection, encumbrance_id: UUID, *, lock: bool = False) -> Encumbrance | None:
    row = await con.fetchrow(
        f"SELECT {_ENC_COLS} FROM vehicles.encumbrances WHERE id = $1" + (" FOR UPDATE" if lock else ""),
        encumbrance_id,
    )
    return from_row(Encumbrance, row)


async def lift_encumbrance(con: asyncpg.Connection, encumbrance_id: UUID, reason: str, by: str) -> Encumbrance:
    row = await con.fetchrow(
        "UPDATE vehicles.encumbrances SET lifted_at = now(), lifted_by = $2, lift_reason = $3"
        f" WHERE id = $1 RETURNING {_ENC_COLS}",
        encumbrance_id,
        by,
        reason,
    )
    return from_row(Encumbrance, row)


async def active_blacklist(con: asyncpg.Connection, subjects: list[tuple[str, str]]) -> list[BlacklistEntry]:
    if not subjects:
        return []
    rows = await con.fetch(
        f"SELECT {_BL_COLS_B} FROM vehicles.blacklist b"
        " JOIN unnest($1::text[], $2::text[]) AS s(kind, who) ON b.subject_kind = s.kind AND b.subject = s.who"
        " WHERE b.lifted_at IS NULL ORDER BY b.added_at",
        [k for k, _ in subjects],
        [s for _, s in subjects],
    )
    return from_rows(BlacklistEntry, rows)


async def insert_blacklist(
    con: asyncpg.Connection, kind: str, subject: str, reason: str, by: str
) -> BlacklistEntry | None:
    row = await con.fetchrow(
        "INSERT INTO vehicles.blacklist (subject_kind, subject, reason, added_by) VALUES ($1, $2, $3, $4)"
        f" ON CONFLICT DO NOTHING RETURNING {_BL_COLS}",
        kind,
        subject,
        reason,
        by,
    )
    return from_row(BlacklistEntry, row)


async def get_blacklist(con: asyncpg.Connection, entry_id: UUID, *, lock: bool = False) -> BlacklistEntry | None:
    row = await con.fetchrow(
        f"SELECT {_BL_COLS} FROM vehicles.blacklist WHERE id = $1" + (" FOR UPDATE" if lock else ""), entry_id
    )
    return from_row(BlacklistEntry, row)


async def lift_blacklist(con: asyncpg.Connection, entry_id: UUID, by: str) -> BlacklistEntry:
    row = await con.fetchrow(
        f"UPDATE vehicles.blacklist SET lifted_at = now(), lifted_by = $2 WHERE id = $1 RETURNING {_BL_COLS}",
        entry_id,
        by,
    )
    return from_row(BlacklistEntry, row)


async def list_blacklist(
    con: asyncpg.Connection, include_lifted: bool, after: tuple[Any, ...] | None, limit: int
) -> list[BlacklistEntry]:
    """Entries newest first, after the keyset `after` (added_at, id)."""
    at, eid = after or (None, None)
    rows = await con.fetch(
        f"SELECT {_BL_COLS} FROM vehicles.blacklist WHERE (lifted_at IS NULL OR $1)"
        " AND ($2::timestamptz IS NULL OR (added_at, id) < ($2, $3::uuid))"
        " ORDER BY added_at DESC, id DESC LIMIT $4",
        include_lifted,
        at,
        eid,
        limit,
    )
    return from_rows(BlacklistEntry, rows)
