-- Payments service (issue 10): payables with their attempts at the providers, invoices numbered
-- without gaps per year, refunds, payment methods, Idempotency-Key answers, raw webhook receipts.
CREATE SCHEMA IF NOT EXISTS payments;

-- One payment per thing to pay (opened from a PaymentRequested event); the amount and the fee lines
-- are the requester's, frozen here. Status: pending -> succeeded | failed | cancelled;
-- succeeded -> partially_refunded -> refunded. A failed or cancelled payment may be tried again.
CREATE TABLE payments.payments (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    payable_kind text NOT NULL,
    payable_id uuid NOT NULL,
    reference text NOT NULL,
    payer_id uuid NOT NULL,
    amount_xof bigint NOT NULL CHECK (amount_xof > 0),
    currency text NOT NULL DEFAULT 'XOF',
    lines jsonb NOT NULL DEFAULT '[]',
    description text NOT NULL DEFAULT '',
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'succeeded', 'failed', 'cancelled', 'partially_refunded', 'refunded')),
    provider text,
    provider_reference text,
    paid_transaction_id uuid,
    paid_at timestamptz,
    refunded_xof bigint NOT NULL DEFAULT 0 CHECK (refunded_xof >= 0 AND refunded_xof <= amount_xof),
    source_event_id uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (payable_kind, payable_id)
);
CREATE INDEX payments_payer ON payments.payments (payer_id, created_at DESC);

-- Every status change of a payment, append-only (who, from -> to, why).
CREATE TABLE payments.history (
    id bigserial PRIMARY KEY,
    payment_id uuid NOT NULL REFERENCES payments.payments (id),
    from_status text,
    to_status text NOT NULL,
    by text NOT NULL,
    reason text NOT NULL DEFAULT '',
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX history_payment ON payments.history (payment_id, id);

-- How a payment can be made (shown to payers; transactions name these codes).
CREATE TABLE payments.payment_methods (
    code text PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('mobile_money', 'counter')),
    label text NOT NULL,
    active boolean NOT NULL DEFAULT true
);
INSERT INTO payments.payment_methods (code, kind, label) VALUES
    ('fedapay', 'mobile_money', 'FedaPay (MTN, Moov)'),
    ('kkiapay', 'mobile_money', 'KKiaPay (MTN, Moov)'),
    ('cash', 'counter', 'Espèces au guichet'),
    ('bank', 'counter', 'Virement ou dépôt bancaire');

-- One row per attempt at a provider (or one counter payment). provider_ref is the provider's id
-- (FedaPay transaction id, KKiaPay transactionId, counter receipt reference).
CREATE TABLE payments.transactions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    payment_id uuid NOT NULL REFERENCES payments.payments (id),
    provider text NOT NULL CHECK (provider IN ('fedapay', 'kkiapay', 'cash', 'bank')),
    provider_ref text,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed', 'cancelled')),
    amount_xof bigint NOT NULL,
    currency text NOT NULL DEFAULT 'XOF',
    phone text,
    checkout_url text,
    provider_status text,
    failure_reason text,
    -- a success for a payable already paid: refunded automatically and shown to finance staff
    flagged boolean NOT NULL DEFAULT false,
    flag_reason text,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    settled_at timestamptz,
    UNIQUE (provider, provider_ref)
);
CREATE INDEX transactions_payment ON payments.transactions (payment_id, created_at);
CREATE INDEX transactions_pending ON payments.transactions (created_at) WHERE status = 'pending';
CREATE INDEX transactions_page ON payments.transactions (created_at DESC, id DESC);

-- Invoice numbers: one counter row per year, locked by the transaction that issues the invoice,
-- so numbers are consecutive and a rollback leaves no gap.
CREATE TABLE payments.invoice_counters (
    year int PRIMARY KEY,
    last_number int NOT NULL
);

CREATE TABLE payments.invoices (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    number text NOT NULL UNIQUE,
    year int NOT NULL,
    seq int NOT NULL,
    payment_id uuid NOT NULL UNIQUE REFERENCES payments.payments (id),
    lines jsonb NOT NULL,
    total_xof bigint NOT NULL,
    provider text NOT NULL,
    provider_reference text,
    issued_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (year, seq)
);

CREATE TABLE payments.refunds (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    payment_id uuid NOT NULL REFERENCES payments.payments (id),
    transaction_id uuid NOT NULL REFERENCES payments.transactions (id),
    amount_xof bigint NOT NULL CHECK (amount_xof > 0),
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    -- automatic refund of a second success (not counted against the payment's paid amount)
    automatic boolean NOT NULL DEFAULT false,
    reason text NOT NULL DEFAULT '',
    provider_ref text,
    error text,
    requested_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    settled_at timestamptz
);
CREATE INDEX refunds_payment ON payments.refunds (payment_id, created_at);

-- Idempotency-Key: the first answer, replayed for the same key and request for idempotency_ttl_h.
CREATE TABLE payments.idempotency_keys (
    owner text NOT NULL,
    key text NOT NULL,
    operation text NOT NULL,
    request_hash text NOT NULL,
    status text NOT NULL DEFAULT 'started' CHECK (status IN ('started', 'done')),
    response jsonb,
    error jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, key)
);
CREATE INDEX idempotency_created ON payments.idempotency_keys (created_at);

-- Every webhook as received (raw bytes) with the result of its verification and what it caused.
CREATE TABLE payments.webhook_receipts (
    id bigserial PRIMARY KEY,
    provider text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    signature text,
    raw_body bytea NOT NULL,
    verified boolean NOT NULL,
    verification_error text,
    event_type text,
    object_id text,
    outcome text
);
CREATE INDEX webhook_receipts_object ON payments.webhook_receipts (provider, object_id);

-- One nightly reconciliation per day across processes (the first to insert the day runs it).
CREATE TABLE payments.reconciliation_runs (
    day date PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    report jsonb
);
