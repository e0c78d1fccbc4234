-- Documents service: document types, uploaded and issued documents, agent validations, issued
-- certificates (carte grise) and receipts, and a read model of registration requests (from events).
CREATE SCHEMA IF NOT EXISTS documents;

-- What can be uploaded or issued, with its size limit and accepted media types (data, not code).
CREATE TABLE documents.document_types (
    code        text PRIMARY KEY CHECK (code ~ '^[a-z][a-z0-9_]{1,49}$'),
    label_fr    text NOT NULL,
    label_en    text NOT NULL,
    max_bytes   bigint NOT NULL CHECK (max_bytes > 0),
    media_types text[] NOT NULL,
    -- produced by SIMVEB itself (carte grise, receipt): never accepted as an upload
    issued      boolean NOT NULL DEFAULT false,
    active      boolean NOT NULL DEFAULT true
);

CREATE TABLE documents.documents (
    id           uuid PRIMARY KEY,
    type_code    text NOT NULL REFERENCES documents.document_types (code),
    status       text NOT NULL CHECK (status IN ('pending', 'validated', 'rejected', 'issued')),
    -- what the document proves: the user it belongs to, a registration request, a vehicle
    owner_id     uuid,
    request_id   uuid,
    vehicle_id   uuid,
    -- the client's file name, cleaned, shown only (the storage key is ours)
    filename     text NOT NULL,
    media_type   text NOT NULL,
    size_bytes   bigint NOT NULL CHECK (size_bytes >= 0),
    sha256       text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    storage_key  text NOT NULL UNIQUE,
    uploaded_by  text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    replaces_id  uuid REFERENCES documents.documents (id),
    replaced_by  uuid REFERENCES documents.documents (id),
    archived_at  timestamptz,
    archived_by  text
);
CREATE INDEX documents_owner ON documents.documents (owner_id, created_at DESC);
CREATE INDEX documents_request ON documents.documents (request_id, type_code) WHERE request_id IS NOT NULL;
CREATE INDEX documents_vehicle ON documents.documents (vehicle_id) WHERE vehicle_id IS NOT NULL;

-- Every agent decision, append-only.
CREATE TABLE documents.document_validations (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    document_id uuid NOT NULL REFERENCES documents.documents (id),
    decision    text NOT NULL CHECK (decision IN ('approved', 'rejected')),
    reason      text NOT NULL DEFAULT '',
    decided_by  text NOT NULL,
    decided_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (decision = 'approved' OR reason <> '')
);
CREATE INDEX document_validations_document ON documents.document_validations (document_id, id);

-- Registration requests as documents learns them from the registrations service's events: who
-- applied (an upload for a known request must come from its applicant or staff) and whether the
-- request was completed (its documents can then no longer be deleted).
CREATE TABLE documents.requests (
    request_id   uuid PRIMARY KEY,
    number       text NOT NULL,
    applicant_id uuid NOT NULL,
    completed_at timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Issued certificates. A vehicle has at most one current certificate; a transfer, a duplicate or a
-- re-issue replaces it (replaced_by names the new one) and the old one stays verifiable as replaced.
CREATE TABLE documents.certificates (
    number          text PRIMARY KEY,
    document_id     uuid NOT NULL UNIQUE REFERENCES documents.documents (id),
    vehicle_id      uuid NOT NULL,
    request_id      uuid UNIQUE,
    holder_ids      uuid[] NOT NULL DEFAULT '{}',
    plate           text NOT NULL,
    vin             text NOT NULL,
    holder          text NOT NULL,
    duplicate       boolean NOT NULL DEFAULT false,
    issued_at       timestamptz NOT NULL,
    issued_by       text NOT NULL,
    -- every printed field, as rendered: the PDF can be rendered again byte for byte from it
    fields          jsonb NOT NULL,
    payload         text NOT NULL,
    -- deferred: the old certificate names the new one, inserted in the same transaction
    replaced_by     text REFERENCES documents.certificates (number) DEFERRABLE INITIALLY DEFERRED,
    replaced_at     timestamptz,
    replaced_reason text
);
CREATE UNIQUE INDEX certificates_current ON documents.certificates (vehicle_id) WHERE replaced_at IS NULL;

CREATE TABLE documents.receipts (
    invoice_id     uuid PRIMARY KEY,
    invoice_number text NOT NULL,
    document_id    uuid NOT NULL UNIQUE REFERENCES documents.documents (id),
    payer_id       uuid NOT NULL,
    issued_at      timestamptz NOT NULL
);
