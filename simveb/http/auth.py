"""HTTP routes of the auth service: sign-in (password, one-time code, second factor), tokens,
sessions, TOTP setup, password reset, and the public keys (JWKS).

Deny list sync: the verifier keeps the denied `jti`s in memory. A logout through this process adds
its token at once; every other revocation (logout through another process, session revoked, reuse
of a refresh token, deactivation) is fetched from the auth service by polling `ListDeniedTokens`
with a cursor every `auth.deny_list_poll_s` seconds (in the background, never on the request's
path), so another process refuses a revoked token within about that delay. The list is loaded at
start-up (http/security.py), so a fresh process never accepts a token denied before it began.

Second factor required by role (`auth.require_2fa_roles`, admin by default): such an account
without TOTP still signs in, but its session is *limited*: the access token names no role and
carries no permission (claim `scope: two_factor_setup`, `limited: true` in the reply), so only the
routes open to any signed-in user answer (2FA setup and enable, /me, sessions, logout); refreshing
keeps it limited. Once TOTP is enabled the user signs in again and proves the second factor
(verify-otp with a TOTP or recovery code) to get a full session.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import jwt
import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.datastructures import CacheControlHeader

from simveb.actors.auth.messages import (
    EnableTotp,
    GetJwks,
    Identifier,
    Jwks,
    ListSessions,
    Login,
    LoginResult,
    Logout,
    OtpRequested,
    RecoveryCodes,
    RefreshSession,
    RequestOtp,
    ResetPassword,
    ResetTotp,
    RevokeSession,
    Secret,
    SessionPage,
    SetupTotp,
    TotpSetup,
    VerifyOtp,
)
from simveb.actors.documents.messages import GetDocumentKeys
from simveb.actors.users.messages import GetUserAuthz
from simveb.bus import Bus
from simveb.errors import DomainError, Invalid, Unauthorized
from simveb.http.inputs import CursorQuery, Input, LimitQuery, body_of
from simveb.http.security import DenyList, Token, requires, user_id_of
from simveb.messages import PAGE_LIMIT_DEFAULT, Caller

log = logging.getLogger("simveb.http.auth")

PUBLIC = {"public": True}
NO_STORE = CacheControlHeader(no_store=True)


# --- bodies and replies ------------------------------------------------------------------------------


class LoginIn(Input):
    """One of identifier, email or phone (Login's identifier, under the name the client knows), and the password."""

    password: Secret
    identifier: Identifier | None = None
    email: Identifier | None = None
    phone: Identifier | None = None


class OtpIn(Input):
    """RequestOtp's identifier; the purposes a client may ask here (a password reset has its own route)."""

    identifier: Identifier
    purpose: Literal["login", "register"] = "login"


# The other bodies are their messages' own fields, less what the route fills in (address, session, caller).
VerifyOtpIn = body_of(VerifyOtp, exclude=("client_ip", "user_agent"), name="VerifyOtpIn")
RefreshIn = body_of(RefreshSession, exclude=("client_ip",), name="RefreshIn")
ResetRequestIn = body_of(RequestOtp, exclude=("purpose", "client_ip"), name="ResetRequestIn")
ResetIn = body_of(ResetPassword, exclude=("client_ip",), name="ResetIn")
TotpCodeIn = body_of(EnableTotp, exclude=("user_id", "session_id"), name="TotpCodeIn")
TotpResetIn = body_of(ResetTotp, exclude=("user_id", "caller"), name="TotpResetIn")


class Me(msgspec.Struct, kw_only=True):
    user_id: str
    roles: list[str]
    permissions: list[str]
    expires_at: datetime | None = None


async def _denials_changed(request: Request[Any, Any, Any]) -> None:
    """This process revoked something: fetch the new denials now rather than at the next poll."""
    deny = request.app.state.verifier.is_revoked
    if isinstance(deny, DenyList):
        await deny.sync()


def _session_id(request: Request[Any, Any, Any]) -> UUID | None:
    """The `sid` claim of the request's access token (already verified by the middleware)."""
    with contextlib.suppress(jwt.PyJWTError, ValueError, TypeError):
        sid = jwt.decode(str(request.auth), options={"verify_signature": False}).get("sid")
        return UUID(sid) if sid else None
    return None


def _client(request: Request[Any, Any, Any]) -> tuple[str | None, str | None]:
    ip = request.client.host if request.client else None
    return ip, request.headers.get("user-agent")


class AuthController(Controller):
    path = "/api/auth"
    tags = ["auth"]

    @post("/login", opt=PUBLIC, status_code=200, cache_control=NO_STORE)
    async def login(self, bus: Bus, request: Request[Any, Any, Any], data: LoginIn) -> LoginResult:
        """Sign in with email or phone and password: tokens, or a second-factor challenge."""
        given = [v for v in (data.identifier, data.email, data.phone) if v is not None]
        if len(given) != 1:
            raise Invalid("give exactly one of identifier, email or phone", code="identifier_required")
        ip, agent = _client(request)
        return await bus.ask(Login(identifier=given[0], password=data.password, client_ip=ip, user_agent=agent))

    @post("/request-otp", opt=PUBLIC, status_code=202)
    async def request_otp(self, bus: Bus, request: Request[Any, Any, Any], data: OtpIn) -> OtpRequested:
        """Send a 6-digit code to the phone of the account (the answer is the same if there is none)."""
        ip, _ = _client(request)
        return await bus.ask(RequestOtp(identifier=data.identifier, purpose=data.purpose, client_ip=ip))

    @post("/verify-otp", opt=PUBLIC, status_code=200, cache_control=NO_STORE)
    async def verify_otp(self, bus: Bus, request: Request[Any, Any, Any], data: VerifyOtpIn) -> LoginResult:
        """Complete a code sign-in, a registration, or a second-factor challenge (TOTP or recovery code)."""
        ip, agent = _client(request)
        return await bus.ask(VerifyOtp(challenge_id=data.challenge_id, code=data.code, client_ip=ip, user_agent=agent))

    @post("/refresh", opt=PUBLIC, status_code=200, cache_control=NO_STORE)
    async def refresh(self, bus: Bus, request: Request[Any, Any, Any], data: RefreshIn) -> LoginResult:
        """Exchange the refresh token for a new pair (a reused token revokes the session)."""
        ip, _ = _client(request)
        try:
            return await bus.ask(RefreshSession(refresh_token=data.refresh_token, client_ip=ip))
        except Unauthorized as exc:
            if exc.code == "refresh_token_reused":
                await _denials_changed(request)
            raise

    @post("/logout", status_code=204)
    async def logout(self, bus: Bus, request: Request[Any, Any, Any], access_token: Token) -> None:
        """Revoke this session and deny this access token until it expires."""
        session_id = None
        with contextlib.suppress(jwt.PyJWTError, ValueError, TypeError):
            # Already verified by the middleware; only the session id claim is read here.
            sid = jwt.decode(str(request.auth), options={"verify_signature": False}).get("sid")
            session_id = UUID(sid) if sid else None
        if not access_token.jti or access_token.exp is None:
            raise Unauthorized("this token cannot be revoked (no jti)", code="invalid_token")
        await bus.ask(
            Logout(
                user_id=user_id_of(access_token.caller),
                jti=access_token.jti,
                exp=int(access_token.exp),
                session_id=session_id,
            )
        )
        deny = request.app.state.verifier.is_revoked
        if isinstance(deny, DenyList):
            deny.deny(access_token.jti, int(access_token.exp))
        await _denials_changed(request)

    @get("/me")
    async def me(self, access_token: Token) -> Me:
        """Who the token says the caller is: user id, roles, permissions."""
        return Me(
            user_id=access_token.caller.sub,
            roles=list(access_token.caller.roles),
            permissions=sorted(access_token.caller.permissions),
            expires_at=datetime.fromtimestamp(access_token.exp, UTC) if access_token.exp else None,
        )

    @get("/sessions")
    async def sessions(
        self, caller: Caller, bus: Bus, cursor: CursorQuery = None, limit: LimitQuery = PAGE_LIMIT_DEFAULT
    ) -> SessionPage:
        """The caller's live sessions, newest first."""
        return await bus.ask(ListSessions(user_id=user_id_of(caller), cursor=cursor, limit=limit))

    @delete("/sessions/{session_id:uuid}", status_code=204)
    async def revoke_session(self, caller: Caller, bus: Bus, request: Request[Any, Any, Any], session_id: UUID) -> None:
        """End one of the caller's sessions (another user's session answers 404)."""
        await bus.ask(RevokeSession(user_id=user_id_of(caller), session_id=session_id))
        await _denials_changed(request)

    @post("/2fa/setup", status_code=200, cache_control=NO_STORE)
    async def totp_setup(self, caller: Caller, bus: Bus) -> TotpSetup:
        """Start TOTP: the otpauth URI and its QR code (SVG) for an authenticator app."""
        user_id = user_id_of(caller)
        name = str(user_id)
        with contextlib.suppress(DomainError):
            authz = await bus.ask(GetUserAuthz(user_id=user_id))
            name = authz.email or authz.phone or authz.npi or name
        return await bus.ask(SetupTotp(user_id=user_id, account_name=name))

    @post("/2fa/enable", status_code=200, cache_control=NO_STORE)
    async def totp_enable(
        self, caller: Caller, bus: Bus, request: Request[Any, Any, Any], data: TotpCodeIn
    ) -> RecoveryCodes:
        """Confirm TOTP with a current code and the password; returns one-time recovery codes (then
        sign in again). Every other session of the user is revoked."""
        codes = await bus.ask(
            EnableTotp(
                user_id=user_id_of(caller), code=data.code, password=data.password, session_id=_session_id(request)
            )
        )
        await _denials_changed(request)
        return codes

    @post("/users/{user_id:uuid}/2fa/reset", guards=[requires("users:write")], status_code=204)
    async def totp_reset(
        self, caller: Caller, bus: Bus, request: Request[Any, Any, Any], user_id: UUID, data: TotpResetIn
    ) -> None:
        """An administrator removes a user's second factor (lost phone): audited, sessions revoked."""
        await bus.ask(ResetTotp(user_id=user_id, caller=caller, reason=data.reason))
        await _denials_changed(request)

    @post("/password/reset-request", opt=PUBLIC, status_code=202)
    async def reset_request(self, bus: Bus, request: Request[Any, Any, Any], data: ResetRequestIn) -> OtpRequested:
        """Send a password reset code (the answer is the same if there is no such account)."""
        ip, _ = _client(request)
        return await bus.ask(RequestOtp(identifier=data.identifier, purpose="password_reset", client_ip=ip))

    @post("/password/reset", opt=PUBLIC, status_code=204)
    async def reset(self, bus: Bus, request: Request[Any, Any, Any], data: ResetIn) -> None:
        """Set a new password with the reset code; every session of the account ends."""
        ip, _ = _client(request)
        await bus.ask(
            ResetPassword(challenge_id=data.challenge_id, code=data.code, new_password=data.new_password, client_ip=ip)
        )
        await _denials_changed(request)

    @get("/.well-known/jwks.json", opt=PUBLIC, cache_control=CacheControlHeader(max_age=60))
    async def jwks(self, bus: Bus) -> Jwks:
        """Public keys (Ed25519, with kid) that verify access tokens and certificate payloads (QR codes)."""
        jwks = await bus.ask(GetJwks())
        if bus.handles(GetDocumentKeys):
            return Jwks(keys=[*jwks.keys, *(await bus.ask(GetDocumentKeys())).keys])
        return jwks


CONTROLLERS: list[Any] = [AuthController]
