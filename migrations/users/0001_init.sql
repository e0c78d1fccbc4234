-- User service: users, their person or company profile, identities, addresses, company
-- representatives, roles and permissions as data, and append-only histories of every change.
CREATE SCHEMA IF NOT EXISTS users;

-- Lower case without the accents of French and Beninese names, for search (the `unaccent`
-- extension is not available on every server, so this is plain core SQL).
CREATE FUNCTION users.fold(value text) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURN
    translate(lower(value), 'àáâãäåçèéêëìíîïñòóôõöùúûüýÿœæɛɔ', 'aaaaaaceeeeiiiinooooouuuuyyoaeo');

CREATE TABLE users.users (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    kind           text        NOT NULL CHECK (kind IN ('person', 'company', 'staff')),
    status         text        NOT NULL CHECK (status IN ('pending', 'active', 'inactive')),
    kyc_status     text        NOT NULL DEFAULT 'unverified'
                               CHECK (kyc_status IN ('unverified', 'npi_verified', 'kyc_verified')),
    email          text        CHECK (email = lower(email) AND email ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$'),
    phone          text        CHECK (phone ~ '^\+22901[0-9]{8}$'),
    npi            text        CHECK (npi ~ '^[0-9]{10}$'),
    language       text        NOT NULL DEFAULT 'fr' CHECK (language IN ('fr', 'en')),
    -- A released row is an abandoned self-registration or an aborted creation: it stays (nothing is
    -- erased) but no longer holds its email, phone and NPI, which someone may then register again.
    released       boolean     NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    created_by     text        NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    updated_by     text        NOT NULL,
    deactivated_at timestamptz,
    CHECK (released = false OR status = 'inactive')
);
-- Login identifiers: one live account each.
CREATE UNIQUE INDEX users_email_live ON users.users (email) WHERE NOT released AND email IS NOT NULL;
CREATE UNIQUE INDEX users_phone_live ON users.users (phone) WHERE NOT released AND phone IS NOT NULL;
CREATE UNIQUE INDEX users_npi_live ON users.users (npi) WHERE NOT released AND npi IS NOT NULL;
-- Prefix search on identifiers (core btree, no pg_trgm).
CREATE INDEX users_email_prefix ON users.users (email text_pattern_ops);
CREATE INDEX users_phone_prefix ON users.users (phone text_pattern_ops);
CREATE INDEX users_npi_prefix ON users.users (npi text_pattern_ops);
CREATE INDEX users_status_created ON users.users (status, created_at DESC);

-- One profile per user: the person fields or the company fields, according to users.kind.
CREATE TABLE users.profiles (
    user_id      uuid        PRIMARY KEY REFERENCES users.users (id),
    last_name    text        CHECK (length(last_name) BETWEEN 1 AND 100),
    first_name   text        CHECK (length(first_name) BETWEEN 1 AND 100),
    birth_date   date,
    sex          text        CHECK (sex IN ('M', 'F')),
    company_name text        CHECK (length(company_name) BETWEEN 1 AND 200),
    ifu          text        CHECK (ifu ~ '^[0-9]{13}$'),
    rccm         text        CHECK (length(rccm) BETWEEN 1 AND 50),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX profiles_ifu ON users.profiles (ifu) WHERE ifu IS NOT NULL;
CREATE INDEX profiles_names ON users.profiles (users.fold(last_name) text_pattern_ops);

-- Identity documents and the registry that vouched for them (ANIP for an NPI, DGI for an IFU).
CREATE TABLE users.identities (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid        NOT NULL REFERENCES users.users (id),
    kind        text        NOT NULL CHECK (kind IN ('npi', 'ifu', 'rccm')),
    value       text        NOT NULL,
    source      text        NOT NULL DEFAULT 'declared' CHECK (source IN ('declared', 'anip', 'dgi')),
    verified_at timestamptz,
    verified_by text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, kind)
);

CREATE TABLE users.addresses (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid        NOT NULL REFERENCES users.users (id),
    kind       text        NOT NULL DEFAULT 'main' CHECK (kind IN ('main', 'postal', 'head_office')),
    line1      text        NOT NULL CHECK (length(line1) BETWEEN 1 AND 200),
    line2      text        CHECK (length(line2) <= 200),
    city       text        NOT NULL CHECK (length(city) BETWEEN 1 AND 100),
    department text        CHECK (length(department) <= 100),
    country    text        NOT NULL DEFAULT 'BJ' CHECK (country ~ '^[A-Z]{2}$'),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, kind)
);

-- The people who act for a company account; each one is a user of kind person.
CREATE TABLE users.representatives (
    company_id uuid        NOT NULL REFERENCES users.users (id),
    user_id    uuid        NOT NULL REFERENCES users.users (id),
    title      text        NOT NULL DEFAULT '' CHECK (length(title) <= 100),
    added_at   timestamptz NOT NULL DEFAULT now(),
    added_by   text        NOT NULL,
    PRIMARY KEY (company_id, user_id),
    CHECK (company_id <> user_id)
);
CREATE INDEX representatives_user ON users.representatives (user_id);

-- Roles and permissions are data (seeded from the README grid; admins assign roles).
CREATE TABLE users.roles (
    code        text PRIMARY KEY CHECK (code ~ '^[a-z][a-z0-9_]{1,49}$'),
    label_fr    text NOT NULL,
    label_en    text NOT NULL,
    description text NOT NULL DEFAULT ''
);

CREATE TABLE users.permissions (
    code        text PRIMARY KEY CHECK (code ~ '^[a-z]+:[a-z_]+$'),
    description text NOT NULL DEFAULT ''
);

CREATE TABLE users.role_permissions (
    role       text NOT NULL REFERENCES users.roles (code),
    permission text NOT NULL REFERENCES users.permissions (code),
    PRIMARY KEY (role, permission)
);

CREATE TABLE users.user_roles (
    user_id    uuid        NOT NULL REFERENCES users.users (id),
    role       text        NOT NULL REFERENCES users.roles (code),
    granted_at timestamptz NOT NULL DEFAULT now(),
    granted_by text        NOT NULL,
    PRIMARY KEY (user_id, role)
);
CREATE INDEX user_roles_role ON users.user_roles (role);

-- Append-only: every role change (who, when, old -> new).
CREATE TABLE users.role_history (
    id        bigserial   PRIMARY KEY,
    user_id   uuid        NOT NULL REFERENCES users.users (id),
    actor     text        NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    old_roles text[]      NOT NULL,
    new_roles text[]      NOT NULL
);
CREATE INDEX role_history_user ON users.role_history (user_id, at DESC);

-- Append-only: every other change to a user (creation, contact, profile, status, KYC).
CREATE TABLE users.user_history (
    id        bigserial   PRIMARY KEY,
    user_id   uuid        NOT NULL REFERENCES users.users (id),
    actor     text        NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    action    text        NOT NULL,
    old_value jsonb,
    new_value jsonb
);
CREATE INDEX user_history_user ON users.user_history (user_id, at DESC);

CREATE FUNCTION users.history_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%.% is append-only', TG_TABLE_SCHEMA, TG_TABLE_NAME;
END $$;
CREATE TRIGGER role_history_append_only BEFORE UPDATE OR DELETE ON users.role_history
    FOR EACH ROW EXECUTE FUNCTION users.history_is_append_only();
CREATE TRIGGER user_history_append_only BEFORE UPDATE OR DELETE ON users.user_history
    FOR EACH ROW EXECUTE FUNCTION users.history_is_append_only();
