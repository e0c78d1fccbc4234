-- Per-subscriber delivery when actors are split across processes (issue 14): the subscribers an
-- event must still reach, hosted here or elsewhere. NULL until a relay first claims the row and fans
-- it out; a relay claims only rows with a subscriber it hosts, removes those it delivered to, and
-- the row is published once the list is empty.
ALTER TABLE bus.outbox ADD COLUMN pending text[];
