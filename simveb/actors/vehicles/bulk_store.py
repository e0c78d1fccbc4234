"""SQL of the vehicles bulk pipeline: import jobs, the staging tables and the import statement, and
the export cursor's query. Only the `vehicles` schema and this connection's temporary tables.

Bulk import runs as a few set-based statements: COPY into a temporary staging table; one pass over
it for the keys repeated in the file or already registered; then per batch of staged rows, one
statement that validates them into an unlogged batch table (each row with its reason, the good ones
typed as inserted), the rejected ones copied to the rejects, and one INSERT ... SELECT ... ON CONFLICT
(vin) DO NOTHING of the good ones into the registry (on another connection, in its own transaction). Most rows are good: they pass one
cheap combined predicate; only the others go through the detailed checks that name the reason.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg

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
FLAGS = "vehicles_import_flags"

# The columns an import writes to vehicles.vehicles, in this order in a batch table (after row_no).
INSERT_COLUMNS: tuple[str, ...] = ("id", *CSV_COLUMNS, "created_by", "updated_by", "import_job")


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


# Case mapping of the fields whose valid values are ASCII only (VIN, plate, user ids, codes, status):
# in the "C" collation upper() and lower() map bytes instead of going through the locale's wide
# characters, a tenth of the check's time. A non-ASCII character is refused by these fields' checks
# either way, so no row's outcome changes.
ASCII = 'COLLATE "C"'


def _n_plate(alias: str) -> str:
    """The plate as stored: upper case, trimmed, inner runs of white space made one space; NULL if empty."""
    # strpos() rather than a regular expression for the three control characters: this runs twice a row.
    return (
        f"CASE WHEN {alias}.plate LIKE '%  %' OR strpos({alias}.plate, E'\\t') > 0"
        f" OR strpos({alias}.plate, E'\\n') > 0 OR strpos({alias}.plate, E'\\r') > 0"
        f" THEN nullif(upper(regexp_replace(btrim({alias}.plate), '\\s+', ' ', 'g') {ASCII}), '')"
        f" ELSE nullif(upper(btrim({alias}.plate) {ASCII}), '') END"
    )


def _check_sql(batch: str) -> str:
    """Validate one batch of staged rows (a block range of the staging table, $4 to $5) into the batch
    table: every row with its reason (NULL when good), the good ones typed as they are inserted."""
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

    def typed(cast: str) -> str:  # a cast that only a valid row's text is sure to pass
        return f"CASE WHEN c.reason IS NULL THEN {cast} END"

    int_values = ", ".join(typed(f"nullif(c.{name}, '')::integer") for name, _, _ in _INT_FIELDS)
    n_plate = _n_plate("st")
    return f"""
WITH brand_keys AS (
    -- a make is given by name or by code
    SELECT code, name, lower(name) AS k FROM vehicles.brands UNION SELECT code, name, code FROM vehicles.brands
), energy_keys AS (
    SELECT label, lower(label) AS k FROM vehicles.energies UNION SELECT label, code FROM vehicles.energies
), char_codes AS (
    SELECT coalesce(array_agg(code), '{{}}') AS codes FROM vehicles.characteristic_values
)
INSERT INTO {batch} (row_no, reason, existing, src, {", ".join(INSERT_COLUMNS)})
SELECT c.row_no, c.reason, c.existing_id IS NOT NULL,
       -- the original row only for a rejected one, for the error file
       CASE WHEN c.reason IS NOT NULL THEN ARRAY[{", ".join(f"c.{n}" for n in CSV_COLUMNS)}] END,
       -- $3: one UUIDv7 per import, its last 4 bytes replaced by the row number: ids stay time-ordered,
       -- follow the file's order, and cost a fraction of a random UUID per row.
       encode(overlay($3::bytea PLACING int4send(c.row_no::int) FROM 13 FOR 4), 'hex')::uuid, c.n_vin,
       c.n_plate, c.b_name, c.m_name, c.t_code, c.t_category,
       btrim(coalesce(c.commercial_name, '')), {typed("nullif(c.year, '')::integer")}, btrim(coalesce(c.colour, '')),
       c.e_label, {int_values}, {typed("nullif(c.first_registration_date, '')::date")},
       btrim(coalesce(c.customs_ref, '')),
       CASE WHEN c.n_chars = '' THEN '{{}}'::text[] ELSE string_to_array(c.n_chars, ';') END,
       coalesce(c.remarks, ''),
       CASE WHEN c.n_owners = '' THEN '{{}}'::uuid[] WHEN c.reason IS NULL THEN string_to_array(c.n_owners, ';')::uuid[] END,
       c.n_status, $1, $1, $2
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
        SELECT n.*, c.b_name, c.m_name, c.t_code, c.t_category, c.e_label, f.vin_first,
               f.plate_first, f.existing_id, f.plate_owner_vin, cc.codes AS char_codes,
               extract(year FROM now())::integer + 1 AS max_year
        FROM (
          SELECT st.*,
                 upper(replace(coalesce(st.vin, ''), ' ', '') {ASCII}) AS n_vin,
                 {n_plate} AS n_plate,
                 lower(replace(coalesce(st.owners, ''), ' ', '') {ASCII}) AS n_owners,
                 lower(replace(coalesce(st.characteristics, ''), ' ', '') {ASCII}) AS n_chars,
                 coalesce(nullif(lower(btrim(st.status) {ASCII}), ''), 'active') AS n_status,
                 lower(btrim(st.make)) AS make_k, lower(btrim(st.model)) AS model_k,
                 coalesce(lower(btrim(st.vehicle_type)), '') AS type_k,
                 coalesce(lower(btrim(st.category)), '') AS category_k, lower(btrim(st.energy)) AS energy_k
          FROM pg_temp.{STAGING} st
          WHERE st.ctid >= $4 AND st.ctid < $5
          OFFSET 0  -- a fence: each normalised value is computed once per row, not once per use
        ) n
        CROSS JOIN char_codes cc
        LEFT JOIN pg_temp.{COMBOS} c ON (c.make_k, c.model_k, c.type_k, c.category_k, c.energy_k)
                            = (n.make_k, n.model_k, n.type_k, n.category_k, n.energy_k)
        LEFT JOIN pg_temp.{FLAGS} f ON f.row_no = n.row_no
        OFFSET 0
      ) s
      OFFSET 0
    ) c
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

# Keys found twice in the file, and keys already in the registry, for the whole file at once (rows
# with none of these, nearly all of them, are not in the table): a batch then looks its rows up here
# instead of hashing every staged row again or probing the registry's indexes row by row.
FLAGS_SQL = f"""
CREATE TEMP TABLE {FLAGS} AS
WITH keys AS MATERIALIZED (
    SELECT row_no, upper(replace(coalesce(vin, ''), ' ', '') {ASCII}) AS vin_k, replace({_n_plate("st")}, ' ', '') AS plate_k
    FROM pg_temp.{STAGING} st
), dup_vin AS (
    -- Duplicates inside the file are rare: hashing the keys alone, then joining the few repeated
    -- ones back, costs far less than sorting every staged row by VIN and by plate.
    SELECT vin_k, min(row_no) AS first_row FROM keys GROUP BY 1 HAVING count(*) > 1
), dup_plate AS (
    SELECT plate_k, min(row_no) AS first_row FROM keys WHERE plate_k IS NOT NULL GROUP BY 1 HAVING count(*) > 1
)
SELECT k.row_no, dv.first_row AS vin_first, dp.first_row AS plate_first, v.id AS existing_id, pv.vin AS plate_owner_vin
FROM keys k
LEFT JOIN dup_vin dv ON dv.vin_k = k.vin_k
LEFT JOIN dup_plate dp ON dp.plate_k = k.plate_k
LEFT JOIN vehicles.vehicles v ON v.vin = k.vin_k
LEFT JOIN vehicles.vehicles pv ON pv.plate_key = k.plate_k
WHERE dv.first_row IS NOT NULL OR dp.first_row IS NOT NULL OR v.id IS NOT NULL OR pv.vin IS NOT NULL
"""


async def staged_rows(con: asyncpg.Connection) -> int:
    return await con.fetchval(f"SELECT count(*) FROM pg_temp.{STAGING}")


async def prepare_checks(con: asyncpg.Connection) -> None:
    """What every batch's checks look up: the catalogue's combinations, the duplicated and known keys."""
    await con.execute(f"DROP TABLE IF EXISTS pg_temp.{COMBOS}, pg_temp.{FLAGS}")
    await con.execute(COMBOS_SQL)
    await con.execute(FLAGS_SQL)
    await con.execute(f"CREATE INDEX ON pg_temp.{FLAGS} (row_no)")
    # Real row counts for the planner: the freshly filled tables have no statistics, and a wrong
    # guess makes hash joins split into batches on disk.
    # Of the staging table only its size matters (each batch is a block range of it): analysing one
    # column sets it without sorting samples of all the others.
    await con.execute(f"ANALYZE pg_temp.{COMBOS}, pg_temp.{STAGING} (row_no), pg_temp.{FLAGS}")


async def batch_ranges(con: asyncpg.Connection, staged: int, batch_rows: int) -> list[tuple[int, int]]:
    """Block ranges of the staging table of about batch_rows rows each, in row order.

    COPY appends to a fresh table, so its blocks hold the rows in file order: a batch is a TID range
    scan of its own blocks, never a scan of the whole table.
    """
    blocks = await con.fetchval(f"SELECT pg_relation_size('pg_temp.{STAGING}') / current_setting('block_size')::int")
    if staged == 0 or blocks == 0:
        return []
    per_batch = max(1, batch_rows * blocks // staged)
    return [(lo, min(lo + per_batch, blocks)) for lo in range(0, blocks, per_batch)]


def batch_table(job_id: UUID, batch: int) -> str:
    """A batch's validated rows, typed as inserted: unlogged, visible to the inserting connection."""
    return f'vehicles."import_{job_id.hex}_{batch}"'


async def check_batch(
    con: asyncpg.Connection, job_id: UUID, batch: int, blocks: tuple[int, int], base: bytes, by: str
) -> None:
    """Validate the staged rows of these blocks into the batch table (created here) and the rejects.

    The batch table holds every row of the batch with its reason (NULL: good) and whether its VIN is
    registered already; the rejected ones are copied to the rejects (few: a scan of the batch).
    """
    table = batch_table(job_id, batch)
    await con.execute(
        f"CREATE UNLOGGED TABLE {table} AS SELECT 0::bigint AS row_no, ''::text AS reason, false AS existing,"
        f" '{{}}'::text[] AS src, {', '.join(INSERT_COLUMNS)} FROM vehicles.vehicles WITH NO DATA"
    )
    lo, hi = blocks
    await con.execute(_check_sql(table), by, job_id, base, (lo, 0), (hi, 0))
    await con.execute(
        f"INSERT INTO pg_temp.{REJECTS} (row_no, reason, {', '.join(CSV_COLUMNS)})"
        f" SELECT row_no, reason, {', '.join(f'src[{i}]' for i in range(1, len(CSV_COLUMNS) + 1))}"
        f" FROM {table} WHERE reason IS NOT NULL"
    )


async def insert_batch(con: asyncpg.Connection, job_id: UUID, batch: int) -> int:
    """Insert a checked batch into the registry (in the caller's transaction); the count inserted.

    ON CONFLICT (vin) DO NOTHING: a vehicle registered with one of these VINs since the checks is
    skipped like any already registered one. A plate taken meanwhile raises UniqueViolationError.
    """
    cols = ", ".join(INSERT_COLUMNS)
    status = await con.execute(
        f"INSERT INTO vehicles.vehicles ({cols}) SELECT {cols} FROM {batch_table(job_id, batch)}"
        " WHERE reason IS NULL AND NOT existing ON CONFLICT (vin) DO NOTHING"
    )
    return int(status.rsplit(" ", 1)[1])


async def reject_taken_plates(con: asyncpg.Connection, job_id: UUID, batch: int) -> int:
    """Move the rows of a batch whose plate another vehicle took since the checks to the rejects.

    On the connection that staged the file: the rejects keep the row's original text.
    """
    table = batch_table(job_id, batch)
    status = await con.execute(
        f"""
        WITH moved AS (
            DELETE FROM {table} b USING vehicles.vehicles v
            WHERE b.reason IS NULL AND NOT b.existing
              AND v.plate_key = replace(b.plate, ' ', '') AND v.vin <> b.vin
              AND NOT EXISTS (SELECT 1 FROM vehicles.vehicles x WHERE x.vin = b.vin)
            RETURNING b.row_no
        )
        INSERT INTO pg_temp.{REJECTS} (row_no, reason, {", ".join(CSV_COLUMNS)})
        SELECT st.row_no, 'plate: already assigned to another vehicle', {", ".join(f"st.{c}" for c in CSV_COLUMNS)}
        FROM pg_temp.{STAGING} st JOIN moved USING (row_no)
        """
    )
    return int(status.rsplit(" ", 1)[1])


async def drop_batch(con: asyncpg.Connection, job_id: UUID, batch: int) -> None:
    await con.execute(f"DROP TABLE IF EXISTS {batch_table(job_id, batch)}")


async def drop_batches(con: asyncpg.Connection, job_id: UUID) -> None:
    """Drop what is left of a job's batch tables (after a failure)."""
    names = await con.fetch(
        "SELECT quote_ident(relname) AS name FROM pg_class WHERE relnamespace = 'vehicles'::regnamespace"
        " AND relkind = 'r' AND relname LIKE $1",
        f"import\\_{job_id.hex}\\_%",
    )
    for r in names:
        await con.execute(f"DROP TABLE IF EXISTS vehicles.{r['name']}")


async def drop_stale_batches(con: asyncpg.Connection) -> int:
    """Drop the batch tables an import left behind when its process died (how many were dropped).

    A table is stale unless its job is queued or running and younger than a day: a job's row says
    "queued" until the job saves its outcome, so a process that died mid-import leaves it so.
    """
    names = await con.fetch(
        "SELECT quote_ident(c.relname) AS name FROM pg_class c"
        " WHERE c.relnamespace = 'vehicles'::regnamespace AND c.relkind = 'r'"
        " AND c.relname ~ '^import_[0-9a-f]{32}_[0-9]+$'"
        " AND NOT EXISTS (SELECT 1 FROM vehicles.import_jobs j"
        "   WHERE replace(j.id::text, '-', '') = substr(c.relname, 8, 32)"
        "   AND j.state IN ('queued', 'running') AND j.created_at > now() - interval '1 day')"
    )
    for r in names:
        await con.execute(f"DROP TABLE IF EXISTS vehicles.{r['name']}")
    return len(names)


async def rejected_rows(con: asyncpg.Connection) -> int:
    return await con.fetchval(f"SELECT count(*) FROM pg_temp.{REJECTS}")


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
