-- Registrations (immatriculation) service: requests with their pinned workflow, the steps taken,
-- payments seen, plate assignments, renewal / transfer / duplicate history, plate formats, series
-- counters, reservations, issued plates, and the stored answers of idempotent POSTs.
CREATE SCHEMA IF NOT EXISTS registrations;

CREATE SEQUENCE registrations.request_number;

CREATE TABLE registrations.requests (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    number             text        NOT NULL UNIQUE,
    procedure          text        NOT NULL,
    status             text        NOT NULL,
    -- The procedure's transitions when the request was filed: a later edit of the catalogue does
    -- not strand open requests.
    workflow           jsonb       NOT NULL,
    applicant_id       uuid        NOT NULL,
    filed_by           uuid,
    vehicle_id         uuid,
    owner_type         text        NOT NULL,
    vehicle_category   text        NOT NULL,
    registration_type  text        NOT NULL DEFAULT 'ordinary',
    fee_total_xof      bigint      NOT NULL CHECK (fee_total_xof >= 0),
    fee_lines          jsonb       NOT NULL DEFAULT '[]',
    amount_paid_xof    bigint      NOT NULL DEFAULT 0,
    payment_id         uuid,
    assignee_id        uuid,
    assigned_at        timestamptz,
    required_documents text[]      NOT NULL DEFAULT '{}',
    declared_documents text[]      NOT NULL DEFAULT '{}',
    details            jsonb       NOT NULL DEFAULT '{}',
    plate              text,
    status_since       timestamptz NOT NULL DEFAULT now(),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    version            integer     NOT NULL DEFAULT 1
);
CREATE INDEX requests_cursor ON registrations.requests (created_at DESC, id DESC);
CREATE INDEX requests_applicant ON registrations.requests (applicant_id, created_at DESC);
CREATE INDEX requests_filed_by ON registrations.requests (filed_by, created_at DESC) WHERE filed_by IS NOT NULL;
CREATE INDEX requests_assignee ON registrations.requests (assignee_id, status);
CREATE INDEX requests_status ON registrations.requests (status, status_since);
CREATE INDEX requests_vehicle ON registrations.requests (vehicle_id);

-- Append-only: every transition taken.
CREATE TABLE registrations.steps (
    id                   bigserial   PRIMARY KEY,
    request_id           uuid        NOT NULL REFERENCES registrations.requests (id),
    from_status          text        NOT NULL,
    to_status            text        NOT NULL,
    by_sub               text        NOT NULL,
    at                   timestamptz NOT NULL DEFAULT clock_timestamp(),
    note                 text        NOT NULL DEFAULT '',
    visible_to_applicant boolean     NOT NULL DEFAULT true
);
CREATE INDEX steps_request ON registrations.steps (request_id, id);
CREATE INDEX steps_by ON registrations.steps (by_sub);

-- Payment outcomes received from the payments service (or the counter confirmation).
CREATE TABLE registrations.payments (
    id          bigserial   PRIMARY KEY,
    request_id  uuid        NOT NULL REFERENCES registrations.requests (id),
    payment_id  uuid,
    kind        text        NOT NULL CHECK (kind IN ('succeeded', 'failed', 'refunded', 'counter')),
    amount_xof  bigint      NOT NULL DEFAULT 0,
    provider    text        NOT NULL DEFAULT '',
    at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE registrations.plate_assignments (
    id          bigserial   PRIMARY KEY,
    request_id  uuid        NOT NULL REFERENCES registrations.requests (id),
    vehicle_id  uuid        NOT NULL,
    plate       text        NOT NULL,
    old_plate   text,
    at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE registrations.renewal_history (
    id          bigserial   PRIMARY KEY,
    request_id  uuid        NOT NULL REFERENCES registrations.requests (id),
    vehicle_id  uuid        NOT NULL,
    plate       text,
    at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE registrations.transfer_history (
    id              bigserial   PRIMARY KEY,
    request_id      uuid        NOT NULL REFERENCES registrations.requests (id),
    vehicle_id      uuid        NOT NULL,
    old_owners      uuid[]      NOT NULL,
    new_owners      uuid[]      NOT NULL,
    consent_by      uuid,
    consent_at      timestamptz,
    at              timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE registrations.duplicate_history (
    id          bigserial   PRIMARY KEY,
    request_id  uuid        NOT NULL REFERENCES registrations.requests (id),
    vehicle_id  uuid        NOT NULL,
    of_what     text        NOT NULL CHECK (of_what IN ('carte_grise', 'plate')),
    reason      text        NOT NULL CHECK (reason IN ('lost', 'stolen', 'damaged')),
    at          timestamptz NOT NULL DEFAULT now()
);

-- What each procedure does once validated: data, so the catalogue can add procedures without code.
-- plate: 'new' (next of the sequence), 'keep', 'prestige' (the number the request holds);
-- owners: 'keep' or 'transfer'. A procedure absent here keeps plate and owners.
CREATE TABLE registrations.procedure_effects (
    procedure   text    PRIMARY KEY,
    plate       text    NOT NULL CHECK (plate IN ('new', 'keep', 'prestige')),
    owners      text    NOT NULL CHECK (owners IN ('keep', 'transfer')),
    duplicate   boolean NOT NULL DEFAULT false,
    replaces    boolean NOT NULL DEFAULT true,
    history     text    CHECK (history IN ('renewal', 'transfer', 'duplicate'))
);
-- Rows: simveb/actors/registrations/seed_data.py (reference data, re-seeded like every domain's).

-- Plate formats per vehicle category and registration type. The template composes the plate from
-- the series letters and the zero-padded number; `alphabet` lists the letters series use (I, O and Q
-- are skipped: they read as 1 and 0).
CREATE TABLE registrations.plate_formats (
    code              text    PRIMARY KEY,
    category          text    NOT NULL,
    registration_type text    NOT NULL,
    template          text    NOT NULL CHECK (strpos(template, '{series}') > 0 AND strpos(template, '{number}') > 0),
    series_length     integer NOT NULL DEFAULT 2 CHECK (series_length BETWEEN 1 AND 3),
    alphabet          text    NOT NULL DEFAULT 'ABCDEFGHJKLMNPRSTUVWXYZ' CHECK (alphabet ~ '^[A-Z]+$'),
    number_digits     integer NOT NULL DEFAULT 4,
    max_number        integer NOT NULL DEFAULT 9999 CHECK (max_number BETWEEN 1 AND 999999),
    active            boolean NOT NULL DEFAULT true,
    UNIQUE (category, registration_type)
);

-- One counter per format: the next (series, number) to try. series NULL = every series used.
CREATE TABLE registrations.plate_series (
    format_code  text    PRIMARY KEY REFERENCES registrations.plate_formats (code),
    series       text,
    next_number  integer NOT NULL DEFAULT 1,
    issued       bigint  NOT NULL DEFAULT 0
);


-- Numbers the sequence must skip: one number or a range (in one series, or in every series when
-- series is NULL), a whole series (no numbers), or a prestige plate held by a request.
CREATE TABLE registrations.plate_reservations (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    format_code  text        NOT NULL REFERENCES registrations.plate_formats (code),
    series       text,
    number_from  integer,
    number_to    integer,
    plate        text,
    request_id   uuid,
    reason       text        NOT NULL DEFAULT '',
    by_sub       text        NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    released_at  timestamptz,
    released_by  text,
    CHECK ((number_from IS NULL) = (number_to IS NULL)),
    CHECK (number_from IS NULL OR number_from <= number_to),
    CHECK (number_from IS NOT NULL OR series IS NOT NULL OR plate IS NOT NULL)
);
CREATE INDEX plate_reservations_live ON registrations.plate_reservations (format_code, series)
    WHERE released_at IS NULL;
-- One live hold per prestige plate.
CREATE UNIQUE INDEX plate_reservations_prestige ON registrations.plate_reservations (plate)
    WHERE released_at IS NULL AND plate IS NOT NULL;

-- Every plate ever issued: the primary key is what makes "never twice" hold under any concurrency.
CREATE TABLE registrations.issued_plates (
    plate        text        PRIMARY KEY,
    format_code  text        NOT NULL,
    series       text,
    number       integer,
    request_id   uuid,
    vehicle_id   uuid,
    issued_at    timestamptz NOT NULL DEFAULT now()
);

-- The next series after p_series in p_alphabet (odometer: AZ -> BA), NULL after the last one:
-- the sequence ends there instead of running past Z.
CREATE FUNCTION registrations.next_series(p_series text, p_alphabet text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    chars text[] := regexp_split_to_array(p_series, '');
    i     integer := array_length(chars, 1);
    pos   integer;
BEGIN
    WHILE i >= 1 LOOP
        pos := strpos(p_alphabet, chars[i]);
        IF pos = 0 THEN
            RAISE EXCEPTION 'letter % is not in the plate alphabet %', chars[i], p_alphabet;
        END IF;
        IF pos < length(p_alphabet) THEN
            chars[i] := substr(p_alphabet, pos + 1, 1);
            RETURN array_to_string(chars, '');
        END IF;
        chars[i] := substr(p_alphabet, 1, 1);
        i := i - 1;
    END LOOP;
    RETURN NULL;
END $$;

-- Issue the next plate of a format in one round trip: lock the format's counter row, walk the
-- sequence skipping reserved numbers, ranges and series, insert into issued_plates (a plate already
-- there, e.g. a prestige one, is a collision: try the next), advance the counter. The row lock
-- serialises allocations of one format; the primary key of issued_plates guarantees uniqueness.
CREATE FUNCTION registrations.allocate_plate(p_format text, p_request uuid, p_vehicle uuid)
RETURNS SETOF registrations.issued_plates
LANGUAGE plpgsql AS $$
DECLARE
    f      registrations.plate_formats%ROWTYPE;
    s      text;
    n      integer;
    skip   record;
    cand   text;
    got    registrations.issued_plates%ROWTYPE;
BEGIN
    SELECT * INTO f FROM registrations.plate_formats WHERE code = p_format;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown plate format %', p_format USING ERRCODE = 'RG001';
    END IF;
    SELECT ps.series, ps.next_number INTO s, n FROM registrations.plate_series ps
        WHERE ps.format_code = p_format FOR UPDATE;
    LOOP
        IF s IS NULL THEN
            RAISE EXCEPTION 'plate format % has no series left', p_format USING ERRCODE = 'RG002';
        END IF;
        IF n > f.max_number THEN
            s := registrations.next_series(s, f.alphabet);
            n := 1;
            CONTINUE;
        END IF;
        SELECT r.number_from, r.number_to INTO skip FROM registrations.plate_reservations r
            WHERE r.format_code = p_format AND r.released_at IS NULL
              AND (r.series IS NULL OR r.series = s)
              AND (r.number_from IS NULL OR n BETWEEN r.number_from AND r.number_to)
              AND (r.number_from IS NOT NULL OR r.series IS NOT NULL)
            ORDER BY r.number_to DESC NULLS FIRST LIMIT 1;
        IF FOUND THEN
            n := CASE WHEN skip.number_from IS NULL THEN f.max_number + 1 ELSE skip.number_to + 1 END;
            CONTINUE;
        END IF;
        cand := replace(replace(f.template, '{series}', s), '{number}', lpad(n::text, f.number_digits, '0'));
        n := n + 1;
        INSERT INTO registrations.issued_plates (plate, format_code, series, number, request_id, vehicle_id)
            VALUES (cand, p_format, s, n - 1, p_request, p_vehicle)
            ON CONFLICT (plate) DO NOTHING
            RETURNING * INTO got;
        EXIT WHEN got.plate IS NOT NULL;
    END LOOP;
    UPDATE registrations.plate_series SET series = s, next_number = n, issued = issued + 1
        WHERE format_code = p_format;
    RETURN NEXT got;
END $$;

-- The first answer of each idempotent POST, replayed for a retry with the same key.
CREATE TABLE registrations.idempotency (
    sub          text        NOT NULL,
    key          text        NOT NULL,
    fingerprint  text        NOT NULL,
    reply        jsonb       NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sub, key)
);

-- When each staff member last got a request: ties of the fewest-open-requests rule go to the one
-- idle longest.
CREATE TABLE registrations.staff_activity (
    user_id          uuid        PRIMARY KEY,
    last_assigned_at timestamptz
);
