-- Second-factor failures are counted and locked on their own (scope 'two_factor'), and a first
-- factor proved while a second one is still owed is recorded as `partial`: it resets no counter,
-- only a completed sign-in does (of that account only).
ALTER TABLE auth.login_attempts ADD COLUMN partial boolean NOT NULL DEFAULT false;
ALTER TABLE auth.lockouts DROP CONSTRAINT lockouts_scope_check;
ALTER TABLE auth.lockouts ADD CONSTRAINT lockouts_scope_check CHECK (scope IN ('account', 'address', 'two_factor'));
