-- A refresh token exchanged a moment ago keeps its successor pair, sealed (AES-GCM, bound to the
-- session), so a client that lost the answer gets the same pair again within the grace window
-- (auth.refresh_reuse_grace_s). Wiped after the window; a later reuse still revokes the family.
ALTER TABLE auth.refresh_tokens ADD COLUMN successor_sealed bytea;
