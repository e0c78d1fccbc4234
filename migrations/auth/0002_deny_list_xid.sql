-- Deny list paged by transaction id, not by `id`: a bigserial is drawn when a row is inserted, not
-- when it commits, so a denial committed after a row with a larger id was skipped by a verifier
-- whose cursor had already passed it. `txid` is the inserting transaction; a verifier only moves its
-- cursor up to the oldest transaction still running (pg_snapshot_xmin), so nothing can commit behind it.
ALTER TABLE auth.denied_tokens ADD COLUMN txid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX denied_tokens_txid ON auth.denied_tokens (txid, id);
