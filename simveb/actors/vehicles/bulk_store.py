"""SQL of the vehicles bulk pipeline: import jobs, the staging tables and the import statement, and
the export cursor's query. Only the `vehicles` schema and this connection's temporary tables.

Bulk import runs as a few set-based statements on one connection: COPY into a temporary staging
table, then one statement that validates every row, inserts the good ones and keeps the rejected ones
with their reason. Most rows are good: they pass one cheap combined predicate; only the others go
through the detailed checks that name the reason.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from simveb.actors.vehicles.messages import CSV_COLUMNS, ImportJob, VehicleFilter, Viewer
from simveb.actors.vehicles.store import FuzzyMode, build_where, catalogue_matches
from simveb.csvcells import safe_writer
from simveb.db import from_row

# --- export --------------------------------------------------------------------------------------------


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
    return from_row(ImportJob, row)


async def get_job(con: asyncpg.Connection, job_id: UUID) -> ImportJob | None:
    return from_row(
        ImportJob, await con.fetchrow(f"SELECT {_JOB_COLS} FROM vehicles.import_jobs WHERE id = $1", job_id)
    )


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


class ImportCounts(msgspec.Struct, frozen=True, kw_only=True):
    total: int
    inserted: int
    rejected: int


async def import_staged(con: asyncpg.Connection, job_id: UUID, by: str) -> ImportCounts:
    """Validate the staged rows, insert the good ones, keep the rejected ones: (total, inserted, rejected)."""
    await con.execute(f"DROP TABLE IF EXISTS pg_temp.{COMBOS}")
    await con.execute(COMBOS_SQL)
    # Real row counts for the planner: the freshly filled staging table has no statistics, and a
    # wrong guess makes hash joins split into batches on disk.
    await con.execute(f"ANALYZE pg_temp.{COMBOS}, pg_temp.{STAGING}")
    counts = from_row(ImportCounts, await con.fetchrow(IMPORT_SQL, by, job_id))
    assert counts is not None  # an aggregate: always one row
    return counts


async def write_rejects(con: asyncpg.Connection, path: str) -> None:
    """The rejected rows, with their row number and reason, as a CSV file (header first).

    Written through `csvcells` rather than COPY: these cells are whatever the uploaded file held,
    and the person reading the error file opens it in a spreadsheet.
    """
    query = f"SELECT row_no AS row, reason, {', '.join(CSV_COLUMNS)} FROM pg_temp.{REJECTS} ORDER BY row_no"
    f = await asyncio.to_thread(open, path, "w", encoding="utf-8", newline="")
    try:
        buf = io.StringIO()
        out = safe_writer(buf)
        out.writerow(["row", "reason", *CSV_COLUMNS])
        async with con.transaction():  # a cursor needs one; nested in the import's, it is a savepoint
            cursor = await con.cursor(query)
            while rows := await cursor.fetch(5000):
                out.writerows(tuple(r) for r in rows)
                await asyncio.to_thread(f.write, buf.getvalue())  # file I/O off the event loop
                buf.seek(0)
                buf.truncate()
        await asyncio.to_thread(f.write, buf.getvalue())
    finally:
        await asyncio.to_thread(f.close)
