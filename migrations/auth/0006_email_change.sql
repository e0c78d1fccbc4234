-- An email change is proved by a code sent to the new address: its challenge is a one-time code
-- row (attempts, expiry, HMAC of the code) of purpose 'email_change' that keeps the address it proves.
ALTER TABLE auth.otp_verifications DROP CONSTRAINT otp_verifications_purpose_check;
ALTER TABLE auth.otp_verifications ADD CONSTRAINT otp_verifications_purpose_check
    CHECK (purpose IN ('login', 'register', 'password_reset', 'two_factor', 'email_change'));
ALTER TABLE auth.otp_verifications ADD COLUMN new_email text;
ALTER TABLE auth.otp_verifications ADD CONSTRAINT otp_verifications_new_email_check
    CHECK ((purpose = 'email_change') = (new_email IS NOT NULL));
