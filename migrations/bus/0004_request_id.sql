-- The request an event was emitted under (X-Request-ID), delivered with it: what its consumers do
-- (and audit) is traced to the request that caused it.
ALTER TABLE bus.outbox ADD COLUMN request_id text;
