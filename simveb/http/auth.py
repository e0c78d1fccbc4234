"""HTTP routes of the auth service: sign-in (password, one-time code, second factor), tokens,
sessions, TOTP setup, password reset, and the public keys (JWKS).

Also what the token verifier needs from auth (`wire_verifier`, called by the bearer middleware on
first use): the deny list of access tokens and the key reload after a rotation.

Deny list sync: the verifier keeps the denied `jti`s in memory. A logout through this process adds
its token at once; every other revocation (logout through another process, session revoked, reuse
of a refresh token, deactivation) is fetched from the auth service by polling `ListDeniedTokens`
with a cursor every `auth.deny_list_poll_s` seconds (in the background, never on the request's
path), so another process refuses a revoked token within about that delay. The first request with
a token waits for the initial load, so a fresh process never accepts a token denied before it began.

Second factor required by role (`auth.require_2fa_roles`, admin by default): such an account
without TOTP still signs in, but its session is *limited*: the access token names no role and
carries no permission (claim `scope: two_factor_setup`, `limited: true` in the reply), so only the
routes open to any signed-in user answer (2FA setup and enable, /me, sessions, logout); refreshing
keeps it limited. Once TOTP is enabled the user signs in again and proves the second factor
(verify-otp with a TOTP or recovery code) to get a full session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal
from uuid import UUID

import jwt
import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.datastructures import CacheControlHeader

from simveb.actors.auth.messages import (
    EnableTotp,
    GetJwks,
    Jwks,
    ListDeniedTokens,
    ListSessions,
    Login,
    LoginResult,
    Logout,
    OtpRequested,
    RecoveryCodes,
    RefreshSession,
    RequestOtp,
    ResetPassword,
    RevokeSession,
    Session,
    SetupTotp,
    TotpSetup,
    VerifyOtp,
)
from simveb.actors.users.messages import GetUserAuthz
from simveb.bus import Bus
from simveb.errors import DomainError, Invalid, Unauthorized
from simveb.http.inputs import Input
from simveb.http.security import Principal, TokenVerifier, principal
from simveb.keys import KeyRing

if TYPE_CHECKING:
    from simveb.runtime import Runtime

log = logging.getLogger("simveb.http.auth")

PUBLIC = {"public": True}
NO_STORE = CacheControlHeader(no_store=True)

Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=254)]
Secret = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
Code = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


# --- what the verifier needs from auth ---------------------------------------------------------------


class DenyList:
    """`is_revoked` of the verifier: denied jtis in memory, refreshed from the auth service."""

    def __init__(self, bus: Bus, poll_s: float) -> None:
        self.bus = bus
        self.poll_s = poll_s
        self.denied: dict[str, int] = {}
        self.cursor = 0
        self.synced_at = 0.0
        self._task: asyncio.Task[None] | None = None

    def __call__(self, jti: str) -> bool:
        if time.monotonic() - self.synced_at >= self.poll_s and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self.sync())
        return jti in self.denied

    def deny(self, jti: str, exp: int) -> None:
        self.denied[jti] = exp

    async def sync(self) -> None:
        self.synced_at = time.monotonic()
        try:
            while True:
                page = await self.bus.ask(ListDeniedTokens(cursor=self.cursor), timeout=5.0)
                for item in page.items:
                    self.denied[item.jti] = item.exp
                self.cursor = page.cursor
                if len(page.items) < 5000:
                    break
        except Exception as exc:  # keep serving with what is known; the next poll retries
            log.warning("deny list not refreshed: %s", exc)
        now = int(time.time())
        if len(self.denied) > 1000:
            self.denied = {jti: exp for jti, exp in self.denied.items() if exp > now}


class KeyReloader:
    """`find_key` of the verifier: on an unknown kid, re-read the key files at most every few seconds."""

    def __init__(self, verifier: TokenVerifier, runtime: Runtime) -> None:
        self.verifier = verifier
        self.runtime = runtime
        self.period = runtime.settings.auth.key_reload_s
        self.loaded_at = 0.0

    def __call__(self, kid: str) -> Any:
        now = time.monotonic()
        if not kid or now - self.loaded_at < self.period:
            return None
        self.loaded_at = now
        try:
            ring = KeyRing.for_settings(self.runtime.settings)
        except Exception as exc:
            log.warning("signing keys not reloaded: %s", exc)
            return None
        self.verifier.keys = ring
        self.verifier.verified.clear()  # a key may have been withdrawn: verify everything again
        return ring.public.get(kid)


async def wire_verifier(verifier: TokenVerifier, runtime: Runtime) -> None:
    """Give the verifier the deny list (loaded once before the first check) and the key reload."""
    pending: asyncio.Future[None] | None = getattr(verifier, "_wiring", None)
    if pending is not None:
        await asyncio.shield(pending)
        return
    loop = asyncio.get_running_loop()
    pending = loop.create_future()
    verifier._wiring = pending  # type: ignore[attr-defined]
    try:
        if runtime.bus is not None and runtime.bus.handles(ListDeniedTokens):
            deny = DenyList(runtime.bus, runtime.settings.auth.deny_list_poll_s)
            await deny.sync()
            verifier.is_revoked = deny
        else:  # no auth service in this process (a partial runtime): nothing can be revoked here
            log.warning("no auth service in this process: access tokens are not checked against a deny list")
        verifier.find_key = KeyReloader(verifier, runtime)
        verifier.wired = True
    finally:
        pending.set_result(None)


# --- bodies and replies ------------------------------------------------------------------------------


class LoginIn(Input):
    """One of identifier, email or phone, and the password."""

    password: Secret
    identifier: Identifier | None = None
    email: Identifier | None = None
    phone: Identifier | None = None


class OtpIn(Input):
    identifier: Identifier  # NPI, phone (+229...) or email
    purpose: Literal["login", "register"] = "login"


class VerifyOtpIn(Input):
    challenge_id: UUID
    code: Code


class RefreshIn(Input):
    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class ResetRequestIn(Input):
    identifier: Identifier


class ResetIn(Input):
    challenge_id: UUID
    code: Code
    new_password: Secret


class TotpCodeIn(Input):
    code: Code


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


def _client(request: Request[Any, Any, Any]) -> tuple[str | None, str | None]:
    ip = request.client.host if request.client else None
    return ip, request.headers.get("user-agent")


def _caller(request: Request[Any, Any, Any]) -> Principal:
    user = principal(request)
    if user is None:
        raise Unauthorized("this route needs a bearer token")
    return user


def _user_id(user: Principal) -> UUID:
    try:
        return UUID(user.sub)
    except ValueError:
        raise Unauthorized("this token does not name a user", code="invalid_token") from None


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
    async def logout(self, bus: Bus, request: Request[Any, Any, Any]) -> None:
        """Revoke this session and deny this access token until it expires."""
        user = _caller(request)
        session_id = None
        with contextlib.suppress(jwt.PyJWTError, ValueError, TypeError):
            # Already verified by the middleware; only the session id claim is read here.
            sid = jwt.decode(str(request.auth), options={"verify_signature": False}).get("sid")
            session_id = UUID(sid) if sid else None
        if not user.jti or user.exp is None:
            raise Unauthorized("this token cannot be revoked (no jti)", code="invalid_token")
        await bus.ask(Logout(user_id=_user_id(user), jti=user.jti, exp=int(user.exp), session_id=session_id))
        verifier: TokenVerifier = request.app.state.verifier
        if isinstance(verifier.is_revoked, DenyList):
            verifier.is_revoked.deny(user.jti, int(user.exp))
        await _denials_changed(request)

    @get("/me")
    async def me(self, request: Request[Any, Any, Any]) -> Me:
        """Who the token says the caller is: user id, roles, permissions."""
        user = _caller(request)
        return Me(
            user_id=user.sub,
            roles=list(user.roles),
            permissions=sorted(user.permissions),
            expires_at=datetime.fromtimestamp(user.exp, UTC) if user.exp else None,
        )

    @get("/sessions")
    async def sessions(self, bus: Bus, request: Request[Any, Any, Any]) -> list[Session]:
        """The caller's live sessions."""
        return await bus.ask(ListSessions(user_id=_user_id(_caller(request))))

    @delete("/sessions/{session_id:uuid}", status_code=204)
    async def revoke_session(self, bus: Bus, request: Request[Any, Any, Any], session_id: UUID) -> None:
        """End one of the caller's sessions (another user's session answers 404)."""
        await bus.ask(RevokeSession(user_id=_user_id(_caller(request)), session_id=session_id))
        await _denials_changed(request)

    @post("/2fa/setup", status_code=200, cache_control=NO_STORE)
    async def totp_setup(self, bus: Bus, request: Request[Any, Any, Any]) -> TotpSetup:
        """Start TOTP: the otpauth URI and its QR code (SVG) for an authenticator app."""
        user_id = _user_id(_caller(request))
        name = str(user_id)
        with contextlib.suppress(DomainError):
            authz = await bus.ask(GetUserAuthz(user_id=user_id))
            name = authz.email or authz.phone or authz.npi or name
        return await bus.ask(SetupTotp(user_id=user_id, account_name=name))

    @post("/2fa/enable", status_code=200, cache_control=NO_STORE)
    async def totp_enable(self, bus: Bus, request: Request[Any, Any, Any], data: TotpCodeIn) -> RecoveryCodes:
        """Confirm TOTP with a current code; returns one-time recovery codes (then sign in again)."""
        return await bus.ask(EnableTotp(user_id=_user_id(_caller(request)), code=data.code))

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
        """Public keys (Ed25519, with kid) that verify access tokens."""
        return await bus.ask(GetJwks())


CONTROLLERS: list[Any] = [AuthController]
