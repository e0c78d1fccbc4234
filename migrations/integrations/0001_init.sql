-- Integrations service: a log of every call to an external registry, and the queue of non-urgent
-- lookups to try again later. No personal data: logs keep a keyed hash of the identifier only.
CREATE SCHEMA IF NOT EXISTS integrations;

-- One row per HTTP attempt to a registry (a lookup with retries writes several rows).
CREATE TABLE integrations.integration_logs (
    id              bigserial   PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    service         text        NOT NULL CHECK (service IN ('anip', 'dgi')),
    x_road_id       uuid        NOT NULL,
    identifier_hash text        NOT NULL CHECK (identifier_hash ~ '^[0-9a-f]{64}$'),
    attempt         integer     NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    origin          text        NOT NULL DEFAULT 'ask' CHECK (origin IN ('ask', 'queue')),
    duration_ms     integer     NOT NULL CHECK (duration_ms >= 0),
    outcome         text        NOT NULL CHECK (outcome IN (
                        'ok', 'not_found', 'timeout', 'connect_error', 'server_error', 'rejected',
                        'malformed', 'xroad_error')),
    http_status     integer,
    -- A short machine reason (an X-Road error type, an exception class), never a response body.
    error_code      text
);
CREATE INDEX integration_logs_service_at ON integrations.integration_logs (service, at DESC);
CREATE INDEX integration_logs_identifier ON integrations.integration_logs (identifier_hash);

-- Non-urgent lookups that failed because the registry was unavailable. The raw identifier is kept
-- here (it is needed to call again) and the row is deleted once the lookup completes.
CREATE TABLE integrations.retry_queue (
    id              bigserial   PRIMARY KEY,
    service         text        NOT NULL CHECK (service IN ('anip', 'dgi')),
    identifier      text        NOT NULL,
    requested_by    text,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    dead_at         timestamptz,
    -- One pending entry per identifier and registry: asking twice does not queue twice.
    UNIQUE (service, identifier)
);
CREATE INDEX retry_queue_due ON integrations.retry_queue (next_attempt_at) WHERE dead_at IS NULL;

-- Append-only history of breaker state changes (each process keeps its own breaker in memory; this
-- lets the status command and other processes see when a registry was judged down and back up).
CREATE TABLE integrations.breaker_transitions (
    id         bigserial   PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    service    text        NOT NULL CHECK (service IN ('anip', 'dgi')),
    from_state text        NOT NULL CHECK (from_state IN ('closed', 'open', 'half_open')),
    to_state   text        NOT NULL CHECK (to_state IN ('closed', 'open', 'half_open')),
    process    text        NOT NULL
);
CREATE INDEX breaker_transitions_service_at ON integrations.breaker_transitions (service, at DESC);
