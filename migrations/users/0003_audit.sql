-- The tamper-evident audit trail of users (simveb/audit.py): one hash chain, appended in the
-- transaction of each security-relevant change. hash = sha256 of the row's canonical encoding with
-- prev_hash; seq is gap-free because appends lock the head row (the last seq and hash).
CREATE TABLE users.audit (
    seq        bigint      PRIMARY KEY,
    at         timestamptz NOT NULL,
    actor      text        NOT NULL,
    subject    text        NOT NULL,
    action     text        NOT NULL,
    detail     jsonb       NOT NULL DEFAULT '{}',
    request_id text,
    prev_hash  text        NOT NULL,
    hash       text        NOT NULL UNIQUE
);
CREATE INDEX audit_at ON users.audit (at DESC, seq DESC);
CREATE INDEX audit_subject ON users.audit (subject, at DESC);

CREATE TABLE users.audit_head (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq  bigint  NOT NULL,
    hash text    NOT NULL
);

-- Append-only for the application: an UPDATE or DELETE through any code path fails. Someone with
-- the owner's rights can still disable this; the hash chain is what shows it afterwards.
CREATE FUNCTION users.audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only';
END
$$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON users.audit
    FOR EACH ROW EXECUTE FUNCTION users.audit_append_only();

-- Who reads the trail: `audit:read`, held by admin (the seed adds it to new databases; databases
-- seeded before get it here, when the admin role exists).
INSERT INTO users.permissions (code, description)
    SELECT 'audit:read', 'read the audit trail of every service'
    WHERE EXISTS (SELECT 1 FROM users.roles WHERE code = 'admin')
    ON CONFLICT (code) DO NOTHING;
INSERT INTO users.role_permissions (role, permission)
    SELECT 'admin', 'audit:read' WHERE EXISTS (SELECT 1 FROM users.permissions WHERE code = 'audit:read')
    ON CONFLICT DO NOTHING;
