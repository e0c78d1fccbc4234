-- Vehicle service: catalogue, vehicles (carte grise), legal standing, append-only history, import jobs.
CREATE SCHEMA IF NOT EXISTS vehicles;

-- UUID version 7 (time-ordered) from core functions only: ids sort by creation, so the primary key
-- doubles as the cursor of paginated searches and bulk inserts append to the right of the index.
CREATE FUNCTION vehicles.uuid7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

-- Row checks of the bulk import, which must reject a bad row instead of aborting the statement:
-- a calendar date in ISO form that really exists (2024-02-30 does not), and a ';'-separated list of
-- user ids. PostgreSQL 16 answers with pg_input_is_valid (the input functions themselves, so "valid"
-- means exactly "castable", and far cheaper than regular expressions on a million rows); older
-- servers get the same answers from regular expressions and arithmetic.
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 160000 THEN
        EXECUTE $f$
            CREATE FUNCTION vehicles.is_iso_date(value text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $b$
                SELECT length(value) = 10 AND substr(value, 5, 1) = '-' AND substr(value, 8, 1) = '-'
                       AND substr(value, 1, 1) IN ('1', '2') AND pg_input_is_valid(value, 'date')
            $b$
        $f$;
        EXECUTE $f$
            CREATE FUNCTION vehicles.is_uuid_list(value text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $b$
                SELECT strpos(value, ',') = 0 AND strpos(value, '{') = 0 AND strpos(value, '}') = 0
                       AND strpos(value, '"') = 0 AND strpos(value, '\') = 0
                       AND pg_input_is_valid('{' || replace(value, ';', ',') || '}', 'uuid[]')
            $b$
        $f$;
    ELSE
        EXECUTE $f$
            CREATE FUNCTION vehicles.is_iso_date(value text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $b$
                SELECT value ~ '^[12][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$'
                       AND substr(value, 9, 2)::int <= extract(day FROM make_date(substr(value, 1, 4)::int,
                           substr(value, 6, 2)::int, 1) + interval '1 month - 1 day')::int
            $b$
        $f$;
        EXECUTE $f$
            CREATE FUNCTION vehicles.is_uuid_list(value text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $b$
                SELECT value ~ ('^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'
                                '(;[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})*$')
            $b$
        $f$;
    END IF;
END $$;

-- A whole number in [lo, hi], or empty; checked without casting first, for the same reason.
-- translate() rather than a regular expression: this runs for several columns of every imported row.
CREATE FUNCTION vehicles.is_int_in(value text, lo integer, hi integer) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN value IS NULL OR value = '' THEN true
                WHEN length(value) > 9 OR translate(value, '0123456789', '') <> '' THEN false
                ELSE value::integer BETWEEN lo AND hi END
$$;

-- --- catalogue --------------------------------------------------------------------------------------

CREATE TABLE vehicles.categories (
    code  text PRIMARY KEY CHECK (code ~ '^[a-z][a-z0-9_]{1,49}$'),
    label text NOT NULL CHECK (length(label) BETWEEN 1 AND 200)
);

CREATE TABLE vehicles.energies (
    code  text PRIMARY KEY CHECK (code ~ '^[a-z][a-z0-9_]{1,49}$'),
    label text NOT NULL UNIQUE CHECK (length(label) BETWEEN 1 AND 100)
);

CREATE TABLE vehicles.types (
    code     text PRIMARY KEY CHECK (code ~ '^[a-z][a-z0-9_]{1,49}$'),
    label    text NOT NULL CHECK (length(label) BETWEEN 1 AND 200),
    category text NOT NULL REFERENCES vehicles.categories (code)
);

CREATE TABLE vehicles.brands (
    code    text PRIMARY KEY CHECK (code ~ '^[a-z][a-z0-9_]{1,49}$'),
    name    text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    country text NOT NULL DEFAULT '' CHECK (length(country) <= 100),
    active  boolean NOT NULL DEFAULT true
);
CREATE UNIQUE INDEX brands_name ON vehicles.brands (lower(name));

CREATE TABLE vehicles.models (
    id           bigserial PRIMARY KEY,
    brand_code   text NOT NULL REFERENCES vehicles.brands (code),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    vehicle_type text NOT NULL REFERENCES vehicles.types (code),
    active       boolean NOT NULL DEFAULT true
);
CREATE UNIQUE INDEX models_brand_name ON vehicles.models (brand_code, lower(name));

CREATE TABLE vehicles.characteristic_categories (
    code  text PRIMARY KEY CHECK (code ~ '^[a-z][a-z0-9_]{1,49}$'),
    label text NOT NULL CHECK (length(label) BETWEEN 1 AND 200)
);

-- Value codes are the `match` of the config fee grid's characteristic adjustments (tinted_windows …).
CREATE TABLE vehicles.characteristic_values (
    code          text PRIMARY KEY CHECK (code ~ '^[a-z][a-z0-9_]{1,49}$'),
    category_code text NOT NULL REFERENCES vehicles.characteristic_categories (code),
    label         text NOT NULL CHECK (length(label) BETWEEN 1 AND 200)
);

-- --- vehicles ---------------------------------------------------------------------------------------

-- make, model, vehicle_type, category and energy are checked against the catalogue by the actor and
-- by the import (no foreign key: the catalogue may retire a model without touching registered cars).
CREATE TABLE vehicles.vehicles (
    id                      uuid        PRIMARY KEY DEFAULT vehicles.uuid7(),
    vin                     text        NOT NULL CHECK (vin ~ '^[A-HJ-NPR-Z0-9]{17}$'),
    plate                   text        CHECK (plate ~ '^[A-Z0-9]+( [A-Z0-9]+)*$'),
    -- Lookups ignore spacing: "AB 1234 RB", "AB1234RB" and "ab 1234 rb" are the same plate.
    plate_key               text        GENERATED ALWAYS AS (replace(plate, ' ', '')) STORED,
    make                    text        NOT NULL,
    model                   text        NOT NULL,
    vehicle_type            text        NOT NULL,
    category                text        NOT NULL,
    commercial_name         text        NOT NULL DEFAULT '',
    year                    integer     CHECK (year BETWEEN 1900 AND 2100),
    colour                  text        NOT NULL DEFAULT '',
    energy                  text        NOT NULL,
    cylinder_cc             integer     CHECK (cylinder_cc BETWEEN 0 AND 20000),
    power_kw                integer     CHECK (power_kw BETWEEN 0 AND 2000),
    fiscal_hp               integer     CHECK (fiscal_hp BETWEEN 0 AND 200),
    seats                   integer     CHECK (seats BETWEEN 1 AND 100),
    max_mass_kg             integer     CHECK (max_mass_kg BETWEEN 0 AND 100000),
    service_mass_kg         integer     CHECK (service_mass_kg BETWEEN 0 AND 100000),
    empty_mass_kg           integer     CHECK (empty_mass_kg BETWEEN 0 AND 100000),
    first_registration_date date,
    customs_ref             text        NOT NULL DEFAULT '',
    characteristics         text[]      NOT NULL DEFAULT '{}',
    remarks                 text        NOT NULL DEFAULT '',
    owners                  uuid[]      NOT NULL DEFAULT '{}',
    status                  text        NOT NULL DEFAULT 'active'
                                        CHECK (status IN ('active', 'stolen', 'destroyed', 'exported')),
    filed_by                text,
    version                 integer     NOT NULL DEFAULT 1,
    created_at              timestamptz NOT NULL DEFAULT now(),
    created_by              text        NOT NULL,
    updated_at              timestamptz NOT NULL DEFAULT now(),
    updated_by              text        NOT NULL,
    archived_at             timestamptz,
    archived_by             text,
    import_job              uuid
);
-- One btree serves VIN equality, uniqueness and prefix search (text_pattern_ops answers LIKE 'ABC%').
CREATE UNIQUE INDEX vehicles_vin ON vehicles.vehicles (vin text_pattern_ops);
-- A plate belongs to one vehicle at a time; prefix search on the spacing-free form.
CREATE UNIQUE INDEX vehicles_plate_key ON vehicles.vehicles (plate_key text_pattern_ops) WHERE plate_key IS NOT NULL;
-- fastupdate off: a pending list would be scanned in full by every owner search until vacuum.
CREATE INDEX vehicles_owners ON vehicles.vehicles USING gin (owners) WITH (fastupdate = off);
-- text_pattern_ops: byte-wise comparisons (equality is all searches need), cheaper to maintain.
-- id last: the vehicles of one model come out in id order, so a page stops after `limit` rows.
CREATE INDEX vehicles_make_model ON vehicles.vehicles
    (lower(make) text_pattern_ops, lower(model) text_pattern_ops, id);
CREATE INDEX vehicles_filed_by ON vehicles.vehicles (filed_by) WHERE filed_by IS NOT NULL;
-- Most of the fleet is active: only the rare other statuses are indexed.
CREATE INDEX vehicles_status ON vehicles.vehicles (status) WHERE status <> 'active';

-- Fuzzy names: make and model are matched against the catalogue (a few hundred names), then the
-- vehicles are found through vehicles_make_model. pg_trgm scores typos when the server has it;
-- otherwise the actor falls back to core full-text prefix matching ('simple' configuration).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS pg_trgm;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'pg_trgm is available but cannot be created here: fuzzy search uses full-text prefixes';
        END;
    END IF;
END $$;

-- --- legal standing -------------------------------------------------------------------------------

-- Pledges (gage) and oppositions: active while lifted_at is null; never deleted.
CREATE TABLE vehicles.encumbrances (
    id          uuid        PRIMARY KEY DEFAULT vehicles.uuid7(),
    vehicle_id  uuid        NOT NULL REFERENCES vehicles.vehicles (id),
    kind        text        NOT NULL CHECK (kind IN ('pledge', 'opposition')),
    holder      text        NOT NULL DEFAULT '' CHECK (length(holder) <= 200),
    reference   text        NOT NULL DEFAULT '' CHECK (length(reference) <= 100),
    reason      text        NOT NULL DEFAULT '' CHECK (length(reason) <= 1000),
    declared_by text        NOT NULL,
    declared_at timestamptz NOT NULL DEFAULT now(),
    lifted_by   text,
    lifted_at   timestamptz,
    lift_reason text,
    CHECK ((lifted_at IS NULL) = (lifted_by IS NULL))
);
CREATE INDEX encumbrances_vehicle ON vehicles.encumbrances (vehicle_id) WHERE lifted_at IS NULL;
CREATE INDEX encumbrances_vehicle_all ON vehicles.encumbrances (vehicle_id, declared_at);

-- Blacklisted vehicles (subject = vehicle id) or persons (subject = user id): block every procedure.
CREATE TABLE vehicles.blacklist (
    id           uuid        PRIMARY KEY DEFAULT vehicles.uuid7(),
    subject_kind text        NOT NULL CHECK (subject_kind IN ('vehicle', 'person')),
    subject      text        NOT NULL CHECK (length(subject) BETWEEN 1 AND 100),
    reason       text        NOT NULL CHECK (length(reason) BETWEEN 1 AND 1000),
    added_by     text        NOT NULL,
    added_at     timestamptz NOT NULL DEFAULT now(),
    lifted_by    text,
    lifted_at    timestamptz,
    CHECK ((lifted_at IS NULL) = (lifted_by IS NULL))
);
CREATE UNIQUE INDEX blacklist_active ON vehicles.blacklist (subject_kind, subject) WHERE lifted_at IS NULL;

-- --- history --------------------------------------------------------------------------------------

-- Append-only: every change of a vehicle (field, owners, plate, status, standing, archive).
CREATE TABLE vehicles.history (
    id         bigserial   PRIMARY KEY,
    vehicle_id uuid        NOT NULL REFERENCES vehicles.vehicles (id),
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text        NOT NULL,
    field      text        NOT NULL,
    old_value  jsonb,
    new_value  jsonb,
    reason     text        NOT NULL DEFAULT ''
);
CREATE INDEX history_vehicle ON vehicles.history (vehicle_id, id);

CREATE FUNCTION vehicles.history_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'vehicles.history is append-only';
END $$;
CREATE TRIGGER history_append_only BEFORE UPDATE OR DELETE ON vehicles.history
    FOR EACH ROW EXECUTE FUNCTION vehicles.history_is_append_only();

-- Vehicles are archived, never erased.
CREATE FUNCTION vehicles.vehicles_are_never_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'vehicles are archived, never deleted';
END $$;
CREATE TRIGGER vehicles_never_deleted BEFORE DELETE ON vehicles.vehicles
    FOR EACH ROW EXECUTE FUNCTION vehicles.vehicles_are_never_deleted();

-- --- import jobs ----------------------------------------------------------------------------------

CREATE TABLE vehicles.import_jobs (
    id          uuid        PRIMARY KEY DEFAULT vehicles.uuid7(),
    source      text        NOT NULL,
    error_path  text        NOT NULL,
    state       text        NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done', 'failed')),
    phase       text        NOT NULL DEFAULT '',
    total_rows  bigint      NOT NULL DEFAULT 0,
    inserted    bigint      NOT NULL DEFAULT 0,
    skipped     bigint      NOT NULL DEFAULT 0,
    rejected    bigint      NOT NULL DEFAULT 0,
    error       text,
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
