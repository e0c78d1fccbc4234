-- The relay claims with a lease and settles each row on its own (issue 8): who claimed a row and
-- until when, rows quarantined because they do not decode, and when retries started (the retry
-- horizon is measured from there, and a redrive starts it again).
ALTER TABLE bus.outbox
    ADD COLUMN claimed_by     text,
    ADD COLUMN lease_until    timestamptz,
    ADD COLUMN quarantined_at timestamptz,
    ADD COLUMN retry_from     timestamptz;

DROP INDEX bus.outbox_pending;
CREATE INDEX outbox_pending ON bus.outbox (id)
    WHERE published_at IS NULL AND dead_at IS NULL AND quarantined_at IS NULL;
-- Purge scans what was delivered, by age.
CREATE INDEX outbox_published ON bus.outbox (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX inbox_handled ON bus.inbox (handled_at);
