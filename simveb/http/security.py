"""Bearer token verification and permission guards for every HTTP route.

Tokens are EdDSA (Ed25519) JWTs; the algorithm is pinned, `iss`, `aud`, `exp` and `typ` are checked,
and the key is chosen by `kid` from the key ring. Every route needs a valid token unless its handler
is declared with `opt={"public": True}`; `requires(...)` adds permission checks on top. Decisions
that need more than the token (object ownership) are the actors'.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
import msgspec
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.middleware.base import DefineMiddleware

from simveb.errors import Forbidden, Unauthorized
from simveb.keys import ALGORITHM, KeyRing

ACCESS_TYPE = "at+jwt"


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling, as the access token says."""

    sub: str
    roles: tuple[str, ...] = ()
    permissions: frozenset[str] = frozenset()
    jti: str | None = None
    exp: int | None = None

    def can(self, *permissions: str) -> bool:
        return all(p in self.permissions for p in permissions)

    def has_role(self, *roles: str) -> bool:
        return any(r in self.roles for r in roles)


class TokenVerifier:
    """Verifies access tokens against the key ring; `is_revoked(jti)` lets the auth service deny one."""

    def __init__(self, keys: KeyRing, *, issuer: str, audience: str, leeway: int = 5) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.is_revoked: Callable[[str], bool] = lambda _jti: False
        # Set by the auth service's HTTP module on first use (http/auth.wire_verifier): a key that
        # is not in the ring yet (rotation by another process) is looked up there, throttled.
        self.find_key: Callable[[str], Any] = lambda _kid: None
        self.wired = False
        # Tokens whose signature and claims were verified, by exact token text: a client sends the
        # same token for up to 15 minutes and the Ed25519 check is most of a request's cost. Expiry
        # and revocation are still checked at every use; any other text misses and is verified.
        self.verified: dict[str, Principal] = {}

    def verify(self, token: str) -> Principal:
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
        found = Principal(
            sub=str(claims["sub"]),
            roles=tuple(claims.get("roles", ())),
            permissions=frozenset(claims.get("permissions", ())),
            jti=jti,
            exp=claims.get("exp"),
        )
        if len(self.verified) >= 10_000:
            self.verified.clear()  # bounded; re-verifying is only slower, never wrong
        self.verified[token] = found
        return found


class BearerMiddleware(AbstractAuthenticationMiddleware):
    """Sets `request.user` to a Principal when a valid bearer token is present, None otherwise.

    A present but invalid token is always refused (401), even on a public route: a client that sends
    a forged or expired token must learn it, not be silently treated as anonymous.
    """

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        header = connection.headers.get("authorization")
        if not header:
            return AuthenticationResult(user=None, auth=None)
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("expected 'Authorization: Bearer <token>'", code="invalid_token")
        verifier: TokenVerifier = connection.app.state.verifier
        if not verifier.wired:
            from simveb.http.auth import wire_verifier  # deny list and key reload of the auth service

            await wire_verifier(verifier, connection.app.state.runtime)
        return AuthenticationResult(user=verifier.verify(token.strip()), auth=token)


def bearer_middleware() -> DefineMiddleware:
    return DefineMiddleware(BearerMiddleware, exclude=["^/health", "^/metrics", "^/schema", "^/sandbox"])


def authenticated(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """App-wide guard: a token is required unless the handler says it is public."""
    if handler.opt.get("public") or connection.scope["path"].startswith("/schema"):
        return
    if not isinstance(connection.scope.get("user"), Principal):
        raise Unauthorized("this route needs a bearer token")


def requires(*permissions: str) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]:
    """Guard: the caller's token must carry every one of these permissions."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
        user = connection.scope.get("user")
        if not isinstance(user, Principal):
            raise Unauthorized("this route needs a bearer token")
        if not user.can(*permissions):
            raise Forbidden(f"needs permission {', '.join(permissions)}", code="missing_permission")

    return guard


def principal(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal | None:
    user = connection.scope.get("user")
    return user if isinstance(user, Principal) else None
