"""Auth service (seed §1): login, OTP, tokens, sessions, second factor."""
