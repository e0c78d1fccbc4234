-- Auth service: credentials, sessions and refresh-token families, denied access tokens, login
-- attempts and lockouts, one-time codes and second-factor challenges, TOTP secrets, recovery codes.
-- Users are referenced by id only (they live in the users schema); secrets are stored hashed.
CREATE SCHEMA IF NOT EXISTS auth;

-- One argon2id hash per user (the current password).
CREATE TABLE auth.credentials (
    user_id       uuid        PRIMARY KEY,
    password_hash text        NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    updated_by    text        NOT NULL DEFAULT 'system'
);

-- Every password a user has had (the current one included), to refuse the last N.
CREATE TABLE auth.password_history (
    id            bigserial   PRIMARY KEY,
    user_id       uuid        NOT NULL,
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX password_history_user ON auth.password_history (user_id, id DESC);

-- A session is a refresh-token family: rotating a refresh token keeps the session, reusing an old
-- one revokes it. `mfa` says the session proved a second factor; `limited` sessions may only set
-- up the second factor (a role that requires it, without it yet).
CREATE TABLE auth.sessions (
    id             uuid        PRIMARY KEY,
    user_id        uuid        NOT NULL,
    method         text        NOT NULL CHECK (method IN ('password', 'otp', 'register')),
    mfa            boolean     NOT NULL DEFAULT false,
    limited        boolean     NOT NULL DEFAULT false,
    client_ip      text,
    user_agent     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_used_at   timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    revoked_reason text
);
CREATE INDEX sessions_user ON auth.sessions (user_id, created_at DESC);

CREATE TABLE auth.refresh_tokens (
    token_hash  bytea       PRIMARY KEY,  -- sha256 of the opaque token (256 bits of entropy)
    session_id  uuid        NOT NULL REFERENCES auth.sessions (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    rotated_at  timestamptz            -- set when exchanged: presenting it again is a reuse
);
CREATE INDEX refresh_tokens_session ON auth.refresh_tokens (session_id);

-- Access tokens issued per session, so revoking a session denies every token it still has alive.
CREATE TABLE auth.access_tokens (
    jti         text        PRIMARY KEY,
    session_id  uuid        NOT NULL REFERENCES auth.sessions (id) ON DELETE CASCADE,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX access_tokens_session ON auth.access_tokens (session_id);

-- Deny list: access tokens refused until they expire. `id` is the cursor verifiers poll from.
CREATE TABLE auth.denied_tokens (
    id          bigserial   PRIMARY KEY,
    jti         text        NOT NULL UNIQUE,
    expires_at  timestamptz NOT NULL,
    reason      text        NOT NULL,
    denied_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX denied_tokens_expiry ON auth.denied_tokens (expires_at);

-- Every authentication attempt (password, one-time code, second factor), success or failure.
-- `account` is the user id when known, else the identifier as typed (normalised).
CREATE TABLE auth.login_attempts (
    id          bigserial   PRIMARY KEY,
    account     text        NOT NULL,
    user_id     uuid,
    client_ip   text,
    kind        text        NOT NULL CHECK (kind IN ('password', 'otp', 'two_factor')),
    success     boolean     NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_attempts_account ON auth.login_attempts (account, at DESC);
CREATE INDEX login_attempts_ip ON auth.login_attempts (client_ip, at DESC);

-- Audit of lockouts (never deleted); the active one is the row whose locked_until is in the future.
CREATE TABLE auth.lockouts (
    id           bigserial   PRIMARY KEY,
    scope        text        NOT NULL CHECK (scope IN ('account', 'address')),
    key          text        NOT NULL,
    user_id      uuid,
    client_ip    text,
    failures     integer     NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    locked_until timestamptz NOT NULL
);
CREATE INDEX lockouts_key ON auth.lockouts (scope, key, locked_until DESC);

-- One-time codes (login, register, password reset) and second-factor challenges. A row exists
-- whether or not the account does (user_id NULL then), so answers never reveal an account.
CREATE TABLE auth.otp_verifications (
    id           uuid        PRIMARY KEY,
    account      text        NOT NULL,
    user_id      uuid,
    purpose      text        NOT NULL CHECK (purpose IN ('login', 'register', 'password_reset', 'two_factor')),
    code_hash    bytea,               -- HMAC-SHA256 of the code; NULL for a second-factor challenge
    attempts     integer     NOT NULL DEFAULT 0,
    client_ip    text,
    method       text,                -- for a second-factor challenge: how the first factor was proved
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    consumed_at  timestamptz
);
CREATE INDEX otp_verifications_account ON auth.otp_verifications (account, purpose, created_at DESC);

CREATE TABLE auth.totp (
    user_id         uuid        PRIMARY KEY,
    secret          text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    enabled_at      timestamptz,          -- NULL while the setup is not confirmed
    last_used_step  bigint      NOT NULL DEFAULT 0  -- refuses replaying a code already accepted
);

CREATE TABLE auth.recovery_codes (
    id          bigserial   PRIMARY KEY,
    user_id     uuid        NOT NULL,
    code_hash   bytea       NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    used_at     timestamptz
);
CREATE INDEX recovery_codes_user ON auth.recovery_codes (user_id);
