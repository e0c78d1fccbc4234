"""The auth service's public contract.

The interface agreed with users (#4): the HTTP layer and the CLI check a password against the policy
before asking users to create a staff account, then set it; a self-registration asks for an OTP.
Extended by the auth work with login, tokens, sessions and second factor messages.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from simveb.bus import Ask, Record


class CheckPasswordPolicy(Ask[None]):
    """Invalid (422, naming each rule broken) unless the password is acceptable for this user."""

    password: str
    user_id: UUID | None = None  # given: the last 5 passwords of this user are refused too


class SetPassword(Ask[None]):
    """Store a new password (argon2id) for a user; refused like CheckPasswordPolicy."""

    user_id: UUID
    password: str
    by: str


class OtpRequested(Record):
    """Always the same shape, whether or not the account exists (no enumeration)."""

    challenge_id: UUID
    expires_at: datetime
    resend_after_s: int


class RequestOtp(Ask[OtpRequested]):
    """Send a 6-digit code to the user found by NPI, phone or email (if any)."""

    identifier: str
    purpose: Literal["login", "register", "password_reset"]
    client_ip: str | None = None
