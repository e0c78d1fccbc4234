"""SQL of the vehicle service: every query on the `vehicles` schema, returning msgspec Structs.

Searches are built from a `VehicleFilter` into one parameterised WHERE clause (shared by the paginated
search and the export cursor). Bulk import runs as a few set-based statements on one connection:
COPY into a temporary staging table, then one statement that validates every row, inserts the good
ones and keeps the rejected ones with their reason. Most rows are good: they pass one cheap combined
predicate; only the others go through the detailed checks that name the reason.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal
from uuid import UUID

import asyncpg
import msgspec

from simveb.actors.vehicles.messages import (
    CSV_COLUMNS,
    BlacklistEntry,
    Brand,
    Category,
    CharacteristicCategory,
    CharacteristicValue,
    Encumbrance,
    Energy,
    HistoryEntry,
    ImportJob,
    Vehicle,
    VehicleFields,
    VehicleFilter,
    VehicleModel,
    VehicleType,
    Viewer,
)

FuzzyMode = Literal["trgm", "fts"]
# pg_trgm's default word-similarity threshold (0.6) misses a one-letter typo in a short word
# ("cruser" scores 0.5 against "cruiser").
TRGM_THRESHOLD = 0.45
NameMatch = tuple[str, str | None]  # (make, model) lower-cased; model None = every model of the make
MAX_NAME_MATCHES = 40


def _struct(cls: type, row: asyncpg.Record | None) -> Any:
    return None if row is None else msgspec.convert(dict(row), cls)


def _structs(cls: type, rows: Sequence[asyncpg.Record]) -> list[Any]:
    return msgspec.convert([dict(r) for r in rows], list[cls])  # type: ignore[valid-type]


async def fuzzy_mode(con: asyncpg.Connection) -> FuzzyMode:
    """'trgm' when the server has pg_trgm (the migration creates it if it can), 'fts' (core) otherwise."""
    found = await con.fetchval("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm')")
    return "trgm" if found else "fts"


# --- catalogue -----------------------------------------------------------------------------------------


async def list_brands(con: asyncpg.Connection, include_inactive: bool) -> list[Brand]:
    rows = await con.fetch(
        "SELECT code, name, country, active FROM vehicles.brands WHERE active OR $1 ORDER BY name", include_inactive
    )
    return _structs(Brand, rows)


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
    return _structs(VehicleModel, rows)


async def list_types(con: asyncpg.Connection) -> list[VehicleType]:
    return _structs(
        VehicleType, await con.fetch("SELECT code, label, category FROM vehicles.types ORDER BY category, code")
    )


async def list_categories(con: asyncpg.Connection) -> list[Category]:
    return _structs(Category, await con.fetch("SELECT code, label FROM vehicles.categories ORDER BY code"))


async def list_energies(con: asyncpg.Connection) -> list[Energy]:
    return _structs(Energy, await con.fetch("SELECT code, label FROM vehicles.energies ORDER BY code"))


async def list_characteristics(con: asyncpg.Connection) -> list[CharacteristicCategory]:
    rows = await con.fetch(
        "SELECT c.code, c.label, coalesce(jsonb_agg(jsonb_build_object('code', v.code, 'label', v.label)"
        " ORDER BY v.code) FILTER (WHERE v.code IS NOT NULL), '[]') AS values"
        " FROM vehicles.characteristic_categories c"
        " LEFT JOIN vehicles.characteristic_values v ON v.category_code = c.code GROUP BY c.code, c.label"
        " ORDER BY c.code"
    )
    return _structs(CharacteristicCategory, rows)


async def insert_brand(con: asyncpg.Connection, code: str, name: str, country: str) -> Brand | None:
    row = await con.fetchrow(
        "INSERT INTO vehicles.brands (code, name, country) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
        " RETURNING code, name, country, active",
        code,
        name,
        country,
    )
    return _struct(Brand, row)


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
    return _struct(VehicleModel, await con.fetchrow(_MODEL_SELECT + " WHERE m.id = $1", new_id))


async def insert_type(con: asyncpg.Connection, code: str, label: str, category: str) -> VehicleType | None:
    row = await con.fetchrow(
        "INSERT INTO vehicles.types (code, label, category) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
        " RETURNING code, label, category",
        code,
        label,
        category,
    )
    return _struct(VehicleType, row)


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
    return _struct(CharacteristicValue, row)


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
    return _struct(Resolved, row)


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
    return _struct(Vehicle, row)


async def get_vehicle(con: asyncpg.Connection, vehicle_id: UUID, *, lock: bool = False) -> Vehicle | None:
    row = await con.fetchrow(
        f"SELECT {_VEHICLE_COLS} FROM vehicles.vehicles WHERE id = $1" + (" FOR UPDATE" if lock else ""),
        vehicle_id,
    )
    return _struct(Vehicle, row)


async def find_vehicle(
    con: asyncpg.Connection, *, vin: str | None = None, plate_key: str | None = None
) -> Vehicle | None:
    if vin is not None:
        row = await con.fetchrow(f"SELECT {_VEHICLE_COLS} FROM vehicles.vehicles WHERE vin = $1", vin)
    else:
        row = await con.fetchrow(f"SELECT {_VEHICLE_COLS} FROM vehicles.vehicles WHERE plate_key = $1", plate_key)
    return _struct(Vehicle, row)


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
    return _struct(Vehicle, row)


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
    return _struct(Vehicle, row)


async def archive(con: asyncpg.Connection, vehicle_id: UUID, by: str) -> Vehicle:
    row = await con.fetchrow(
        "UPDATE vehicles.vehicles SET archived_at = now(), archived_by = $2, version = version + 1,"
        f" updated_at = now(), updated_by = $2 WHERE id = $1 RETURNING {_VEHICLE_COLS}",
        vehicle_id,
        by,
    )
    return _struct(Vehicle, row)


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
    return _structs(Vehicle, await con.fetch(sql, *args))


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
    return _structs(Vehicle, await con.fetch(sql, *args))


async def export_query(
    con: asyncpg.Connection, f: VehicleFilter, viewer: Viewer | None, mode: FuzzyMode
) -> tuple[str, list[Any]] | None:
    """The export's SELECT: the CSV columns, as text, in CSV order; None when nothing can match."""
    args: list[Any] = []
    names = await catalogue_matches(con, f.q, mode) if f.q else []
    where, possible = build_where(f, viewer, names, args)
    if not possible:
        return None
    cols = []
    for name in CSV_COLUMNS:
        if name in {"characteristics", "owners"}:
            cols.append(f"array_to_string({name}, ';')")
        elif name == "first_registration_date":
            cols.append("to_char(first_registration_date, 'YYYY-MM-DD')")
        else:
            cols.append(f"{name}::text")
    sql = (
        f"SELECT {', '.join(cols)} FROM vehicles.vehicles"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY id"
    )
    return sql, args


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


async def history(con: asyncpg.Connection, vehicle_id: UUID) -> list[HistoryEntry]:
    rows = await con.fetch(
        "SELECT id, vehicle_id, at, actor, field, old_value, new_value, reason FROM vehicles.history"
        " WHERE vehicle_id = $1 ORDER BY id",
        vehicle_id,
    )
    return _structs(HistoryEntry, rows)


async def import_origin(con: asyncpg.Connection, vehicle_id: UUID) -> asyncpg.Record | None:
    return await con.fetchrow(
        "SELECT v.created_at, v.created_by, v.import_job, j.source FROM vehicles.vehicles v"
        " LEFT JOIN vehicles.import_jobs j ON j.id = v.import_job WHERE v.id = $1",
        vehicle_id,
    )


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
    return _structs(Encumbrance, rows)


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
    return _struct(Encumbrance, row)


async def get_encumbrance(con: asyncpg.Connection, encumbrance_id: UUID, *, lock: bool = False) -> Encumbrance | None:
    row = await con.fetchrow(
        f"SELECT {_ENC_COLS} FROM vehicles.encumbrances WHERE id = $1" + (" FOR UPDATE" if lock else ""),
        encumbrance_id,
    )
    return _struct(Encumbrance, row)


async def lift_encumbrance(con: asyncpg.Connection, encumbrance_id: UUID, reason: str, by: str) -> Encumbrance:
    row = await con.fetchrow(
        "UPDATE vehicles.encumbrances SET lifted_at = now(), lifted_by = $2, lift_reason = $3"
        f" WHERE id = $1 RETURNING {_ENC_COLS}",
        encumbrance_id,
        by,
        reason,
    )
    return _struct(Encumbrance, row)


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
    return _structs(BlacklistEntry, rows)


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
    return _struct(BlacklistEntry, row)


async def get_blacklist(con: asyncpg.Connection, entry_id: UUID, *, lock: bool = False) -> BlacklistEntry | None:
    row = await con.fetchrow(
        f"SELECT {_BL_COLS} FROM vehicles.blacklist WHERE id = $1" + (" FOR UPDATE" if lock else ""), entry_id
    )
    return _struct(BlacklistEntry, row)


async def lift_blacklist(con: asyncpg.Connection, entry_id: UUID, by: str) -> BlacklistEntry:
    row = await con.fetchrow(
        f"UPDATE vehicles.blacklist SET lifted_at = now(), lifted_by = $2 WHERE id = $1 RETURNING {_BL_COLS}",
        entry_id,
        by,
    )
    return _struct(BlacklistEntry, row)


async def list_blacklist(con: asyncpg.Connection, include_lifted: bool) -> list[BlacklistEntry]:
    rows = await con.fetch(
        f"SELECT {_BL_COLS} FROM vehicles.blacklist WHERE lifted_at IS NULL OR $1 ORDER BY added_at DESC LIMIT 1000",
        include_lifted,
    )
    return _structs(BlacklistEntry, rows)


# --- import jobs ---------------------------------------------------------------------------------------

_JOB_COLS = (
    "id, source, error_path, state, phase, total_rows, inserted, skipped, rejected, error, created_by,"
    " created_at, finished_at"
)


async def insert_job(con: asyncpg.Connection, source: str, error_path: str, by: str) -> ImportJob:
    row = await con.fetchrow(
        f"INSERT INTO vehicles.import_jobs (source, error_path, created_by) VALUES ($1, $2, $3) RETURNING {_JOB_COLS}",
        source,
        error_path,
        by,
    )
    return _struct(ImportJob, row)


async def get_job(con: asyncpg.Connection, job_id: UUID) -> ImportJob | None:
    return _struct(ImportJob, await con.fetchrow(f"SELECT {_JOB_COLS} FROM vehicles.import_jobs WHERE id = $1", job_id))


async def save_job(con: asyncpg.Connection, job: ImportJob) -> None:
    await con.execute(
        "UPDATE vehicles.import_jobs SET state = $2, phase = $3, total_rows = $4, inserted = $5, skipped = $6,"
        " rejected = $7, error = $8, finished_at = $9 WHERE id = $1",
        job.id,
        job.state,
        job.phase,
        job.total_rows,
        job.inserted,
        job.skipped,
        job.rejected,
        job.error,
        job.finished_at,
    )


# --- bulk import ---------------------------------------------------------------------------------------

STAGING = "vehicles_import_staging"
REJECTS = "vehicles_import_rejects"
COMBOS = "vehicles_import_combos"


async def create_staging(con: asyncpg.Connection) -> None:
    """Temporary tables of this connection: every CSV column as text, plus the row number."""
    cols = ", ".join(f"{name} text" for name in CSV_COLUMNS)
    await con.execute(f"DROP TABLE IF EXISTS pg_temp.{STAGING}, pg_temp.{REJECTS}")
    await con.execute(
        f"CREATE TEMP TABLE {STAGING} (row_no bigint GENERATED ALWAYS AS IDENTITY, pre_reason text, {cols})"
    )
    await con.execute(f"CREATE TEMP TABLE {REJECTS} (row_no bigint, reason text, {cols})")


async def copy_csv(con: asyncpg.Connection, source: AsyncIterator[bytes], columns: list[str]) -> None:
    """COPY the file (header line first) into the staging table: the server parses the CSV."""
    await con.copy_to_table(
        STAGING, source=source, columns=columns, schema_name="pg_temp", format="csv", header=True, encoding="utf8"
    )


async def copy_records(con: asyncpg.Connection, records: list[tuple[Any, ...]], columns: list[str]) -> None:
    """The slow path for a file COPY refused (ragged rows): rows parsed by Python, bad shapes pre-rejected."""
    await con.copy_records_to_table(STAGING, records=records, columns=["pre_reason", *columns], schema_name="pg_temp")


# Every check, in order; the first that fails names the row's reason. Casts happen only on rows whose
# text passed the matching check (CASE evaluates in order), so a bad row is rejected, never fatal.
_INT_FIELDS = (
    ("cylinder_cc", 0, 20000),
    ("power_kw", 0, 2000),
    ("fiscal_hp", 0, 200),
    ("seats", 1, 100),
    ("max_mass_kg", 0, 100000),
    ("service_mass_kg", 0, 100000),
    ("empty_mass_kg", 0, 100000),
)


def _import_sql() -> str:
    int_checks = "\n".join(
        f"            WHEN NOT vehicles.is_int_in(s.{name}, {lo}, {hi})"
        f" THEN '{name}: expected a whole number from {lo} to {hi}, got ' || quote_literal(s.{name})"
        for name, lo, hi in _INT_FIELDS
    )
    # The fast check of the whole numbers: digits only over all of them at once, at most 9 each (so
    # the casts that follow cannot fail), then their ranges.
    int_text = ", ".join(f"s.{name}" for name, _, _ in (("year", 0, 0), *_INT_FIELDS))
    int_lengths = " AND ".join(
        f"coalesce(octet_length(s.{name}), 0) <= 9" for name in ("year", *(n for n, _, _ in _INT_FIELDS))
    )
    int_ranges = " AND ".join(
        f"coalesce(nullif(s.{name}, '')::integer BETWEEN {lo} AND {hi}, true)" for name, lo, hi in _INT_FIELDS
    )
    int_values = ", ".join(f"nullif(c.{name}, '')::integer" for name, _, _ in _INT_FIELDS)
    int_cols = ", ".join(name for name, _, _ in _INT_FIELDS)
    raw_cols = ", ".join(f"s.{name}" for name in ("year", *(n for n, _, _ in _INT_FIELDS)))
    # strpos() rather than a regular expression for the three control characters: this runs twice a row.
    n_plate = (
        "CASE WHEN st.plate LIKE '%  %' OR strpos(st.plate, E'\\t') > 0 OR strpos(st.plate, E'\\n') > 0"
        " OR strpos(st.plate, E'\\r') > 0"
        " THEN nullif(upper(regexp_replace(btrim(st.plate), '\\s+', ' ', 'g')), '')"
        " ELSE nullif(upper(btrim(st.plate)), '') END"
    )
    return f"""
WITH brand_keys AS (
    -- a make is given by name or by code
    SELECT code, name, lower(name) AS k FROM vehicles.brands UNION SELECT code, name, code FROM vehicles.brands
), energy_keys AS (
    SELECT label, lower(label) AS k FROM vehicles.energies UNION SELECT label, code FROM vehicles.energies
), char_codes AS (
    SELECT coalesce(array_agg(code), '{{}}') AS codes FROM vehicles.characteristic_values
), dup_vin AS (
    -- Duplicates inside the file are rare: hashing the keys alone, then joining the few repeated
    -- ones back, costs far less than sorting every staged row by VIN and by plate.
    SELECT upper(replace(coalesce(vin, ''), ' ', '')) AS k, min(row_no) AS first_row
    FROM pg_temp.{STAGING} GROUP BY 1 HAVING count(*) > 1
), dup_plate AS (
    SELECT k, min(row_no) AS first_row
    FROM (SELECT replace({n_plate}, ' ', '') AS k, row_no FROM pg_temp.{STAGING} st OFFSET 0) p  -- normalised once
    WHERE k IS NOT NULL GROUP BY k HAVING count(*) > 1
), checked AS MATERIALIZED (
    SELECT s.row_no, s.reason, s.existing_id IS NOT NULL AS existing, s.n_vin, s.n_plate, s.n_owners, s.n_chars,
           s.n_status, s.b_name, s.m_name, s.t_code, s.t_category, s.e_label, s.commercial_name, s.colour,
           s.customs_ref, s.remarks, s.first_registration_date, {raw_cols},
           -- the original row only for a rejected one, for the error file
           CASE WHEN s.reason IS NOT NULL THEN ARRAY[{", ".join(f"s.{n}" for n in CSV_COLUMNS)}] END AS src
    FROM (
      SELECT s.*,
        CASE
          -- The common path: one cheap predicate that implies every detailed check below passes.
          -- Measured: regular expressions (2-4 us a row each here), translate() and the SQL helper
          -- functions cost more than the whole rest of the row, so character sets are checked with
          -- ltrim(), shapes with LIKE and lengths in bytes; casts only after their text was checked.
          -- It may refuse a row the detailed checks accept (an odd date form, 30 accented letters):
          -- such a row takes the slow path below and is still inserted.
          WHEN s.pre_reason IS NULL
               AND octet_length(s.n_vin) = 17 AND ltrim(s.n_vin, '0123456789ABCDEFGHJKLMNPRSTUVWXYZ') = ''
               AND (s.vin_first IS NULL OR s.vin_first = s.row_no)
               AND s.b_name IS NOT NULL
               AND CASE WHEN ltrim(concat({int_text}), '0123456789') = '' AND {int_lengths}
                        THEN coalesce(nullif(s.year, '')::integer BETWEEN 1900 AND s.max_year, true) AND {int_ranges}
                        ELSE false END
               AND CASE WHEN coalesce(s.first_registration_date, '') = '' THEN true
                        WHEN octet_length(s.first_registration_date) = 10
                             AND substr(s.first_registration_date, 5, 1) = '-'
                             AND substr(s.first_registration_date, 8, 1) = '-'
                             AND ltrim(replace(s.first_registration_date, '-', ''), '0123456789') = ''
                             AND left(s.first_registration_date, 1) IN ('1', '2')
                        THEN substr(s.first_registration_date, 9, 2)::integer BETWEEN 1 AND
                             CASE substr(s.first_registration_date, 6, 2)
                                  WHEN '02' THEN CASE WHEN left(s.first_registration_date, 4)::integer % 4 = 0
                                                       AND (left(s.first_registration_date, 4)::integer % 100 <> 0
                                                            OR left(s.first_registration_date, 4)::integer % 400 = 0)
                                                      THEN 29 ELSE 28 END
                                  WHEN '04' THEN 30 WHEN '06' THEN 30 WHEN '09' THEN 30 WHEN '11' THEN 30
                                  WHEN '01' THEN 31 WHEN '03' THEN 31 WHEN '05' THEN 31 WHEN '07' THEN 31
                                  WHEN '08' THEN 31 WHEN '10' THEN 31 WHEN '12' THEN 31
                                  ELSE 0 END
                        ELSE false END
               -- a plate: letters, digits and single inner spaces, at most 20
               AND (s.n_plate IS NULL
                    OR (octet_length(s.n_plate) <= 20 AND ltrim(s.n_plate, '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ ') = ''
                        AND strpos(s.n_plate, '  ') = 0 AND left(s.n_plate, 1) <> ' ' AND right(s.n_plate, 1) <> ' '))
               -- k user ids: hex digits only, and exactly 4k dashes and k-1 semicolons, all where the
               -- pattern puts them, so every other position holds a hex digit
               AND (s.n_owners = ''
                    OR (octet_length(s.n_owners) % 37 = 36 AND ltrim(s.n_owners, '0123456789abcdef-;') = ''
                        AND s.n_owners LIKE rtrim(repeat('________-____-____-____-____________;',
                                                         (octet_length(s.n_owners) + 1) / 37), ';')
                        AND octet_length(replace(s.n_owners, '-', '')) = octet_length(s.n_owners)
                                                                         - 4 * ((octet_length(s.n_owners) + 1) / 37)
                        AND octet_length(replace(s.n_owners, ';', '')) = octet_length(s.n_owners)
                                                                         - (octet_length(s.n_owners) + 1) / 37 + 1))
               AND (s.n_chars = '' OR string_to_array(s.n_chars, ';') <@ s.char_codes)
               AND s.n_status IN ('active', 'stolen', 'destroyed', 'exported')
               -- bytes bound characters from above: no character count on the common path
               AND coalesce(octet_length(s.commercial_name), 0) <= 200 AND coalesce(octet_length(s.colour), 0) <= 50
               AND coalesce(octet_length(s.customs_ref), 0) <= 100 AND coalesce(octet_length(s.remarks), 0) <= 1000
          THEN CASE WHEN s.existing_id IS NOT NULL THEN NULL
                    WHEN s.plate_first < s.row_no THEN 'plate: duplicate of an earlier row of this file'
                    WHEN s.plate_owner_vin IS NOT NULL THEN 'plate: already assigned to another vehicle'
               END
          -- A row that failed the fast predicate: every check in order, the first that fails names
          -- the reason. Catalogue names come from small per-row lookups, run for these rows only.
          ELSE (SELECT CASE
            WHEN s.pre_reason IS NOT NULL THEN s.pre_reason
            WHEN s.n_vin = '' THEN 'vin: missing'
            WHEN length(s.n_vin) <> 17 THEN 'vin: must be 17 characters, got ' || length(s.n_vin)
            WHEN translate(s.n_vin, 'ABCDEFGHJKLMNPRSTUVWXYZ0123456789', '') <> ''
                 THEN CASE WHEN s.n_vin ~ '[IOQ]' THEN 'vin: the letters I, O and Q are never used'
                           ELSE 'vin: only letters and digits' END
            WHEN s.vin_first < s.row_no THEN 'vin: duplicate of an earlier row of this file'
            WHEN coalesce(btrim(s.make), '') = '' THEN 'make: missing'
            WHEN d.b_name IS NULL THEN 'make: unknown brand ' || quote_literal(btrim(s.make))
            WHEN coalesce(btrim(s.model), '') = '' THEN 'model: missing'
            WHEN d.m_name IS NULL THEN 'model: unknown model ' || quote_literal(btrim(s.model)) || ' for ' || d.b_name
            WHEN d.t_code IS NULL THEN 'vehicle_type: unknown type ' || quote_literal(btrim(s.vehicle_type))
            WHEN coalesce(btrim(s.category), '') <> '' AND lower(btrim(s.category)) <> d.t_category
                 THEN 'category: ' || quote_literal(btrim(s.category)) || ' does not match type ' || d.t_code
            WHEN coalesce(btrim(s.energy), '') = '' THEN 'energy: missing'
            WHEN d.e_label IS NULL THEN 'energy: unknown energy ' || quote_literal(btrim(s.energy))
            WHEN NOT vehicles.is_int_in(s.year, 1900, s.max_year)
                 THEN 'year: expected a year from 1900 to next year, got ' || quote_literal(s.year)
{int_checks}
            WHEN coalesce(s.first_registration_date, '') <> '' AND NOT vehicles.is_iso_date(s.first_registration_date)
                 THEN 'first_registration_date: expected an existing date YYYY-MM-DD, got '
                      || quote_literal(s.first_registration_date)
            WHEN s.n_plate IS NOT NULL AND (s.n_plate !~ '^[A-Z0-9]+( [A-Z0-9]+)*$' OR length(s.n_plate) > 20)
                 THEN 'plate: only letters, digits and single spaces'
            WHEN s.n_owners <> '' AND NOT vehicles.is_uuid_list(s.n_owners)
                 THEN 'owners: expected user ids (UUID) separated by ;'
            WHEN s.n_chars <> '' AND NOT (string_to_array(s.n_chars, ';') <@ s.char_codes)
                 THEN 'characteristics: unknown code in ' || quote_literal(s.n_chars)
            WHEN s.n_status NOT IN ('active', 'stolen', 'destroyed', 'exported')
                 THEN 'status: expected active, stolen, destroyed or exported'
            WHEN length(coalesce(s.commercial_name, '')) > 200 OR length(coalesce(s.colour, '')) > 50
                 OR length(coalesce(s.customs_ref, '')) > 100 OR length(coalesce(s.remarks, '')) > 1000
                 THEN 'text too long (commercial_name 200, colour 50, customs_ref 100, remarks 1000)'
            WHEN s.existing_id IS NOT NULL THEN NULL
            WHEN s.plate_first < s.row_no THEN 'plate: duplicate of an earlier row of this file'
            WHEN s.plate_owner_vin IS NOT NULL THEN 'plate: already assigned to another vehicle'
          END
          FROM (SELECT b.name AS b_name, m.name AS m_name, t.code AS t_code, t.category AS t_category,
                       (SELECT e.label FROM energy_keys e WHERE e.k = lower(btrim(s.energy)) LIMIT 1) AS e_label
                FROM (SELECT NULL) one
                LEFT JOIN LATERAL (SELECT * FROM brand_keys b WHERE b.k = lower(btrim(s.make)) LIMIT 1) b ON true
                LEFT JOIN vehicles.models m ON m.brand_code = b.code AND lower(m.name) = lower(btrim(s.model))
                LEFT JOIN vehicles.types t
                       ON t.code = coalesce(nullif(lower(btrim(s.vehicle_type)), ''), m.vehicle_type)) d)
        END AS reason
      FROM (
        SELECT n.*, c.b_name, c.m_name, c.t_code, c.t_category, c.e_label, dv.first_row AS vin_first,
               dp.first_row AS plate_first, v.id AS existing_id, pv.vin AS plate_owner_vin, cc.codes AS char_codes,
               extract(year FROM now())::integer + 1 AS max_year
        FROM (
          SELECT st.*,
                 upper(replace(coalesce(st.vin, ''), ' ', '')) AS n_vin,
                 {n_plate} AS n_plate,
                 lower(replace(coalesce(st.owners, ''), ' ', '')) AS n_owners,
                 lower(replace(coalesce(st.characteristics, ''), ' ', '')) AS n_chars,
                 coalesce(nullif(lower(btrim(st.status)), ''), 'active') AS n_status,
                 lower(btrim(st.make)) AS make_k, lower(btrim(st.model)) AS model_k,
                 coalesce(lower(btrim(st.vehicle_type)), '') AS type_k,
                 coalesce(lower(btrim(st.category)), '') AS category_k, lower(btrim(st.energy)) AS energy_k
          FROM pg_temp.{STAGING} st
          OFFSET 0  -- a fence: each normalised value is computed once per row, not once per use
        ) n
        CROSS JOIN char_codes cc
        LEFT JOIN pg_temp.{COMBOS} c ON (c.make_k, c.model_k, c.type_k, c.category_k, c.energy_k)
                            = (n.make_k, n.model_k, n.type_k, n.category_k, n.energy_k)
        LEFT JOIN dup_vin dv ON dv.k = n.n_vin
        LEFT JOIN dup_plate dp ON dp.k = replace(n.n_plate, ' ', '')
        LEFT JOIN vehicles.vehicles v ON v.vin = n.n_vin
        LEFT JOIN vehicles.vehicles pv ON pv.plate_key = replace(n.n_plate, ' ', '')
        OFFSET 0
      ) s
      OFFSET 0
    ) s
), rejected AS (
    INSERT INTO pg_temp.{REJECTS} (row_no, reason, {", ".join(CSV_COLUMNS)})
    SELECT c.row_no, c.reason, {", ".join(f"c.src[{i}]" for i in range(1, len(CSV_COLUMNS) + 1))} FROM checked c WHERE c.reason IS NOT NULL
    RETURNING 1
), inserted AS (
    INSERT INTO vehicles.vehicles (id, vin, plate, make, model, vehicle_type, category, commercial_name, year,
        colour, energy, {int_cols}, first_registration_date, customs_ref, characteristics, remarks, owners, status,
        created_by, updated_by, import_job)
    SELECT encode(overlay(k.base PLACING int4send(c.row_no::int) FROM 13 FOR 4), 'hex')::uuid, c.n_vin, c.n_plate,
           c.b_name, c.m_name, c.t_code, c.t_category,
           btrim(coalesce(c.commercial_name, '')), nullif(c.year, '')::integer, btrim(coalesce(c.colour, '')),
           c.e_label, {int_values}, nullif(c.first_registration_date, '')::date, btrim(coalesce(c.customs_ref, '')),
           CASE WHEN c.n_chars = '' THEN '{{}}'::text[] ELSE string_to_array(c.n_chars, ';') END,
           coalesce(c.remarks, ''),
           CASE WHEN c.n_owners = '' THEN '{{}}'::uuid[] ELSE string_to_array(c.n_owners, ';')::uuid[] END,
           c.n_status, $1, $1, $2
    -- One UUIDv7 per import, its last 4 bytes replaced by the row number: ids stay time-ordered,
    -- follow the file's order, and cost a fraction of a random UUID per row.
    FROM checked c CROSS JOIN (SELECT uuid_send(vehicles.uuid7()) AS base) k
    WHERE c.reason IS NULL AND NOT c.existing
    RETURNING 1
)
SELECT (SELECT count(*) FROM pg_temp.{STAGING}) AS total,
       (SELECT count(*) FROM inserted) AS inserted,
       (SELECT count(*) FROM rejected) AS rejected
"""


# Every valid (make, model, type, category, energy) spelling with what it resolves to: a few tens of
# thousands of rows built in milliseconds, so one hash join resolves the whole catalogue part of a
# row instead of five. A temporary table of its own, analysed, because the planner cannot estimate
# this cross product from the catalogue and, expecting millions of rows, would split the join into
# batches spilled to disk. A row without a match is wrong somewhere; the detailed checks say where.
COMBOS_SQL = f"""
CREATE TEMP TABLE {COMBOS} AS
SELECT DISTINCT ON (b.k, lower(m.name), tk.k, ck.k, e.k)
       b.k AS make_k, lower(m.name) AS model_k, tk.k AS type_k, ck.k AS category_k, e.k AS energy_k,
       b.name AS b_name, m.name AS m_name, t.code AS t_code, t.category AS t_category, e.label AS e_label
FROM (SELECT code, name, lower(name) AS k FROM vehicles.brands
      UNION SELECT code, name, code FROM vehicles.brands) b
JOIN vehicles.models m ON m.brand_code = b.code
CROSS JOIN vehicles.types t
-- an empty type means the model's own type; an empty category is always accepted
CROSS JOIN LATERAL (SELECT t.code UNION ALL SELECT '' WHERE t.code = m.vehicle_type) tk (k)
CROSS JOIN LATERAL (VALUES (''), (t.category)) ck (k)
CROSS JOIN (SELECT label, lower(label) AS k FROM vehicles.energies
            UNION SELECT label, code FROM vehicles.energies) e
ORDER BY b.k, lower(m.name), tk.k, ck.k, e.k, b.code, e.label
"""

IMPORT_SQL = _import_sql()


async def staged_rows(con: asyncpg.Connection) -> int:
    return await con.fetchval(f"SELECT count(*) FROM pg_temp.{STAGING}")


async def registry_size_estimate(con: asyncpg.Connection) -> int:
    """Rows of vehicles.vehicles as the planner knows them (cheap; -1 before the first ANALYZE)."""
    return await con.fetchval("SELECT reltuples::bigint FROM pg_class WHERE oid = 'vehicles.vehicles'::regclass")


async def drop_secondary_indexes(con: asyncpg.Connection) -> list[str]:
    """Drop every index of vehicles.vehicles but the primary key; return their definitions.

    Read from the catalogue, so a later migration's index comes back exactly as it defined it.
    """
    rows = await con.fetch(
        "SELECT quote_ident(i.relname) AS name, pg_get_indexdef(i.oid) AS def FROM pg_index x"
        " JOIN pg_class i ON i.oid = x.indexrelid"
        " WHERE x.indrelid = 'vehicles.vehicles'::regclass AND NOT x.indisprimary"
    )
    for r in rows:
        await con.execute(f"DROP INDEX vehicles.{r['name']}")
    return [r["def"] for r in rows]


async def create_indexes(con: asyncpg.Connection, definitions: list[str]) -> None:
    for definition in definitions:
        await con.execute(definition)


async def import_staged(con: asyncpg.Connection, job_id: UUID, by: str) -> asyncpg.Record:
    """Validate the staged rows, insert the good ones, keep the rejected ones: (total, inserted, rejected)."""
    await con.execute(f"DROP TABLE IF EXISTS pg_temp.{COMBOS}")
    await con.execute(COMBOS_SQL)
    # Real row counts for the planner: the freshly filled staging table has no statistics, and a
    # wrong guess makes hash joins split into batches on disk.
    await con.execute(f"ANALYZE pg_temp.{COMBOS}, pg_temp.{STAGING}")
    return await con.fetchrow(IMPORT_SQL, by, job_id)


async def write_rejects(con: asyncpg.Connection, path: str) -> None:
    """The rejected rows, with their row number and reason, as a CSV file (header first)."""
    await con.copy_from_query(
        f"SELECT row_no AS row, reason, {', '.join(CSV_COLUMNS)} FROM pg_temp.{REJECTS} ORDER BY row_no",
        output=path,
        format="csv",
        header=True,
        encoding="utf8",
    )
