-- TOTP secrets encrypted at rest (AES-GCM, key from auth.totp_key or derived from the signing key,
-- bound to the user id). Rows written before keep `secret` in clear until the auth service seals them
-- at its next start; reads accept both forms meanwhile.
ALTER TABLE auth.totp ADD COLUMN secret_sealed bytea;
ALTER TABLE auth.totp ALTER COLUMN secret DROP NOT NULL;
ALTER TABLE auth.totp ADD CONSTRAINT totp_secret_present CHECK (secret IS NOT NULL OR secret_sealed IS NOT NULL);

-- Administrative actions on a user's credentials (a second factor reset, ...): who, whom, why, when.
CREATE TABLE auth.admin_actions (
    id          bigserial   PRIMARY KEY,
    action      text        NOT NULL,
    user_id     uuid        NOT NULL,
    actor       text        NOT NULL,
    reason      text        NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admin_actions_user ON auth.admin_actions (user_id, at DESC);
