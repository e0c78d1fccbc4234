"""The auth actor: passwords, one-time codes, sign-in, sessions and tokens, lockouts and the
address throttle, TOTP.

It signs access tokens with the process key ring (re-read when the keys directory changes, so a
`simveb keys rotate` takes effect without a restart) and keeps no other in-memory state, so several
messages are handled at once; correctness under concurrency comes from row locks.

Rules that hold everywhere below:
- Answers never reveal whether an account exists: an unknown identifier, an inactive account and a
  wrong password give the same error, a code request for nobody gives the same reply (a challenge
  row is stored all the same, no code is sent), and a password is always verified against a hash
  (a dummy one when there is none) so the timing is similar.
- Secrets are stored hashed: passwords with argon2id (off the event loop), one-time codes with a
  peppered HMAC-SHA256, refresh tokens and recovery codes (high entropy) with SHA-256.
- Revoking a session denies every access token it still has alive; verifiers poll the deny list.
- Handlers that only touch the auth schema take the runtime's connection (one transaction per
  message). Those that ask the users actor, or hash with argon2 (tens of milliseconds in a thread),
  take none: they use short `self.db.connection()` / `transaction()` blocks around, never across,
  the ask or the hash, so a pooled connection is never held while waiting on something else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import re
import secrets
import time
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
import pyotp
import segno
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from simveb.actors.auth import store
from simveb.actors.auth.messages import (
    AccountCreated,
    CheckPasswordPolicy,
    ConfirmEmailChange,
    CreateAccount,
    DeniedTokens,
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
    RequestEmailChange,
    RequestOtp,
    ResetPassword,
    ResetTotp,
    RevokeSession,
    RevokeUserSessions,
    SessionPage,
    SetPassword,
    SetupTotp,
    TokenPair,
    TotpSetup,
    TwoFactorChallenge,
    VerifyOtp,
)
from simveb.actors.config.messages import GetSetting
from simveb.actors.notifications.messages import SendOtp
from simveb.actors.users.messages import (
    AbortCreation,
    ChangeEmail,
    ConfirmRegistration,
    CreateUser,
    GetUserAuthz,
    ResolveLogin,
    User,
    UserAuthz,
    UserDeactivated,
    UserRolesChanged,
)
from simveb.audit import Audited
from simveb.bus import Actor, handler
from simveb.errors import (
    Conflict,
    DomainError,
    Forbidden,
    InternalError,
    Invalid,
    InvalidCursor,
    NotFound,
    TooManyRequests,
    Unauthorized,
)
from simveb.keys import KeyRing, Sealer, load_private, sealing_key
from simveb.messages import decode_cursor, page
from simveb.metrics import ABUSE_BUDGET_HITS, ADDRESS_THROTTLE

log = logging.getLogger("simveb.auth")

# OWASP's argon2id parameters (m=19 MiB, t=2, p=1): about 26 ms a hash on this machine class.
HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
MAX_PASSWORD_LENGTH = 256  # argon2 accepts anything; a bound keeps a huge body from costing more
TOTP_DIGITS = re.compile(r"^\d{6}$")
RECOVERY_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read from paper

INVALID_CREDENTIALS = "wrong identifier or password"
INVALID_CODE = "wrong or expired code"


def account_key(identifier: str) -> str:
    """The identifier as attempts and code requests are counted: trimmed, lower case, no spaces."""
    return re.sub(r"\s+", "", identifier).lower()[:254]


def sha256(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def normalise_recovery(code: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", code.upper())


def new_recovery_code() -> str:
    raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(16))  # 80 bits
    return "-".join(raw[i : i + 4] for i in range(0, 16, 4))


def _verify(hashed: str, password: str) -> bool:
    try:
        return HASHER.verify(hashed, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


class AuthActor(Audited, Actor):
    name = "auth"
    # Stateless apart from the key ring (replaced atomically): logins overlap while argon2 runs in
    # threads. Lockouts and refresh rotation take row or advisory locks in the database.
    concurrency = 16

    async def on_start(self) -> None:
        self.conf = self.settings.auth
        self._keys_dir = self.settings.data_dir / "keys"
        self._keys = KeyRing.for_settings(self.settings)
        self._keys_stamp = self._stamp()
        self._keys_checked = time.monotonic()
        self._pepper = self._code_pepper()
        self._tasks: set[asyncio.Task[Any]] = set()
        # A real hash to verify against when the account has none: same cost, same timing.
        self._dummy_hash = await asyncio.to_thread(HASHER.hash, secrets.token_urlsafe(16))
        self._sealer = Sealer(
            sealing_key(
                self.settings,
                configured=self.conf.totp_key,
                setting="auth.totp_key",
                info=b"simveb totp seal",
                filename="totp-seal.key",
            )
        )
        await self._seal_clear_totps()
        self._spawn(self._purge_hourly())

    async def on_stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- keys and hashes ---------------------------------------------------------------------------

    def _stamp(self) -> tuple[tuple[str, int], ...]:
        if not self._keys_dir.is_dir():
            return ()
        return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in self._keys_dir.glob("*.pem")))

    def _ring(self) -> KeyRing:
        """The key ring, re-read at most once a second when the keys directory changed (rotation)."""
        now = time.monotonic()
        if now - self._keys_checked >= 1.0:
            self._keys_checked = now
            stamp = self._stamp()
            if stamp != self._keys_stamp:
                self._keys = KeyRing.for_settings(self.settings)
                self._keys_stamp = stamp
                log.info("signing keys reloaded; signing with kid %s", self._keys.kid)
        return self._keys

    def _code_pepper(self) -> bytes:
        """HMAC key of one-time codes: the configured secret, else derived from a key that does not
        change at a rotation (the configured signing key, or the oldest development key file)."""
        if self.conf.code_secret:
            return hashlib.sha256(b"simveb-codes:" + self.conf.code_secret.encode()).digest()
        if self.settings.security.signing_key:
            material = self.settings.security.signing_key.encode()
        else:
            files = sorted(self._keys_dir.glob("*.pem"), key=lambda p: (p.stat().st_mtime_ns, p.name))
            material = files[0].read_bytes()
            load_private(material)  # refuse a broken file here rather than at the first code
        return hashlib.sha256(b"simveb-codes:" + material).digest()

    async def _seal_clear_totps(self) -> None:
        """Encrypt TOTP secrets written in clear before sealing existed (once; then there are none)."""
        async with self.db.transaction() as con:
            for user_id, secret in await store.clear_totps(con):
                await store.seal_totp(con, user_id, self._seal_totp(user_id, secret))

    def _seal_totp(self, user_id: UUID, secret: str) -> bytes:
        return self._sealer.seal(user_id, "totp", secret)

    def _totp_secret(self, user_id: UUID, row: store.Totp) -> str:
        """The secret in clear: unsealed (bound to its user), or as stored before sealing existed."""
        if row.secret_sealed is not None:
            return self._sealer.unseal(user_id, row.secret_sealed)[1]
        assert row.secret is not None  # the table's check: one of the two is present
        return row.secret

    def _code_hash(self, challenge_id: UUID, code: str) -> bytes:
        return hmac.new(self._pepper, f"{challenge_id}:{code}".encode(), hashlib.sha256).digest()

    async def _purge_hourly(self) -> None:
        while True:
            await asyncio.sleep(3600)
            try:
                async with self.db.connection() as con:
                    await store.purge(
                        con, address_burst=self.conf.address_burst, address_refill_s=self.conf.address_refill_s
                    )
            except Exception:
                log.warning("auth purge failed; retrying in an hour", exc_info=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- users -------------------------------------------------------------------------------------

    async def _resolve(self, identifier: str) -> UserAuthz | None:
        try:
            return await self.bus.ask(ResolveLogin(identifier=identifier.strip()))
        except NotFound:
            return None

    def _needs_2fa(self, authz: UserAuthz) -> bool:
        required = set(self.conf.require_2fa_roles)
        return any(role in required for role in authz.roles)

    # --- passwords ---------------------------------------------------------------------------------

    async def _account(self, user_id: UUID | None) -> UserAuthz | None:
        """The account's identifiers for the policy (None when unknown or no users service here)."""
        if user_id is None or not self.bus.handles(GetUserAuthz):
            return None
        try:
            return await self.bus.ask(GetUserAuthz(user_id=user_id))
        except NotFound:
            return None

    async def _policy(self, password: str, user_id: UUID | None, account: UserAuthz | None = None) -> None:
        """Invalid naming every rule the password breaks. With `account`, the password must not contain
        its email (the part before @), phone or NPI: the first things an attacker tries."""
        broken = []
        if len(password) < self.conf.password_min_length:
            broken.append(f"at least {self.conf.password_min_length} characters")
        if len(password) > MAX_PASSWORD_LENGTH:
            broken.append(f"at most {MAX_PASSWORD_LENGTH} characters")
        if password.strip() != password or not password.strip():
            broken.append("no leading or trailing spaces")
        if account is not None and contains_identifier(password, account):
            broken.append("not containing the account's email, phone or NPI")
        if not broken and user_id is not None and self.conf.password_history:
            async with self.db.connection() as con:
                previous = await store.recent_password_hashes(con, user_id, self.conf.password_history)
            for hashed in previous:
                if await asyncio.to_thread(_verify, hashed, password):
                    broken.append(f"not one of the last {self.conf.password_history} passwords")
                    break
        if broken:
            raise Invalid("password refused: " + "; ".join(broken), code="password_policy", rules=broken)

    # The password handlers take no connection: they ask users for the account and hash with argon2
    # (in a thread), and hold a pooled connection only for the reads and the final write.

    @handler
    async def check_password_policy(self, msg: CheckPasswordPolicy) -> None:
        await self._policy(msg.password, msg.user_id, await self._account(msg.user_id))

    async def _set_password(self, user_id: UUID, password: str, by: str, account: UserAuthz | None) -> None:
        await self._policy(password, user_id, account)
        hashed = await asyncio.to_thread(HASHER.hash, password)
        async with self.db.transaction() as con:
            await store.set_password(con, user_id, hashed, by)
            await self.audit(con, by, user_id, "password_set")

    @handler
    async def set_password(self, msg: SetPassword) -> None:
        await self._set_password(msg.user_id, msg.password, msg.by, await self._account(msg.user_id))

    @handler
    async def create_account(self, msg: CreateAccount) -> AccountCreated:
        """The account-creation saga: check, create pending (users), set the password, confirm (users:
        active and welcomed); release the account if a step after its creation fails."""
        if msg.password is None:
            return AccountCreated(user=await self.bus.ask(msg.user), password_set=False)
        await self._policy(msg.password, None)  # a plainly bad password creates nothing
        pending = CreateUser(**{**msgspec.structs.asdict(msg.user), "pending": True})
        user = await self.bus.ask(pending)
        by = msg.user.caller.sub
        try:
            account = UserAuthz(
                user_id=user.id,
                status=user.status,
                kind=user.kind,
                roles=user.roles,
                permissions=[],
                email=user.email,
                phone=user.phone,
                npi=user.npi,
            )
            await self._set_password(user.id, msg.password, by, account)
            await self.bus.ask(ConfirmRegistration(user_id=user.id))
        except Exception as exc:
            # Compensation: the account must not stay (nor ever become active) without its password.
            log.warning("password of new user %s could not be set (%s): releasing the account", user.id, exc)
            try:
                await self.bus.ask(AbortCreation(user_id=user.id, by=by, reason="password not set"))
            except Exception:
                log.exception("could not release user %s after a failed creation", user.id)
            if isinstance(exc, DomainError):
                raise
            raise InternalError("the account could not be completed", code="creation_failed") from exc
        return AccountCreated(user=msgspec.structs.replace(user, status="active"), password_set=True)

    # --- lockouts and the address throttle ----------------------------------------------------------

    # An account that fails too often is locked (it is one person's). A client address is never
    # locked: it may be a cybercafé or a carrier's NAT with thousands behind it. It has a token
    # bucket instead (auth.address_buckets, shared by every process): each failed attempt from it
    # takes a token, one comes back every auth.address_refill_s up to auth.address_burst, and an
    # attempt while it holds less than one token is refused before any password is checked, with
    # the seconds until the next token. Successes take none and give none back: an attacker signing
    # in to their own account gains nothing, and nobody else's bucket or account is touched.

    def _throttled(self, tokens: float) -> TooManyRequests:
        """The refusal of an attempt from an address whose bucket holds `tokens` (< 1)."""
        ADDRESS_THROTTLE.labels(event="refused").inc()
        wait = max(1, math.ceil((1.0 - tokens) * self.conf.address_refill_s - 1e-9))
        return TooManyRequests(
            "too many failed attempts from this address; slow down", retry_after=wait, code="throttled"
        )

    async def _check_locks(self, key: str, client_ip: str | None) -> None:
        bucket = None
        async with self.db.connection() as con:
            left = await store.active_lockout(con, "account", key)
            if left is None and client_ip:
                bucket = await store.address_bucket(con, client_ip, self.conf.address_burst, self.conf.address_refill_s)
        if left is not None:
            raise TooManyRequests(
                "too many failed attempts; try again later", retry_after=max(1, math.ceil(left)), code="locked_out"
            )
        if bucket is not None and bucket.tokens < 1:
            raise self._throttled(bucket.tokens)

    async def _failed(self, key: str, user_id: UUID | None, client_ip: str | None, kind: str) -> None:
        """Record a failure; lock the account when it was one too many (audited), and take a token
        from the client address's bucket (its emptying audited once).

        Second-factor failures are counted on their own (scope two_factor, its own limit): a password
        proved again between guesses resets nothing, so "password, wrong codes, password ..." locks.
        """
        locked: float | None = None
        refusal: TooManyRequests | None = None
        # Whoever failed is not known: the subject is the account tried (its key when none matched).
        who, subject = "anonymous", str(user_id) if user_id else key
        scope, limit = (
            ("two_factor", self.conf.two_factor_max_failures)
            if kind == "two_factor"
            else ("account", self.conf.max_failures)
        )
        async with self.db.transaction() as con:
            # Serialise the count-then-lock of one account so concurrent failures lock it once.
            await con.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", key)
            if client_ip:
                # And the bucket of one address, across accounts: a burst of parallel guesses from one
                # address must not each read the same tokens and all slip under the burst.
                # Always account then address, so two failures never wait on each other in a cycle.
                await con.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 8))", f"address:{client_ip}")
            await store.record_attempt(con, key, user_id, client_ip, kind, False)
            lockout: dict[str, Any] | None = None
            # A guess that was in flight when a parallel one locked the account is refused as
            # locked too (the lock only counts failures after it, so it would pass).
            already = await store.active_lockout(con, scope, key)
            if already is not None:
                locked = already
            elif (failures := await store.recent_failures(con, scope, key, self.conf.failure_window_s)) >= limit:
                await store.add_lockout(
                    con,
                    scope,
                    key,
                    user_id=user_id,
                    client_ip=client_ip,
                    failures=failures,
                    seconds=self.conf.lockout_s,
                )
                locked = self.conf.lockout_s
                log.warning("account locked after %d failures", failures, extra={"account": key, "ip": client_ip})
                lockout = {"scope": scope, "failures": failures, "seconds": self.conf.lockout_s}
            emptied = False
            if client_ip:
                burst, refill_s = self.conf.address_burst, self.conf.address_refill_s
                bucket = await store.address_bucket(con, client_ip, burst, refill_s, lock=True)
                if bucket.tokens < 1:
                    # In flight when a parallel failure emptied the bucket: refused like the
                    # attempts that come after (nothing to take; the wait is not lengthened).
                    refusal = self._throttled(bucket.tokens)
                else:
                    left_tokens = bucket.tokens - 1
                    # Audited when it empties, once per episode (until the bucket is full again).
                    emptied = left_tokens < 1 and bucket.throttled_at is None
                    await store.save_address_bucket(con, client_ip, left_tokens, bucket.throttled_at, emptied=emptied)
                    if left_tokens < 1:
                        refusal = self._throttled(left_tokens)
            # Last in the transaction: the chain's head stays locked only for the commit.
            await self.audit(con, who, subject, "sign_in_failed", factor=kind, client_ip=client_ip)
            if lockout is not None:
                await self.audit(con, "system", subject, "locked_out", client_ip=client_ip, **lockout)
            if emptied:
                await self.audit(
                    con,
                    "system",
                    f"address:{client_ip}",
                    "address_throttled",
                    client_ip=client_ip,
                    burst=self.conf.address_burst,
                    refill_s=self.conf.address_refill_s,
                )
        if emptied:
            ADDRESS_THROTTLE.labels(event="emptied").inc()
            log.warning(
                "ALERT client address throttled: %d failed attempts spent its burst (client %s)",
                self.conf.address_burst,
                client_ip,
            )
        if locked is not None:
            raise TooManyRequests(
                "too many failed attempts; try again later", retry_after=max(1, math.ceil(locked)), code="locked_out"
            )
        if refusal is not None:
            raise refusal

    async def _succeeded(
        self, key: str, user_id: UUID, client_ip: str | None, kind: str, *, partial: bool = False
    ) -> None:
        """Record a success. Only a completed sign-in (not `partial`: a first factor with the second
        still owed) ends the failure count, and only the account's own: never the address's."""
        async with self.db.connection() as con:
            await store.record_attempt(con, key, user_id, client_ip, kind, True, partial=partial)

    # --- tokens ------------------------------------------------------------------------------------

    async def _issue(
        self,
        con: asyncpg.Connection,
        authz: UserAuthz,
        session_id: UUID,
        *,
        limited: bool,
        mfa: bool,
        method: str,
        max_ttl_s: float | None = None,
    ) -> TokenPair:
        """Sign an access token and store it with a new refresh token, in the caller's transaction.
        `max_ttl_s` caps the access token's life (what is left of a staff session)."""
        now = int(time.time())
        ttl = self.conf.access_ttl_s if max_ttl_s is None else max(1, min(self.conf.access_ttl_s, int(max_ttl_s)))
        jti = uuid.uuid4().hex
        claims: dict[str, Any] = {
            "iss": self.settings.security.issuer,
            "aud": self.settings.security.audience,
            "sub": str(authz.user_id),
            "iat": now,
            "exp": now + ttl,
            "jti": jti,
            "sid": str(session_id),
            "amr": [{"password": "pwd", "otp": "otp", "register": "otp"}[method], *(["otp_totp"] if mfa else [])],
            # A limited token names no role and carries no permission: only routes open to any
            # signed-in user (2FA setup, /me, sessions, logout) accept it.
            "roles": [] if limited else list(authz.roles),
            "permissions": [] if limited else list(authz.permissions),
        }
        if limited:
            claims["scope"] = "two_factor_setup"
        access = self._ring().sign(claims)
        refresh = secrets.token_urlsafe(32)
        await store.add_tokens(con, session_id, sha256(refresh), jti, datetime.fromtimestamp(now + ttl, UTC))
        return TokenPair(
            access_token=access, refresh_token=refresh, expires_in=ttl, session_id=session_id, limited=limited
        )

    async def _staff_session_s(self) -> float:
        """security.staff_session_minutes (config service), in seconds; the seeded 480 minutes when
        no config service runs in this process."""
        minutes = 480
        if self.bus.handles(GetSetting):
            with contextlib.suppress(NotFound):
                minutes = int((await self.bus.ask(GetSetting(key="security.staff_session_minutes"))).value)
        return float(max(1, minutes) * 60)

    async def _new_session(
        self, authz: UserAuthz, *, method: str, mfa: bool, client_ip: str | None, user_agent: str | None
    ) -> LoginResult:
        limited = self._needs_2fa(authz) and not mfa
        session_ttl = float(self.conf.refresh_ttl_s)
        staff_s = await self._staff_session_s() if authz.kind == "staff" else None
        if staff_s is not None:
            session_ttl = min(session_ttl, staff_s)
        session_id = uuid.uuid4()
        async with self.db.transaction() as con:
            await store.create_session(
                con,
                session_id=session_id,
                user_id=authz.user_id,
                method=method,
                mfa=mfa,
                limited=limited,
                client_ip=client_ip,
                user_agent=(user_agent or "")[:300] or None,
                ttl_s=int(session_ttl),
            )
            tokens = await self._issue(
                con, authz, session_id, limited=limited, mfa=mfa, method=method, max_ttl_s=staff_s
            )
            await self.audit(
                con,
                str(authz.user_id),
                authz.user_id,
                "signed_in",
                method=method,
                mfa=mfa,
                limited=limited,
                session_id=session_id,
                client_ip=client_ip,
            )
        return LoginResult(status="authenticated", tokens=tokens)

    async def _signed_in(
        self, authz: UserAuthz, *, method: str, account: str, client_ip: str | None, user_agent: str | None
    ) -> LoginResult:
        """First factor proved: ask for the second when the account has one, else open a session."""
        async with self.db.connection() as con:
            has_totp = await store.totp_enabled(con, authz.user_id)
            if has_totp:
                challenge_id = uuid.uuid4()
                expires_at = await store.create_challenge(
                    con,
                    challenge_id=challenge_id,
                    account=account,
                    user_id=authz.user_id,
                    purpose="two_factor",
                    code_hash=None,
                    client_ip=client_ip,
                    ttl_s=self.conf.challenge_ttl_s,
                    method=method,
                )
        if has_totp:
            return LoginResult(
                status="two_factor_required",
                challenge=TwoFactorChallenge(challenge_id=challenge_id, expires_at=expires_at),
            )
        return await self._new_session(authz, method=method, mfa=False, client_ip=client_ip, user_agent=user_agent)

    # --- sign-in -----------------------------------------------------------------------------------

    @handler
    async def login(self, msg: Login) -> LoginResult:
        authz = await self._resolve(msg.identifier)
        key = f"user:{authz.user_id}" if authz else f"id:{account_key(msg.identifier)}"
        await self._check_locks(key, msg.client_ip)
        hashed = None
        if authz is not None and authz.status == "active":
            async with self.db.connection() as con:
                hashed = await store.password_hash(con, authz.user_id)
        password = msg.password[:MAX_PASSWORD_LENGTH]
        ok = await asyncio.to_thread(_verify, hashed or self._dummy_hash, password) and hashed is not None
        if not ok or authz is None:
            await self._failed(key, authz.user_id if authz else None, msg.client_ip, "password")
            raise Unauthorized(INVALID_CREDENTIALS, code="invalid_credentials")
        # Again after the hash: a parallel guess may have locked the account or the address while
        # this one was verified, and a right guess then is refused like a wrong one (nothing learnt).
        await self._check_locks(key, msg.client_ip)
        if HASHER.check_needs_rehash(hashed):  # type: ignore[arg-type]
            new = await asyncio.to_thread(HASHER.hash, password)
            async with self.db.connection() as con:
                await store.rehash_password(con, authz.user_id, hashed, new)  # type: ignore[arg-type]
        result = await self._signed_in(
            authz, method="password", account=key, client_ip=msg.client_ip, user_agent=msg.user_agent
        )
        partial = result.status == "two_factor_required"
        await self._succeeded(key, authz.user_id, msg.client_ip, "password", partial=partial)
        return result

    @handler
    async def request_otp(self, msg: RequestOtp) -> OtpRequested:
        account = account_key(msg.identifier)
        cooldown = self.conf.otp_resend_cooldown_s
        if (again := await self._recent_code(account, msg.purpose)) is not None:
            return again
        await self._within_budgets(account, msg.client_ip)
        authz = await self._resolve(msg.identifier)
        wanted_status = "pending" if msg.purpose == "register" else "active"
        eligible = authz is not None and authz.status == wanted_status and bool(authz.phone or authz.email)
        challenge_id, code, expires_at = await self._code_challenge(
            account, msg.purpose, authz.user_id if eligible and authz else None, msg.client_ip
        )
        if eligible and authz is not None:
            # Delivered in the background: the reply takes as long whether or not a code is sent.
            self._spawn(self._deliver(authz, code, msg.purpose, challenge_id))
        return OtpRequested(challenge_id=challenge_id, expires_at=expires_at, resend_after_s=cooldown)

    async def _recent_code(self, account: str, purpose: str, *, user_id: UUID | None = None) -> OtpRequested | None:
        """Within the resend cooldown the same challenge is answered again and nothing is sent."""
        async with self.db.connection() as con:
            recent = await store.recent_challenge(
                con, account, purpose, self.conf.otp_resend_cooldown_s, user_id=user_id
            )
        if recent is None:
            return None
        return OtpRequested(
            challenge_id=recent.id, expires_at=recent.expires_at, resend_after_s=max(1, math.ceil(recent.wait))
        )

    async def _code_challenge(
        self, account: str, purpose: str, user_id: UUID | None, client_ip: str | None, *, new_email: str | None = None
    ) -> tuple[UUID, str, datetime]:
        """A new six-digit code challenge (only its hash is kept): its id, the code and its expiry."""
        challenge_id = uuid.uuid4()
        code = f"{secrets.randbelow(1_000_000):06d}"
        async with self.db.connection() as con:
            expires_at = await store.create_challenge(
                con,
                challenge_id=challenge_id,
                account=account,
                user_id=user_id,
                purpose=purpose,
                code_hash=self._code_hash(challenge_id, code),
                client_ip=client_ip,
                ttl_s=self.conf.otp_ttl_s,
                new_email=new_email,
            )
        return challenge_id, code, expires_at

    async def _within_budgets(self, account: str, client_ip: str | None) -> None:
        """TooManyRequests when a code request would spend past an abuse budget (an SMS costs money
        and a flood denies codes to everyone): per address per hour, per identifier per day, in total
        per day. Every request counts, whether an account exists or not, so a refusal reveals nothing."""
        async with self.db.connection() as con:
            n = await store.count_code_requests(con, account, client_ip)
        budgets = (
            ("address_hour", n.address_hour, self.conf.otp_budget_address_hour, 3600),
            ("identifier_day", n.identifier_day, self.conf.otp_budget_identifier_day, 86400),
            ("total_day", n.total_day, self.conf.otp_budget_total_day, 3600),
        )
        for name, used, budget, retry_after in budgets:
            if budget and used >= budget:
                ABUSE_BUDGET_HITS.labels(budget=name).inc()
                # The alert line operators watch for (a flood in progress); the identifier is not logged.
                log.warning(
                    "ALERT abuse budget hit: code requests %s %d/%d (client %s)", name, used, budget, client_ip or "-"
                )
                raise TooManyRequests(
                    "too many code requests; try again later", code="code_budget_spent", retry_after=retry_after
                )

    async def _deliver(
        self, authz: UserAuthz, code: str, purpose: str, challenge_id: UUID, *, to_email: str | None = None
    ) -> None:
        """Queue the code with notifications: to the account's phone (else its email), or to `to_email`."""
        if not self.bus.handles(SendOtp):
            log.warning("no notifications service in this process: one-time code %s not sent", challenge_id)
            return
        if to_email is not None:
            channel, to = "email", to_email
        else:
            channel, to = ("sms", authz.phone) if authz.phone else ("email", authz.email)
        try:
            await self.bus.ask(
                SendOtp(
                    channel=channel,  # type: ignore[arg-type]
                    to=to or "",
                    code=code,
                    purpose=purpose,  # type: ignore[arg-type]
                    language=authz.language,
                    idempotency_key=str(challenge_id),
                )
            )
        except Exception as exc:  # the code is never logged, only which challenge failed
            log.warning("one-time code %s could not be queued: %s", challenge_id, type(exc).__name__)

    async def _open_challenge(
        self,
        challenge_id: UUID,
        code: str,
        purposes: tuple[str, ...],
        client_ip: str | None,
        *,
        user_id: UUID | None = None,
        refuse: type[DomainError] = Unauthorized,
    ) -> tuple[store.Challenge, bool]:
        """Lock a challenge and check the code; return (row, ok). Refusals that are not a wrong code
        raise (`refuse`: Unauthorized for a sign-in; Forbidden for a signed-in caller, whose token is
        not in question). With `user_id`, another user's challenge is refused before any code is tried."""
        async with self.db.transaction() as con:
            row = await store.challenge(con, challenge_id)
            if (
                row is None
                or row.consumed_at is not None
                or row.purpose not in purposes
                or (user_id is not None and row.user_id != user_id)
            ):
                raise refuse(INVALID_CODE, code="invalid_code")
            if row.expired:
                raise refuse("the code expired; ask for a new one", code="code_expired")
            if row.attempts >= self.conf.otp_max_attempts:
                left = (row.expires_at - datetime.now(UTC)).total_seconds()
                raise TooManyRequests(
                    "too many wrong codes; ask for a new one",
                    retry_after=max(1, min(math.ceil(left), self.conf.otp_resend_cooldown_s or 1)),
                    code="too_many_attempts",
                )
            # Wrong codes count as failed sign-ins of the account: a lockout stops guessing across codes.
            key = f"user:{row.user_id}" if row.user_id else f"id:{row.account}"
            left = await store.active_lockout(con, "account", key)
            if left is None and row.purpose == "two_factor":
                left = await store.active_lockout(con, "two_factor", key)
            if left is not None:
                raise TooManyRequests(
                    "too many failed attempts; try again later", retry_after=max(1, math.ceil(left)), code="locked_out"
                )
            if client_ip:
                bucket = await store.address_bucket(con, client_ip, self.conf.address_burst, self.conf.address_refill_s)
                if bucket.tokens < 1:
                    raise self._throttled(bucket.tokens)
            ok = await self._code_matches(con, row, code.strip())
            if ok:
                await store.consume_challenge(con, challenge_id)
            else:
                await store.challenge_failed(con, challenge_id)
        return row, ok

    async def _code_matches(self, con: asyncpg.Connection, row: store.Challenge, code: str) -> bool:
        user_id = row.user_id
        if user_id is None:
            return False
        if row.purpose != "two_factor":
            return row.code_hash is not None and hmac.compare_digest(row.code_hash, self._code_hash(row.id, code))
        if TOTP_DIGITS.match(code):
            totp = await store.totp(con, user_id, lock=True)
            if totp is None or totp.enabled_at is None:
                return False
            step = totp_step(self._totp_secret(user_id, totp), code, after=totp.last_used_step)
            if step is None:
                return False
            await store.use_totp_step(con, user_id, step)
            return True
        used = await store.use_recovery_code(con, user_id, sha256(normalise_recovery(code)))
        if used:
            await self.audit(con, str(user_id), user_id, "recovery_code_used")
        return used

    async def _code_failed(self, row: store.Challenge, client_ip: str | None) -> None:
        key = f"user:{row.user_id}" if row.user_id else f"id:{row.account}"
        kind = "two_factor" if row.purpose == "two_factor" else "otp"
        await self._failed(key, row.user_id, client_ip, kind)
        raise Unauthorized(INVALID_CODE, code="invalid_code")

    @handler
    async def verify_otp(self, msg: VerifyOtp) -> LoginResult:
        row, ok = await self._open_challenge(
            msg.challenge_id, msg.code, ("login", "register", "two_factor"), msg.client_ip
        )
        if not ok:
            await self._code_failed(row, msg.client_ip)
        user_id = row.user_id
        assert user_id is not None  # a code of nobody never matches
        kind = "two_factor" if row.purpose == "two_factor" else "otp"
        if row.purpose == "register":
            authz = await self.bus.ask(ConfirmRegistration(user_id=user_id))
        else:
            authz = await self.bus.ask(GetUserAuthz(user_id=user_id))
        if authz.status != "active":
            raise Unauthorized(INVALID_CODE, code="invalid_code")
        if row.purpose == "two_factor":
            await self._succeeded(f"user:{user_id}", user_id, msg.client_ip, kind)
            return await self._new_session(
                authz, method=row.method or "password", mfa=True, client_ip=msg.client_ip, user_agent=msg.user_agent
            )
        method = "register" if row.purpose == "register" else "otp"
        result = await self._signed_in(
            authz, method=method, account=f"user:{user_id}", client_ip=msg.client_ip, user_agent=msg.user_agent
        )
        partial = result.status == "two_factor_required"
        await self._succeeded(f"user:{user_id}", user_id, msg.client_ip, kind, partial=partial)
        return result

    @handler
    async def refresh(self, msg: RefreshSession) -> LoginResult:
        token_hash = sha256(msg.refresh_token)
        # Read without a lock, ask users for the account, then lock and re-check: the row lock and
        # the connection are never held while the users actor (which needs a connection) answers.
        async with self.db.connection() as con:
            peek = await store.refresh_token(con, token_hash, lock=False)
        authz = None
        staff_limit_s: float | None = None
        if peek is not None and peek.rotated_at is None and peek.revoked_at is None and not peek.expired:
            authz = await self.bus.ask(GetUserAuthz(user_id=peek.user_id))
            if authz.kind == "staff":
                staff_limit_s = await self._staff_session_s()
        refused: Unauthorized | None = None
        tokens: TokenPair | None = None
        async with self.db.transaction() as con:
            row = await store.refresh_token(con, token_hash)
            if row is None:
                refused = Unauthorized("unknown refresh token", code="invalid_refresh_token")
            elif (
                row.rotated_at is not None
                and row.successor_sealed is not None
                and row.revoked_at is None
                and not row.expired
                and (row.rotated_age_s or 0.0) <= self.conf.refresh_reuse_grace_s
                and await store.unused(con, sha256((again := self._successor(row)).refresh_token))
            ):
                # The answer to the exchange was lost (network, crash): the same new pair again, as
                # long as that pair was not used (then whoever holds the old token is not its owner).
                # Nothing new is issued, so a replay gains nothing the owner did not get.
                tokens = again
            elif row.rotated_at is not None:
                # Reuse of an exchanged token: it was stolen or replayed. Revoke the whole family.
                await store.revoke_sessions(con, [row.session_id], "refresh_token_reuse")
                await self.audit(con, "anonymous", row.user_id, "refresh_token_reused", session_id=row.session_id)
                log.warning("refresh token reused: session %s revoked", row.session_id)
                refused = Unauthorized("refresh token already used; session revoked", code="refresh_token_reused")
            elif row.revoked_at is not None or row.expired or authz is None:
                refused = Unauthorized("session ended; sign in again", code="session_revoked")
            elif authz.status != "active":
                await store.revoke_sessions(con, [row.session_id], "user_inactive")
                refused = Unauthorized("session ended; sign in again", code="session_revoked")
            elif staff_limit_s is not None and row.session_age_s >= staff_limit_s:
                # security.staff_session_minutes: a staff session ends however often it is refreshed.
                await store.revoke_sessions(con, [row.session_id], "staff_session_expired")
                refused = Unauthorized("staff session ended; sign in again", code="session_expired")
            else:
                limited = self._needs_2fa(authz) and not row.mfa
                left = None if staff_limit_s is None else staff_limit_s - row.session_age_s
                tokens = await self._issue(
                    con, authz, row.session_id, limited=limited, mfa=row.mfa, method=row.method, max_ttl_s=left
                )
                sealed = self._sealer.seal(row.session_id, "refresh", msgspec.json.encode(tokens).decode())
                await store.rotate(con, token_hash, row.session_id, limited, sealed)
        if refused is not None:
            raise refused
        return LoginResult(status="authenticated", tokens=tokens)

    def _successor(self, row: store.RefreshRow) -> TokenPair:
        assert row.successor_sealed is not None
        return msgspec.json.decode(self._sealer.unseal(row.session_id, row.successor_sealed)[1], type=TokenPair)

    # --- sessions ----------------------------------------------------------------------------------

    @handler
    async def logout(self, msg: Logout, con: asyncpg.Connection) -> None:
        expires_at = datetime.fromtimestamp(msg.exp, UTC)
        session_id = msg.session_id or await store.session_of_token(con, msg.jti)
        if session_id is not None and await store.session_owner(con, session_id) == msg.user_id:
            await store.revoke_sessions(con, [session_id], "logout")
        await store.deny_token(con, msg.jti, expires_at, "logout")

    @handler
    async def list_sessions(self, msg: ListSessions, con: asyncpg.Connection) -> SessionPage:
        # The keyset is (user, created_at, id): the users list's (created_at, id) cursors, and
        # another user's, are refused instead of being read as a position in this list.
        after = decode_cursor(msg.cursor, UUID, datetime, UUID)
        if after is not None and after[0] != msg.user_id:
            raise InvalidCursor()
        rows = await store.list_sessions(con, msg.user_id, after and after[1:], msg.limit + 1)
        return page(SessionPage, rows, msg.limit, lambda s: (msg.user_id, s.created_at, s.id))

    @handler
    async def revoke_session(self, msg: RevokeSession, con: asyncpg.Connection) -> None:
        # Someone else's session and no session at all look the same: 404, nothing learnt.
        if await store.session_owner(con, msg.session_id) != msg.user_id:
            raise NotFound("no such session", code="session_not_found")
        await store.revoke_sessions(con, [msg.session_id], "revoked_by_user")

    @handler
    async def revoke_user_sessions(self, msg: RevokeUserSessions, con: asyncpg.Connection) -> int:
        return await store.revoke_sessions(con, [], msg.reason, user_id=msg.user_id)

    @handler
    async def on_user_deactivated(self, event: UserDeactivated, con: asyncpg.Connection) -> None:
        await store.revoke_sessions(con, [], "user_deactivated", user_id=event.user_id)

    @handler
    async def on_user_roles_changed(self, event: UserRolesChanged, con: asyncpg.Connection) -> None:
        # The next sign-in carries the new permissions; tokens with the old ones are denied now.
        await store.revoke_sessions(con, [], "roles_changed", user_id=event.user_id)

    # --- second factor -----------------------------------------------------------------------------

    @handler
    async def setup_totp(self, msg: SetupTotp, con: asyncpg.Connection) -> TotpSetup:
        secret = pyotp.random_base32()
        current = await store.totp(con, msg.user_id, lock=True)
        if current is not None and current.enabled_at is not None:
            raise Conflict("two-factor authentication is already enabled", code="two_factor_enabled")
        await store.start_totp(con, msg.user_id, self._seal_totp(msg.user_id, secret))
        await self.audit(con, str(msg.user_id), msg.user_id, "totp_setup_started")
        uri = pyotp.TOTP(secret).provisioning_uri(name=msg.account_name, issuer_name=self.conf.totp_issuer)
        svg = segno.make(uri, error="m").svg_inline(scale=4)
        return TotpSetup(secret=secret, otpauth_uri=uri, qr_svg=svg)

    @handler
    async def enable_totp(self, msg: EnableTotp) -> RecoveryCodes:
        """Needs the password again (a stolen access token alone cannot bind the attacker's
        authenticator), then revokes every other session of the user: they were opened without it."""
        key = f"user:{msg.user_id}"
        await self._check_locks(key, None)
        async with self.db.connection() as con:
            hashed = await store.password_hash(con, msg.user_id)
        password = msg.password[:MAX_PASSWORD_LENGTH]
        if not (await asyncio.to_thread(_verify, hashed or self._dummy_hash, password) and hashed is not None):
            await self._failed(key, msg.user_id, None, "password")
            raise Forbidden("wrong password", code="wrong_password")
        codes = [new_recovery_code() for _ in range(self.conf.recovery_codes)]
        async with self.db.transaction() as con:
            current = await store.totp(con, msg.user_id, lock=True)
            if current is None:
                raise Conflict("start with POST /api/auth/2fa/setup", code="two_factor_not_started")
            if current.enabled_at is not None:
                raise Conflict("two-factor authentication is already enabled", code="two_factor_enabled")
            step = totp_step(self._totp_secret(msg.user_id, current), msg.code.strip(), after=current.last_used_step)
            if step is None:
                raise Invalid("wrong code: check the authenticator app's clock", code="invalid_code")
            await store.use_totp_step(con, msg.user_id, step, enable=True)
            await store.replace_recovery_codes(con, msg.user_id, [sha256(normalise_recovery(c)) for c in codes])
            await store.revoke_sessions(con, [], "two_factor_enabled", user_id=msg.user_id, keep=msg.session_id)
            await self.audit(con, str(msg.user_id), msg.user_id, "totp_enabled")
        return RecoveryCodes(codes=codes)

    @handler
    async def reset_totp(self, msg: ResetTotp, con: asyncpg.Connection) -> bool:
        if not msg.caller.can("users:write"):
            raise Forbidden("resetting a second factor needs users:write", code="forbidden")
        done = await store.reset_totp(con, msg.user_id, msg.caller.sub, msg.reason)
        # Sessions proved with the old factor (or waiting to set one up) end: sign in again.
        await store.revoke_sessions(con, [], "two_factor_reset", user_id=msg.user_id)
        await self.audit(con, msg.caller, msg.user_id, "totp_reset", reason=msg.reason, had_totp=done)
        log.warning("second factor of user %s reset by %s", msg.user_id, msg.caller.sub)
        return done

    # --- password reset ----------------------------------------------------------------------------

    @handler
    async def reset_password(self, msg: ResetPassword) -> None:
        await self._policy(msg.new_password, None)
        row, ok = await self._open_challenge(msg.challenge_id, msg.code, ("password_reset",), msg.client_ip)
        if not ok:
            await self._code_failed(row, msg.client_ip)
        user_id = row.user_id
        assert user_id is not None  # a code of nobody never matches
        try:
            await self._policy(msg.new_password, user_id, await self._account(user_id))
        except Invalid:
            # The code was right but the password is refused: give the code back for another try.
            async with self.db.connection() as con:
                await store.release_challenge(con, row.id)
            raise
        hashed = await asyncio.to_thread(HASHER.hash, msg.new_password)
        async with self.db.transaction() as con:
            await store.set_password(con, user_id, hashed, "password_reset")
            await store.revoke_sessions(con, [], "password_reset", user_id=user_id)
            await self.audit(con, str(user_id), user_id, "password_reset", client_ip=msg.client_ip)
        await self._succeeded(f"user:{user_id}", user_id, msg.client_ip, "otp")

    # --- email change ------------------------------------------------------------------------------

    # The email is where password reset codes go for an account without a phone, and what a reset
    # can be asked by: changing it with a stolen access token alone would hand the account over. So
    # the change needs the password (counted like a sign-in) and a code sent to the new address;
    # users then tells the old address. No connection is held across the asks or the hash.

    @handler
    async def request_email_change(self, msg: RequestEmailChange) -> OtpRequested:
        key = f"user:{msg.user_id}"
        await self._check_locks(key, msg.client_ip)
        authz = await self.bus.ask(GetUserAuthz(user_id=msg.user_id))
        hashed = None
        if authz.status == "active":
            async with self.db.connection() as con:
                hashed = await store.password_hash(con, msg.user_id)
        password = msg.password[:MAX_PASSWORD_LENGTH]
        if not (await asyncio.to_thread(_verify, hashed or self._dummy_hash, password) and hashed is not None):
            await self._failed(key, msg.user_id, msg.client_ip, "password")
            raise Forbidden("wrong password", code="wrong_password")
        await self._check_locks(key, msg.client_ip)  # a parallel guess may have locked it meanwhile
        new_email = msg.new_email.strip().lower()
        if new_email == (authz.email or "").lower():
            raise Invalid("this is already the account's email", code="same_email")
        if await self._resolve(new_email) is not None:
            raise Conflict("this email belongs to another account", code="email_taken", field="email")
        account = account_key(new_email)
        if (again := await self._recent_code(account, "email_change", user_id=msg.user_id)) is not None:
            return again
        await self._within_budgets(account, msg.client_ip)
        challenge_id, code, expires_at = await self._code_challenge(
            account, "email_change", msg.user_id, msg.client_ip, new_email=new_email
        )
        await self._deliver(authz, code, "email_change", challenge_id, to_email=new_email)
        log.info("email change asked by user %s (code %s sent to the new address)", msg.user_id, challenge_id)
        return OtpRequested(
            challenge_id=challenge_id, expires_at=expires_at, resend_after_s=self.conf.otp_resend_cooldown_s
        )

    @handler
    async def confirm_email_change(self, msg: ConfirmEmailChange) -> User:
        # The caller is signed in: a wrong code refuses this change (403), it says nothing of the token.
        row, ok = await self._open_challenge(
            msg.challenge_id, msg.code, ("email_change",), msg.client_ip, user_id=msg.user_id, refuse=Forbidden
        )
        if not ok:
            await self._failed(f"user:{msg.user_id}", msg.user_id, msg.client_ip, "otp")
            raise Forbidden(INVALID_CODE, code="invalid_code")
        assert row.new_email is not None  # the table's check: an email_change row keeps its address
        return await self.bus.ask(ChangeEmail(user_id=msg.user_id, email=row.new_email, by=str(msg.user_id)))

    # --- verifiers ---------------------------------------------------------------------------------

    @handler
    async def get_jwks(self, msg: GetJwks) -> Jwks:
        return Jwks(keys=self._ring().jwks()["keys"])

    @handler
    async def list_denied(self, msg: ListDeniedTokens, con: asyncpg.Connection) -> DeniedTokens:
        return await store.denied_since(con, msg.cursor)


def contains_identifier(password: str, account: UserAuthz) -> bool:
    """Does the password contain the account's email local part, phone (national digits) or NPI?"""
    folded = re.sub(r"\s+", "", password).casefold()
    needles = []
    if account.email:
        needles.append(account.email.split("@", 1)[0].casefold())
    if account.phone:
        needles.append(account.phone[-10:])  # +229 then 10 digits: the part people type
    if account.npi:
        needles.append(account.npi)
    return any(len(n) >= 4 and n in folded for n in needles)


def totp_step(secret: str, code: str, *, after: int, at: float | None = None) -> int | None:
    """The 30-second step (now, one before, one after) whose code this is, if later than `after`.

    Refusing steps already used means a code seen over a shoulder cannot be replayed.
    """
    if not TOTP_DIGITS.match(code):
        return None
    totp = pyotp.TOTP(secret)
    now = time.time() if at is None else at
    current = int(now // totp.interval)
    for step in (current, current - 1, current + 1):
        if step > after and hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None
