-- Notifications service: templates, event subscriptions, the contact read model, push devices and
-- the durable delivery queue (every message is a row before anything is sent).
CREATE SCHEMA IF NOT EXISTS notifications;

-- One template per (event, channel, language), rendered in a sandboxed Jinja2 environment.
-- secret_params name parameters that are sent but never stored (an OTP code).
CREATE TABLE notifications.templates (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    event         text        NOT NULL CHECK (event ~ '^[a-z][a-z0-9_.]{1,99}$'),
    channel       text        NOT NULL CHECK (channel IN ('email', 'sms', 'push', 'in_app')),
    language      text        NOT NULL CHECK (language IN ('fr', 'en')),
    subject       text        NOT NULL DEFAULT '' CHECK (length(subject) <= 500),
    body          text        NOT NULL CHECK (length(body) BETWEEN 1 AND 20000),
    secret_params text[]      NOT NULL DEFAULT '{}',
    description   text        NOT NULL DEFAULT '',
    updated_at    timestamptz NOT NULL DEFAULT now(),
    updated_by    text        NOT NULL DEFAULT 'system',
    UNIQUE (event, channel, language)
);

-- Which domain event sends which template, on which channel, to whom (a field of the event).
CREATE TABLE notifications.subscriptions (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    event_type      text        NOT NULL CHECK (length(event_type) BETWEEN 1 AND 100),
    channel         text        NOT NULL CHECK (channel IN ('email', 'sms', 'push', 'in_app')),
    template_event  text        NOT NULL,
    recipient_field text        NOT NULL CHECK (recipient_field ~ '^[a-z_][a-z0-9_]{0,62}$'),
    active          boolean     NOT NULL DEFAULT true,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_type, channel, template_event, recipient_field)
);

-- Read model of users' contact details, kept from UserContactChanged (no other actor is asked).
CREATE TABLE notifications.contacts (
    user_id    uuid        PRIMARY KEY,
    email      text,
    phone      text,
    language   text        NOT NULL DEFAULT 'fr' CHECK (language IN ('fr', 'en')),
    active     boolean     NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Push device tokens (FCM registration tokens) registered by users.
CREATE TABLE notifications.devices (
    token      text        PRIMARY KEY CHECK (length(token) BETWEEN 1 AND 4096),
    user_id    uuid        NOT NULL,
    platform   text        NOT NULL DEFAULT 'android' CHECK (platform IN ('android', 'ios', 'web')),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_user ON notifications.devices (user_id);

-- The durable queue and the in-app inbox. `body` is what may be stored: for a message whose template
-- has secret parameters it is the rendering with the secrets masked, and the real rendering travels
-- in `sealed` (AES-GCM under a key that is not in the database), wiped once sent or dead.
CREATE TABLE notifications.messages (
    id                  uuid        PRIMARY KEY,
    idempotency_key     text        NOT NULL UNIQUE,
    channel             text        NOT NULL CHECK (channel IN ('email', 'sms', 'push', 'in_app')),
    recipient           text        NOT NULL,
    user_id             uuid,
    template_event      text        NOT NULL,
    language            text        NOT NULL CHECK (language IN ('fr', 'en')),
    subject             text        NOT NULL DEFAULT '',
    body                text        NOT NULL,
    has_secret          boolean     NOT NULL DEFAULT false,
    sealed              bytea,
    status              text        NOT NULL DEFAULT 'pending'
                                    CHECK (status IN ('pending', 'sending', 'sent', 'dead')),
    attempts            integer     NOT NULL DEFAULT 0,
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    last_error          text,
    provider_message_id text,
    source              text        NOT NULL DEFAULT 'api',
    created_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz,
    dead_at             timestamptz,
    read_at             timestamptz,
    CHECK (NOT has_secret OR channel <> 'in_app')
);

-- Workers only ever scan what is due (pending, or claimed by a worker whose lease ran out).
CREATE INDEX messages_due ON notifications.messages (next_attempt_at) WHERE status IN ('pending', 'sending');
CREATE INDEX messages_in_app ON notifications.messages (user_id, created_at DESC) WHERE channel = 'in_app';
CREATE INDEX messages_dead ON notifications.messages (dead_at) WHERE status = 'dead';
