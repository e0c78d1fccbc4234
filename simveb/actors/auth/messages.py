"""The auth service's public contract.

Accounts created by staff (HTTP and CLI) go through one message, `CreateAccount`: auth checks the
password, asks users to create the account, sets the password, and releases the account again when
that last step fails (a saga with its compensation). A self-registration asks for an OTP. Then login,
tokens, sessions and second factor messages.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec

from simveb.actors.users.messages import CreateUser, Email, User
from simveb.errors import Conflict, Forbidden, Invalid, InvalidCursor, NotFound, TooManyRequests, Unauthorized
from simveb.messages import PAGE_LIMIT_DEFAULT, Ask, Caller, Cursor, Limit, Page, Record

# What a client may send, in bounds the HTTP bodies made from these messages check and document.
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=254, description="NPI, phone (+229…) or email")]
Secret = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
Code = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
RefreshToken = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class CheckPasswordPolicy(Ask[None]):
    """Invalid (422, naming each rule broken) unless the password is acceptable for this user."""

    errors = (NotFound, Invalid)

    password: str
    # Given: the last passwords of this user, and its email, phone and NPI, are refused too.
    user_id: UUID | None = None


class SetPassword(Ask[None]):
    """Store a new password (argon2id) for a user; refused like CheckPasswordPolicy."""

    errors = (NotFound, Invalid)

    user_id: UUID
    password: str
    by: str


class AccountCreated(Record):
    """The account as users created it, and whether a password was set (none was asked for)."""

    user: User
    password_set: bool


class CreateAccount(Ask[AccountCreated]):
    """Create an active account (users' `CreateUser`, with its caller) and set its password.

    The password is checked first (nothing is created for a plainly bad one); if it cannot be set once
    the account exists (refused for this account, or any failure), the account is released again
    (users' `AbortCreation`: inactive, identifiers free, history kept) and the error is the reply.
    Without a password the account signs in after a reset by one-time code.
    """

    errors = (Forbidden, NotFound, Conflict, Invalid)

    user: CreateUser
    password: str | None = None


class OtpRequested(Record):
    """Always the same shape, whether or not the account exists (no enumeration)."""

    challenge_id: UUID
    expires_at: datetime
    resend_after_s: int


class RequestOtp(Ask[OtpRequested]):
    """Send a 6-digit code to the user found by NPI, phone or email (if any)."""

    errors = (NotFound, Invalid, TooManyRequests)

    identifier: Identifier
    purpose: Literal["login", "register", "password_reset"]
    client_ip: str | None = None


# --- replies -----------------------------------------------------------------------------------------

LoginStatus = Literal["authenticated", "two_factor_required"]


class TokenPair(Record):
    """What a completed sign-in gives: a short-lived access token and the session's refresh token.

    `limited` tokens carry no permission: the account's role requires a second factor that is not
    enabled yet; they serve only to set it up (then sign in again).
    """

    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int
    session_id: UUID
    limited: bool = False


class TwoFactorChallenge(Record):
    """The password (or code) was right; prove the second factor with this challenge at verify-otp."""

    challenge_id: UUID
    expires_at: datetime
    methods: list[str] = msgspec.field(default_factory=lambda: ["totp", "recovery_code"])


class LoginResult(Record):
    status: LoginStatus
    tokens: TokenPair | None = None
    challenge: TwoFactorChallenge | None = None


class Session(Record):
    id: UUID
    method: str
    mfa: bool
    limited: bool
    client_ip: str | None = None
    user_agent: str | None = None
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime


class TotpSetup(Record):
    """Scan the QR code (or type the secret) in an authenticator app, then confirm with a code."""

    secret: str
    otpauth_uri: str
    qr_svg: str


class RecoveryCodes(Record):
    """Shown once: each code signs in once instead of a TOTP code."""

    codes: list[str]


class DeniedToken(Record):
    jti: str
    exp: int


class DeniedTokens(Record):
    items: list[DeniedToken]
    cursor: int


class Jwks(Record):
    keys: list[dict[str, str]]


# --- sign-in -----------------------------------------------------------------------------------------


class Login(Ask[LoginResult]):
    """Email or phone and password. Unauthorized `invalid_credentials` whatever was wrong (unknown
    account, wrong password, inactive account); TooManyRequests while the account or address is locked."""

    errors = (Unauthorized, NotFound, TooManyRequests)

    identifier: Identifier
    password: Secret
    client_ip: str | None = None
    user_agent: str | None = None


class VerifyOtp(Ask[LoginResult]):
    """Complete a code sign-in, a self-registration, or a second-factor challenge (TOTP or recovery code)."""

    errors = (Unauthorized, NotFound, Conflict, TooManyRequests)

    challenge_id: UUID
    code: Code
    client_ip: str | None = None
    user_agent: str | None = None


class RefreshSession(Ask[LoginResult]):
    """Exchange a refresh token for a new pair; a token already exchanged revokes the whole session."""

    errors = (Unauthorized, NotFound)

    refresh_token: RefreshToken
    client_ip: str | None = None


class Logout(Ask[None]):
    """Revoke the session and deny this access token until it expires."""

    user_id: UUID
    jti: str
    exp: int
    session_id: UUID | None = None


class SessionPage(Page[Session]):
    """Live sessions, newest first."""

    items: list[Session]


class ListSessions(Ask[SessionPage]):
    """The user's live sessions, newest first, keyset-paged on (user, created_at, id)."""

    errors = (InvalidCursor,)

    user_id: UUID
    cursor: Cursor | None = None
    limit: Limit = PAGE_LIMIT_DEFAULT


class RevokeSession(Ask[None]):
    """NotFound unless the session is one of this user's."""

    errors = (NotFound,)

    user_id: UUID
    session_id: UUID


class RevokeUserSessions(Ask[int]):
    """Revoke every session of a user (deactivation, role change, password reset); returns how many."""

    user_id: UUID
    reason: str


# --- second factor -----------------------------------------------------------------------------------


class SetupTotp(Ask[TotpSetup]):
    """Start (or restart) a TOTP setup; Conflict when TOTP is already enabled."""

    errors = (Conflict,)

    user_id: UUID
    account_name: str


class EnableTotp(Ask[RecoveryCodes]):
    """Confirm the setup with a current code and the password again; returns the recovery codes
    (shown once) and revokes the user's other sessions (all but `session_id`, the caller's)."""

    errors = (Forbidden, Conflict, Invalid, TooManyRequests)

    user_id: UUID
    code: Code
    password: Secret  # asked again: a stolen access token alone cannot bind another authenticator
    session_id: UUID | None = None


class ResetTotp(Ask[bool]):
    """An administrator (users:write) removes a user's second factor (a lost phone): audited, every
    session of the user revoked. False when the user had none."""

    errors = (Forbidden,)

    user_id: UUID
    caller: Caller
    reason: Annotated[str, msgspec.Meta(min_length=3, max_length=500)]


# --- passwords ---------------------------------------------------------------------------------------


class ResetPassword(Ask[None]):
    """Set a new password with a password_reset code (RequestOtp); revokes every session."""

    errors = (Unauthorized, NotFound, Invalid, TooManyRequests)

    challenge_id: UUID
    code: Code
    new_password: Secret
    client_ip: str | None = None


# --- email change ------------------------------------------------------------------------------------


class RequestEmailChange(Ask[OtpRequested]):
    """A signed-in user asks to move their account to `new_email`: the current password is checked
    (a wrong one counts as a failed sign-in: Forbidden `wrong_password`, then the lockout), then a
    code is sent to the new address (purpose email_change; the same expiry, attempts, cooldown and
    budgets as every one-time code). Conflict `email_taken` when another account has that email."""

    errors = (Forbidden, NotFound, Conflict, Invalid, TooManyRequests)

    user_id: UUID
    new_email: Email
    password: str
    client_ip: str | None = None


class ConfirmEmailChange(Ask[User]):
    """The code sent to the new address, for the user who asked: the users service changes the email
    (`ChangeEmail`) and tells the old address. Forbidden `invalid_code` / `code_expired` for a wrong,
    spent, expired or someone else's code; TooManyRequests once attempts or lockouts are spent."""

    errors = (Forbidden, NotFound, Conflict, TooManyRequests)

    user_id: UUID
    challenge_id: UUID
    code: str
    client_ip: str | None = None


# --- keys and deny list (for verifiers) --------------------------------------------------------------


class GetJwks(Ask[Jwks]):
    """The public keys that verify access tokens (re-read after a rotation)."""


class ListDeniedTokens(Ask[DeniedTokens]):
    """Denied, unexpired access tokens of transactions from `cursor` on (0: all of them).

    The cursor is a transaction id watermark, not a row id: pass back the `cursor` of the last page.
    A page shorter than 5,000 means the caller is up to date.
    """

    cursor: int = 0
