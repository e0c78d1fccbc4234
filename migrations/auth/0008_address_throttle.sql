-- Per-address sign-in throttle: a token bucket per client address replaces the hard address
-- lockout (a carrier NAT or a cybercafé is slowed, never locked out as a whole). `tokens` is the
-- count at `updated_at`; the count now is that plus the time since over auth.address_refill_s,
-- capped at auth.address_burst (no row: a full bucket). `throttled_at` is when the bucket last
-- emptied, kept until it is full again, so an episode is audited once, not at every refusal.
-- Address lockouts already in auth.lockouts stay as the audit trail; nothing reads them any more.
CREATE TABLE auth.address_buckets (
    address      text        PRIMARY KEY,
    tokens       float8      NOT NULL CHECK (tokens >= 0),
    updated_at   timestamptz NOT NULL,
    throttled_at timestamptz
);
