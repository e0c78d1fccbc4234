-- Every roadside lookup (issue 13): who looked up which plate, when, and whether a vehicle carried
-- it. Police hold only the lookup, so this is the trace of what they read. Append-only.
CREATE TABLE vehicles.roadside_lookups (
    id     uuid        PRIMARY KEY DEFAULT vehicles.uuid7(),
    by     text        NOT NULL,
    plate  text        NOT NULL,
    found  boolean     NOT NULL,
    at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX roadside_lookups_by ON vehicles.roadside_lookups (by, at);
CREATE INDEX roadside_lookups_plate ON vehicles.roadside_lookups (plate, at);

CREATE FUNCTION vehicles.roadside_lookups_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'vehicles.roadside_lookups is append-only';
END $$;
CREATE TRIGGER roadside_lookups_append_only BEFORE UPDATE OR DELETE ON vehicles.roadside_lookups
    FOR EACH ROW EXECUTE FUNCTION vehicles.roadside_lookups_are_append_only();
