"""Who is calling, for every HTTP route: token verification, deny list, key reload, the caller
dependency and the permission guards.

Tokens are EdDSA (Ed25519) JWTs; the algorithm is pinned, `iss`, `aud`, `exp` and `typ` are checked,
and the key is chosen by `kid` from the key ring. The verifier is wired once at start-up (`wire`):
the auth service's deny list and a throttled reload of the key files for an unknown `kid`.

A route takes `caller: Caller` (the one typed dependency: identity, roles, permissions, `can`), or
`maybe_caller: Caller | None` on a public route that behaves differently for a signed-in user.
Every route needs a valid token unless its handler is declared with `opt={"public": True}` (checked
by the shell middleware, simveb/http/shell.py, which reads the header and calls the verifier);
`requires(...)` adds permission checks on top. Decisions that need more than the token (object
ownership) are the actors'.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID

import jwt
import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from simveb.actors.auth.messages import ListDeniedTokens
from simveb.errors import Forbidden, Unauthorized
from simveb.keys import ALGORITHM, KeyRing
from simveb.messages import Caller

if TYPE_CHECKING:
    from litestar import Litestar

    from simveb.bus import Bus
    from simveb.runtime import Runtime

log = logging.getLogger("simveb.http.security")

ACCESS_TYPE = "at+jwt"


class Token(msgspec.Struct, frozen=True, kw_only=True):
    """The verified access token behind a request (`request.auth`): who, and what logout needs."""

    caller: Caller
    jti: str | None = None
    exp: int | None = None


class TokenVerifier:
    """Verifies access tokens against the key ring; `is_revoked(jti)` lets the auth service deny one."""

    def __init__(self, keys: KeyRing, *, issuer: str, audience: str, leeway: int = 5) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.is_revoked: Callable[[str], bool] = lambda _jti: False
        # Set by `wire` at start-up: a key that is not in the ring yet (rotation by another process)
        # is looked up in the key files, throttled.
        self.find_key: Callable[[str], Any] = lambda _kid: None
        # Tokens whose signature and claims were verified, by exact token text: a client sends the
        # same token for up to 15 minutes and the Ed25519 check is most of a request's cost. Expiry
        # and revocation are still checked at every use; any other text misses and is verified.
        self.verified: dict[str, Token] = {}

    def verify(self, token: str) -> Token:
        cached = self.verified.get(token)
        if cached is not None:
            if cached.exp is not None and cached.exp + self.leeway < time.time():
                raise Unauthorized("token expired", code="token_expired")
            if cached.jti and self.is_revoked(cached.jti):
                raise Unauthorized("token revoked", code="token_revoked")
            return cached
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed token", code="invalid_token") from None
        if header.get("alg") != ALGORITHM:
            raise Unauthorized("token algorithm not accepted", code="invalid_token")
        if header.get("typ") != ACCESS_TYPE:
            raise Unauthorized("not an access token", code="invalid_token")
        key = self.keys.public.get(header.get("kid", "")) or self.find_key(str(header.get("kid", "")))
        if key is None:
            raise Unauthorized("token signed by an unknown key", code="invalid_token")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired", code="token_expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}", code="invalid_token") from None
        jti = claims.get("jti")
        if jti and self.is_revoked(jti):
            raise Unauthorized("token revoked", code="token_revoked")
        found = Token(
            caller=Caller(
                sub=str(claims["sub"]),
                roles=tuple(claims.get("roles", ())),
                permissions=frozenset(claims.get("permissions", ())),
            ),
            jti=jti,
            exp=claims.get("exp"),
        )
        if len(self.verified) >= 10_000:
            self.verified.clear()  # bounded; re-verifying is only slower, never wrong
        self.verified[token] = found
        return found


# Guards are coroutines on purpose: Litestar runs a plain-function guard in a worker thread, a thread
# hop per request that cost more than the check itself. Each says what it needs (`guard.describes`),
# which the OpenAPI document shows on its routes (simveb/http/contract.py).
Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]


def requires(*permissions: str) -> Guard:
    """Guard: the caller's token must carry every one of these permissions."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
        user = connection.scope.get("user")
        if not isinstance(user, Caller):
            raise Unauthorized("this route needs a bearer token")
        if not user.can(*permissions):
            raise Forbidden(f"needs permission {', '.join(permissions)}", code="missing_permission")

    guard.describes = (
        f"needs the permission{'s' if len(permissions) > 1 else ''} {' and '.join(f'`{p}`' for p in permissions)}"  # type: ignore[attr-defined]
    )
    return guard


def requires_any(*permissions: str) -> Guard:
    """Guard: the caller's token must carry at least one of these permissions."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
        user = connection.scope.get("user")
        if not isinstance(user, Caller):
            raise Unauthorized("this route needs a bearer token")
        if not any(user.can(p) for p in permissions):
            raise Forbidden(f"needs one of the permissions {', '.join(permissions)}", code="missing_permission")

    guard.describes = f"needs one of the permissions {' or '.join(f'`{p}`' for p in permissions)}"  # type: ignore[attr-defined]
    return guard


def maybe_caller(request: Request[Any, Any, Any]) -> Caller | None:
    """The caller if the request carries a valid token (public routes), None otherwise."""
    user = request.scope.get("user")
    return user if isinstance(user, Caller) else None


def caller(request: Request[Any, Any, Any]) -> Caller:
    """The app-wide `caller` dependency: who is calling, from the verified token."""
    user = request.scope.get("user")
    if not isinstance(user, Caller):  # the app-wide guard refused it already on a non-public route
        raise Unauthorized("this route needs a bearer token")
    return user


def user_id_of(caller: Caller) -> UUID:
    """The caller's user id; a token that names no user (system, CLI) is refused on a user's route."""
    user_id = caller.user_id
    if user_id is None:
        raise Unauthorized("this token does not name a user", code="invalid_token")
    return user_id


def token(request: Request[Any, Any, Any]) -> Token:
    """The verified token of the request (its jti and expiry, for logout)."""
    auth = request.scope.get("auth")
    if not isinstance(auth, Token):
        raise Unauthorized("this route needs a bearer token")
    return auth


# --- wiring: what the verifier needs from the auth service, set once at start-up --------------------


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


def attach_verifier(app: Litestar, runtime: Runtime) -> TokenVerifier:
    """Create the app's verifier for a started runtime, with its key reload and deny list."""
    assert runtime.keys is not None, "start the runtime first"
    settings = runtime.settings
    verifier = TokenVerifier(
        runtime.keys,
        issuer=settings.security.issuer,
        audience=settings.security.audience,
        leeway=settings.security.leeway_s,
    )
    verifier.find_key = KeyReloader(verifier, runtime)
    if runtime.bus is not None and runtime.bus.handles(ListDeniedTokens):
        verifier.is_revoked = DenyList(runtime.bus, settings.auth.deny_list_poll_s)
    else:  # no auth service in this process (a partial runtime): nothing can be revoked here
        log.warning("no auth service in this process: access tokens are not checked against a deny list")
    app.state.verifier = verifier
    return verifier


async def load_deny_list(verifier: TokenVerifier) -> None:
    """Load the deny list before the first request is served (start-up)."""
    if isinstance(verifier.is_revoked, DenyList):
        await verifier.is_revoked.sync()
