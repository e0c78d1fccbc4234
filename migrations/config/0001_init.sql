-- Config service: settings, procedures (services), fee grid, feature flags, and their history.
CREATE SCHEMA IF NOT EXISTS config;

CREATE TABLE config.settings (
    key         text        PRIMARY KEY CHECK (key ~ '^[a-z][a-z0-9_.]{1,99}$'),
    type        text        NOT NULL CHECK (type IN ('string', 'integer', 'boolean', 'json')),
    value       jsonb       NOT NULL,
    public      boolean     NOT NULL DEFAULT false,
    description text        NOT NULL DEFAULT '',
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text        NOT NULL DEFAULT 'system'
);

CREATE TABLE config.services (
    code               text        PRIMARY KEY CHECK (code ~ '^[a-z][a-z0-9_]{1,49}$'),
    label_fr           text        NOT NULL CHECK (length(label_fr) BETWEEN 1 AND 200),
    label_en           text        NOT NULL CHECK (length(label_en) BETWEEN 1 AND 200),
    description        text        NOT NULL DEFAULT '',
    required_documents text[]      NOT NULL DEFAULT '{}',
    workflow           jsonb       NOT NULL DEFAULT '[]',
    active             boolean     NOT NULL DEFAULT true,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    updated_by         text        NOT NULL DEFAULT 'system'
);

-- A fee line: the base cost of a service (kind 'base', no match) or an adjustment that applies when
-- the owner type, the vehicle category or one of the vehicle's characteristics equals `match`.
CREATE TABLE config.fees (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    service_code text        NOT NULL REFERENCES config.services (code),
    kind         text        NOT NULL CHECK (kind IN ('base', 'owner_type', 'vehicle_category', 'characteristic')),
    match        text        NOT NULL DEFAULT '',
    label        text        NOT NULL DEFAULT '',
    amount       bigint      NOT NULL CHECK (amount >= 0),
    active       boolean     NOT NULL DEFAULT true,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    updated_by   text        NOT NULL DEFAULT 'system',
    CHECK ((kind = 'base') = (match = '')),
    UNIQUE (service_code, kind, match)
);

CREATE TABLE config.feature_flags (
    key             text        PRIMARY KEY CHECK (key ~ '^[a-z][a-z0-9_.]{1,99}$'),
    enabled         boolean     NOT NULL DEFAULT false,
    rollout_percent integer     CHECK (rollout_percent BETWEEN 0 AND 100),
    description     text        NOT NULL DEFAULT '',
    updated_at      timestamptz NOT NULL DEFAULT now(),
    updated_by      text        NOT NULL DEFAULT 'system'
);

-- Append-only: every change to the tables above, who made it and what it was before and after.
CREATE TABLE config.history (
    id         bigserial   PRIMARY KEY,
    entity     text        NOT NULL,
    key        text        NOT NULL,
    actor      text        NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    old_value  jsonb,
    new_value  jsonb
);
CREATE INDEX history_entity_key ON config.history (entity, key, at DESC);

CREATE FUNCTION config.history_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'config.history is append-only';
END $$;
CREATE TRIGGER history_append_only BEFORE UPDATE OR DELETE ON config.history
    FOR EACH ROW EXECUTE FUNCTION config.history_is_append_only();
