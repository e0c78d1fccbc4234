-- Plates compare without their spaces, as the vehicle registry compares them ("AA0007RB" is
-- "AA 0007 RB"), and a plate found on another vehicle of the registry (typed in by hand, imported)
-- is kept as issued so the sequence never offers it again.
ALTER TABLE registrations.issued_plates
    ADD COLUMN plate_key text GENERATED ALWAYS AS (replace(plate, ' ', '')) STORED,
    ADD COLUMN taken_elsewhere boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX issued_plates_key ON registrations.issued_plates (plate_key);
CREATE INDEX issued_plates_request ON registrations.issued_plates (request_id) WHERE request_id IS NOT NULL;

DROP INDEX registrations.plate_reservations_prestige;
CREATE UNIQUE INDEX plate_reservations_prestige ON registrations.plate_reservations (replace(plate, ' ', ''))
    WHERE released_at IS NULL AND plate IS NOT NULL;

-- As 0001, plus: a candidate held as a prestige plate is skipped, and a collision on the plate key
-- (not only the exact text) is retried.
CREATE OR REPLACE FUNCTION registrations.allocate_plate(p_format text, p_request uuid, p_vehicle uuid)
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
        CONTINUE WHEN EXISTS (SELECT 1 FROM registrations.plate_reservations r
            WHERE r.released_at IS NULL AND r.plate IS NOT NULL AND replace(r.plate, ' ', '') = replace(cand, ' ', ''));
        INSERT INTO registrations.issued_plates (plate, format_code, series, number, request_id, vehicle_id)
            VALUES (cand, p_format, s, n - 1, p_request, p_vehicle)
            ON CONFLICT DO NOTHING
            RETURNING * INTO got;
        EXIT WHEN got.plate IS NOT NULL;
    END LOOP;
    UPDATE registrations.plate_series SET series = s, next_number = n, issued = issued + 1
        WHERE format_code = p_format;
    RETURN NEXT got;
END $$;
