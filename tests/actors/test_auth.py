"""Auth actor through its messages: passwords, lockouts, one-time codes, refresh rotation, TOTP.

Users are created through the users service's own messages; nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pyotp
import pytest

from simveb.actors.auth.actor import totp_step
from simveb.actors.auth.messages import (
    CheckPasswordPolicy,
    EnableTotp,
    ListDeniedTokens,
    ListSessions,
    Login,
    Logout,
    RefreshSession,
    RequestOtp,
    RevokeSession,
    SetPassword,
    SetupTotp,
    VerifyOtp,
)
from simveb.actors.users.messages import SYSTEM, CreateUser, SeedUsers, SetUserRoles
from simveb.config import Settings, with_overrides
from simveb.errors import Conflict, Invalid, NotFound, TooManyRequests, Unauthorized
from simveb.runtime import Runtime

PASSWORD = "correct horse battery"
_phones = itertools.count(10_000_000)


async def make_user(rt: Runtime, *roles: str, password: str | None = PASSWORD) -> tuple[uuid.UUID, str]:
    """A user created the way an admin does it (users service), with a password set by auth."""
    assert rt.bus is not None
    await rt.bus.ask(SeedUsers(only_if_empty=True))
    n = next(_phones)
    email = f"user{n}@example.bj"
    user = await rt.bus.ask(
        CreateUser(caller=SYSTEM, kind="staff", roles=list(roles or ("agent",)), email=email, phone=f"+22901{n:08d}")
    )
    if password is not None:
        await rt.bus.ask(SetPassword(user_id=user.id, password=password, by="test"))
    return user.id, email


@contextlib.asynccontextmanager
async def runtime_with(base: Settings, **auth: object) -> AsyncIterator[Runtime]:
    """A runtime on empty tables with some auth settings changed (short windows for expiry tests)."""
    from tests.conftest import fresh_runtime

    async with fresh_runtime(with_overrides(base, auth=auth)) as rt:
        yield rt


@pytest.fixture
async def short_rt(base_settings: Settings) -> AsyncIterator[Runtime]:
    async with runtime_with(
        base_settings, lockout_s=1, failure_window_s=60, otp_ttl_s=1, otp_resend_cooldown_s=0
    ) as rt:
        yield rt


async def db_fetch(rt: Runtime, sql: str, *args: object) -> list[asyncpg.Record]:
    assert rt.db is not None
    async with rt.db.pool.acquire() as con:
        return await con.fetch(sql, *args)


# --- passwords ---------------------------------------------------------------------------------------


async def test_password_policy_and_history(runtime: Runtime) -> None:
    bus = runtime.bus
    assert bus is not None
    with pytest.raises(Invalid) as err:
        await bus.ask(CheckPasswordPolicy(password="short"))
    assert err.value.code == "password_policy"
    user_id, _ = await make_user(runtime)
    with pytest.raises(Invalid, match="last 5"):
        await bus.ask(SetPassword(user_id=user_id, password=PASSWORD, by="test"))
    for i in range(5):
        await bus.ask(SetPassword(user_id=user_id, password=f"another password {i}", by="test"))
    # Six passwords later the first one is allowed again; the newest five are not.
    await bus.ask(CheckPasswordPolicy(password=PASSWORD, user_id=user_id))
    with pytest.raises(Invalid):
        await bus.ask(CheckPasswordPolicy(password="another password 1", user_id=user_id))
    rows = await db_fetch(runtime, "SELECT password_hash FROM auth.credentials WHERE user_id = $1", user_id)
    assert rows[0]["password_hash"].startswith("$argon2id$v=19$m=19456,t=2,p=1$")


# --- login, lockout ----------------------------------------------------------------------------------


async def test_login_unknown_and_wrong_password_look_the_same(runtime: Runtime) -> None:
    bus = runtime.bus
    assert bus is not None
    _, email = await make_user(runtime)
    with pytest.raises(Unauthorized) as a:
        await bus.ask(Login(identifier=email, password="wrong password!!"))
    with pytest.raises(Unauthorized) as b:
        await bus.ask(Login(identifier="nobody@example.bj", password="wrong password!!"))
    assert (
        (a.value.code, a.value.detail)
        == (b.value.code, b.value.detail)
        == (
            "invalid_credentials",
            "wrong identifier or password",
        )
    )
    result = await bus.ask(Login(identifier=email.upper(), password=PASSWORD, client_ip="10.0.0.1"))
    assert result.status == "authenticated" and result.tokens is not None
    attempts = await db_fetch(runtime, "SELECT success FROM auth.login_attempts ORDER BY id")
    assert [r["success"] for r in attempts] == [False, False, True]


async def test_lockout_after_five_failures_then_expiry(short_rt: Runtime) -> None:
    bus = short_rt.bus
    assert bus is not None
    _, email = await make_user(short_rt)
    for _ in range(4):
        with pytest.raises(Unauthorized):
            await bus.ask(Login(identifier=email, password="wrong password!!", client_ip="10.0.0.2"))
    with pytest.raises(TooManyRequests) as locked:
        await bus.ask(Login(identifier=email, password="wrong password!!", client_ip="10.0.0.2"))
    assert locked.value.headers["Retry-After"] == "1"
    # Even the right password is refused while locked.
    with pytest.raises(TooManyRequests):
        await bus.ask(Login(identifier=email, password=PASSWORD))
    lockouts = await db_fetch(short_rt, "SELECT scope, failures FROM auth.lockouts")
    assert [(r["scope"], r["failures"]) for r in lockouts] == [("account", 5)]
    await asyncio.sleep(1.2)
    result = await bus.ask(Login(identifier=email, password=PASSWORD))
    assert result.status == "authenticated"


async def test_unknown_accounts_lock_too(short_rt: Runtime) -> None:
    """Locking only real accounts would tell an attacker which ones exist."""
    bus = short_rt.bus
    assert bus is not None
    for _ in range(4):
        with pytest.raises(Unauthorized):
            await bus.ask(Login(identifier="ghost@example.bj", password="wrong password!!"))
    with pytest.raises(TooManyRequests):
        await bus.ask(Login(identifier="ghost@example.bj", password="wrong password!!"))


async def test_address_throttle(base_settings: Settings) -> None:
    """An address that spent its burst is refused with the seconds until its next token (not a
    lockout of minutes), its right password included; other addresses are untouched."""
    async with runtime_with(base_settings, address_burst=3, address_refill_s=30.0) as rt:
        bus = rt.bus
        assert bus is not None
        _, email = await make_user(rt)
        for i in range(2):
            with pytest.raises(Unauthorized):
                await bus.ask(Login(identifier=f"x{i}@example.bj", password="wrong password!!", client_ip="10.9.9.9"))
        with pytest.raises(TooManyRequests) as emptied:
            await bus.ask(Login(identifier="x3@example.bj", password="wrong password!!", client_ip="10.9.9.9"))
        assert emptied.value.code == "throttled"
        assert 1 <= int(emptied.value.headers["Retry-After"]) <= 30
        with pytest.raises(TooManyRequests) as refused:
            await bus.ask(Login(identifier=email, password=PASSWORD, client_ip="10.9.9.9"))
        assert refused.value.code == "throttled"
        assert 1 <= int(refused.value.headers["Retry-After"]) <= 30
        assert (await bus.ask(Login(identifier=email, password=PASSWORD, client_ip="10.9.9.8"))).tokens
        # A throttle is no lockout: nothing was written to auth.lockouts.
        assert await db_fetch(rt, "SELECT scope FROM auth.lockouts") == []


# --- refresh rotation --------------------------------------------------------------------------------


async def test_refresh_rotates_and_reuse_revokes_the_family(runtime: Runtime) -> None:
    bus = runtime.bus
    assert bus is not None
    user_id, email = await make_user(runtime)
    first = (await bus.ask(Login(identifier=email, password=PASSWORD))).tokens
    assert first is not None
    second = (await bus.ask(RefreshSession(refresh_token=first.refresh_token))).tokens
    assert second is not None and second.session_id == first.session_id
    assert second.refresh_token != first.refresh_token
    third = (await bus.ask(RefreshSession(refresh_token=second.refresh_token))).tokens
    assert third is not None
    with pytest.raises(Unauthorized) as reused:
        await bus.ask(RefreshSession(refresh_token=first.refresh_token))
    assert reused.value.code == "refresh_token_reused"
    # The newest token of the family is dead too, and the session is gone.
    with pytest.raises(Unauthorized) as dead:
        await bus.ask(RefreshSession(refresh_token=third.refresh_token))
    assert dead.value.code == "session_revoked"
    assert (await bus.ask(ListSessions(user_id=user_id))).items == []
    denied = await bus.ask(ListDeniedTokens())
    assert len(denied.items) == 3  # every access token the family had alive


async def test_sessions_are_per_user(runtime: Runtime) -> None:
    bus = runtime.bus
    assert bus is not None
    a, a_email = await make_user(runtime)
    b, b_email = await make_user(runtime)
    a_tokens = (await bus.ask(Login(identifier=a_email, password=PASSWORD))).tokens
    await bus.ask(Login(identifier=b_email, password=PASSWORD))
    assert a_tokens is not None
    with pytest.raises(NotFound):
        await bus.ask(RevokeSession(user_id=b, session_id=a_tokens.session_id))
    assert len((await bus.ask(ListSessions(user_id=a))).items) == 1
    await bus.ask(RevokeSession(user_id=a, session_id=a_tokens.session_id))
    assert (await bus.ask(ListSessions(user_id=a))).items == []


async def test_role_change_revokes_sessions(runtime: Runtime) -> None:
    from tests.support import wait_for

    bus = runtime.bus
    assert bus is not None
    user_id, email = await make_user(runtime, "agent")
    tokens = (await bus.ask(Login(identifier=email, password=PASSWORD))).tokens
    assert tokens is not None
    await bus.ask(SetUserRoles(user_id=user_id, caller=SYSTEM, roles=["validator"]))

    async def revoked() -> bool:
        return (await bus.ask(ListSessions(user_id=user_id))).items == []

    await wait_for(revoked)
    with pytest.raises(Unauthorized):
        await bus.ask(RefreshSession(refresh_token=tokens.refresh_token))


async def test_logout_denies_the_token(runtime: Runtime) -> None:
    bus = runtime.bus
    assert bus is not None
    user_id, email = await make_user(runtime)
    tokens = (await bus.ask(Login(identifier=email, password=PASSWORD))).tokens
    assert tokens is not None
    await bus.ask(Logout(user_id=user_id, jti="some-jti", exp=int(time.time()) + 60, session_id=tokens.session_id))
    assert {d.jti for d in (await bus.ask(ListDeniedTokens())).items} >= {"some-jti"}
    with pytest.raises(Unauthorized):
        await bus.ask(RefreshSession(refresh_token=tokens.refresh_token))


# --- one-time codes ----------------------------------------------------------------------------------


async def test_otp_same_answer_for_unknown_accounts(runtime: Runtime) -> None:
    bus = runtime.bus
    assert bus is not None
    await make_user(runtime)
    unknown = await bus.ask(RequestOtp(identifier="+2290199999999", purpose="login"))
    again = await bus.ask(RequestOtp(identifier="+2290199999999", purpose="login"))
    assert again.challenge_id == unknown.challenge_id  # cooldown: nothing new is sent
    assert 0 < again.resend_after_s <= 60
    for code in ("000000", "123456"):
        with pytest.raises(Unauthorized) as err:
            await bus.ask(VerifyOtp(challenge_id=unknown.challenge_id, code=code))
        assert err.value.code == "invalid_code"
    rows = await db_fetch(runtime, "SELECT user_id, code_hash, attempts FROM auth.otp_verifications")
    assert rows[0]["user_id"] is None and len(rows[0]["code_hash"]) == 32 and rows[0]["attempts"] == 2


async def test_otp_attempt_limit(runtime: Runtime) -> None:
    """Five wrong codes: the code is dead, and the account is locked (guessing cannot move on to a new code)."""
    bus = runtime.bus
    assert bus is not None
    _, email = await make_user(runtime)
    sent = await bus.ask(RequestOtp(identifier=email, purpose="login"))
    for _ in range(4):
        with pytest.raises(Unauthorized):
            await bus.ask(VerifyOtp(challenge_id=sent.challenge_id, code="000000"))
    with pytest.raises(TooManyRequests) as err:
        await bus.ask(VerifyOtp(challenge_id=sent.challenge_id, code="000000"))
    assert err.value.code == "locked_out"
    rows = await db_fetch(runtime, "SELECT attempts FROM auth.otp_verifications")
    assert rows[0]["attempts"] == 5
    assert [r["scope"] for r in await db_fetch(runtime, "SELECT scope FROM auth.lockouts")] == ["account"]


async def test_otp_attempt_limit_per_code(base_settings: Settings) -> None:
    async with runtime_with(base_settings, max_failures=50, otp_max_attempts=3) as rt:
        bus = rt.bus
        assert bus is not None
        _, email = await make_user(rt)
        sent = await bus.ask(RequestOtp(identifier=email, purpose="login"))
        for _ in range(3):
            with pytest.raises(Unauthorized):
                await bus.ask(VerifyOtp(challenge_id=sent.challenge_id, code="000000"))
        with pytest.raises(TooManyRequests) as err:
            await bus.ask(VerifyOtp(challenge_id=sent.challenge_id, code="000000"))
        assert err.value.code == "too_many_attempts"


async def test_otp_expiry(short_rt: Runtime) -> None:
    bus = short_rt.bus
    assert bus is not None
    _, email = await make_user(short_rt)
    sent = await bus.ask(RequestOtp(identifier=email, purpose="login"))
    await asyncio.sleep(1.2)
    with pytest.raises(Unauthorized) as err:
        await bus.ask(VerifyOtp(challenge_id=sent.challenge_id, code="000000"))
    assert err.value.code == "code_expired"


# --- TOTP --------------------------------------------------------------------------------------------


async def test_totp_setup_enable_and_challenge(runtime: Runtime) -> None:
    bus = runtime.bus
    assert bus is not None
    user_id, email = await make_user(runtime, "admin")
    # Admin without a second factor: a limited session only.
    limited = (await bus.ask(Login(identifier=email, password=PASSWORD))).tokens
    assert limited is not None and limited.limited
    setup = await bus.ask(SetupTotp(user_id=user_id, account_name=email))
    assert setup.otpauth_uri.startswith("otpauth://totp/SIMVEB:") and setup.qr_svg.startswith("<svg")
    totp = pyotp.TOTP(setup.secret)
    with pytest.raises(Invalid):
        await bus.ask(
            EnableTotp(user_id=user_id, code="000000" if totp.now() != "000000" else "111111", password=PASSWORD)
        )
    recovery = await bus.ask(EnableTotp(user_id=user_id, code=totp.now(), password=PASSWORD))
    assert len(recovery.codes) == 10
    with pytest.raises(Conflict):
        await bus.ask(SetupTotp(user_id=user_id, account_name=email))

    challenge = await bus.ask(Login(identifier=email, password=PASSWORD))
    assert challenge.status == "two_factor_required" and challenge.challenge is not None
    # The code used to enable is spent: replaying it is refused.
    with pytest.raises(Unauthorized):
        await bus.ask(VerifyOtp(challenge_id=challenge.challenge.challenge_id, code=totp.now()))
    next_code = totp.at(time.time() + 30)
    done = await bus.ask(VerifyOtp(challenge_id=challenge.challenge.challenge_id, code=next_code))
    assert done.tokens is not None and not done.tokens.limited

    # A recovery code works once.
    challenge = await bus.ask(Login(identifier=email, password=PASSWORD))
    assert challenge.challenge is not None
    done = await bus.ask(VerifyOtp(challenge_id=challenge.challenge.challenge_id, code=recovery.codes[0].lower()))
    assert done.tokens is not None
    challenge = await bus.ask(Login(identifier=email, password=PASSWORD))
    assert challenge.challenge is not None
    with pytest.raises(Unauthorized):
        await bus.ask(VerifyOtp(challenge_id=challenge.challenge.challenge_id, code=recovery.codes[0]))


def test_totp_step_window() -> None:
    secret = pyotp.random_base32()
    totp = pyotp.TOTP(secret)
    now = 1_700_000_000.0
    step = int(now // 30)
    assert totp_step(secret, totp.at(now), after=0, at=now) == step
    assert totp_step(secret, totp.at(now - 30), after=0, at=now) == step - 1
    assert totp_step(secret, totp.at(now - 90), after=0, at=now) is None
    assert totp_step(secret, totp.at(now), after=step, at=now) is None


async def test_deactivation_revokes_sessions(runtime: Runtime) -> None:
    from simveb.actors.users.messages import DeactivateUser
    from tests.support import wait_for

    bus = runtime.bus
    assert bus is not None
    user_id, email = await make_user(runtime)
    tokens = (await bus.ask(Login(identifier=email, password=PASSWORD))).tokens
    assert tokens is not None
    await bus.ask(DeactivateUser(user_id=user_id, caller=SYSTEM, reason="left"))

    async def revoked() -> bool:
        return (await bus.ask(ListSessions(user_id=user_id))).items == []

    await wait_for(revoked)
    with pytest.raises(Unauthorized):
        await bus.ask(RefreshSession(refresh_token=tokens.refresh_token))
    with pytest.raises(Unauthorized) as err:
        await bus.ask(Login(identifier=email, password=PASSWORD))
    assert err.value.code == "invalid_credentials"


async def test_purge_keeps_what_still_matters(runtime: Runtime) -> None:
    from simveb.actors.auth import store

    bus = runtime.bus
    assert bus is not None and runtime.db is not None
    user_id, _ = await make_user(runtime)
    await bus.ask(Logout(user_id=user_id, jti="old", exp=int(time.time()) - 3600))
    await bus.ask(Logout(user_id=user_id, jti="live", exp=int(time.time()) + 600))
    # Address buckets: one full again (2 tokens an hour ago, 10 s a token, burst 50), one still short.
    async with runtime.db.pool.acquire() as con:
        await con.execute(
            "INSERT INTO auth.address_buckets (address, tokens, updated_at, throttled_at) VALUES"
            " ('10.0.0.1', 2, now() - interval '1 hour', now() - interval '1 hour'),"
            " ('10.0.0.2', 2, now() - interval '1 minute', now() - interval '1 minute')"
        )
        await store.purge(con, address_burst=50, address_refill_s=10.0)
    assert {d.jti for d in (await bus.ask(ListDeniedTokens())).items} == {"live"}
    rows = await db_fetch(runtime, "SELECT jti FROM auth.denied_tokens")
    assert [r["jti"] for r in rows] == ["live"]
    assert [r["address"] for r in await db_fetch(runtime, "SELECT address FROM auth.address_buckets")] == ["10.0.0.2"]


# --- the pool under concurrent refreshes -------------------------------------------------------------


async def test_twenty_concurrent_refreshes_complete_with_a_pool_of_ten(base_settings: Settings) -> None:
    """Refresh asks users while auth works on a token: it must never hold a pooled connection while it
    waits, or 20 refreshes (auth takes 16 at once) starve a pool of 10 and time out."""
    from tests.conftest import fresh_runtime

    settings = with_overrides(
        base_settings, database={"pool_min": 1, "pool_max": 10, "acquire_timeout_s": 5.0}, bus={"ask_timeout_s": 10.0}
    )
    async with fresh_runtime(settings) as rt:
        assert rt.bus is not None and rt.db is not None and rt.db.pool.get_max_size() == 10
        _user_id, email = await make_user(rt, "citizen")
        logins = [await rt.bus.ask(Login(identifier=email, password=PASSWORD)) for _ in range(20)]
        pairs = [result.tokens for result in logins]
        assert all(p is not None for p in pairs) and len({p.session_id for p in pairs if p}) == 20
        started = time.monotonic()
        results = await asyncio.gather(
            *(rt.bus.ask(RefreshSession(refresh_token=p.refresh_token)) for p in pairs if p), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures == [], failures
        assert [r.status for r in results] == ["authenticated"] * 20  # type: ignore[union-attr]
        assert {r.tokens.session_id for r in results} == {p.session_id for p in pairs if p}  # type: ignore[union-attr]
        assert elapsed < settings.database.acquire_timeout_s  # nobody waited out a connection
        # Every rotation is recorded: the old refresh tokens are spent, one new live one per session.
        rows = await db_fetch(
            rt, "SELECT count(*) FILTER (WHERE rotated_at IS NULL) AS live, count(*) AS total FROM auth.refresh_tokens"
        )
        assert (rows[0]["live"], rows[0]["total"]) == (20, 40)
