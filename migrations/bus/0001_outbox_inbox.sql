-- The runtime's schema: the transactional outbox every actor writes its events to, and the inbox
-- where each consumer records the events it has handled (deduplication of redeliveries).
CREATE SCHEMA IF NOT EXISTS bus;

CREATE TABLE bus.outbox (
    id              bigserial   PRIMARY KEY,
    event_id        uuid        NOT NULL UNIQUE,
    source          text        NOT NULL,
    type            text        NOT NULL,
    payload         jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    published_at    timestamptz,
    dead_at         timestamptz
);

-- The relay only ever scans what is still to deliver.
CREATE INDEX outbox_pending ON bus.outbox (id) WHERE published_at IS NULL AND dead_at IS NULL;

CREATE TABLE bus.inbox (
    consumer    text        NOT NULL,
    event_id    uuid        NOT NULL,
    handled_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
