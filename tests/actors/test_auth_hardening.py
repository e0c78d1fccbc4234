"""Identity and sessions hardening, each test written as the attack it stops (issue 13: 1, 3, 4, 9)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import asyncpg
import pyotp
import pytest

from simveb.actors.auth.messages import (
    EnableTotp,
    ListDeniedTokens,
    ListSessions,
    Login,
    RefreshSession,
    ResetTotp,
    SetupTotp,
    VerifyOtp,
)
from simveb.config import Settings
from simveb.errors import Forbidden, TooManyRequests, Unauthorized
from simveb.http.security import DenyList
from simveb.messages import Caller
from simveb.runtime import Runtime
from tests.actors.test_auth import PASSWORD, db_fetch, make_user, runtime_with


def wrong(totp: pyotp.TOTP) -> str:
    """A six-digit code that is none of the steps the server accepts right now."""
    now = time.time()
    valid = {totp.at(now + d) for d in (-60, -30, 0, 30, 60)}
    return next(c for c in ("000000", "111111", "222222", "333333", "444444", "555555", "666666") if c not in valid)


async def with_totp(rt: Runtime, *roles: str) -> tuple[object, str, pyotp.TOTP]:
    """A user with TOTP enabled (set up and confirmed the way the user does it)."""
    assert rt.bus is not None
    user_id, email = await make_user(rt, *roles)
    setup = await rt.bus.ask(SetupTotp(user_id=user_id, account_name=email))
    totp = pyotp.TOTP(setup.secret)
    await rt.bus.ask(EnableTotp(user_id=user_id, code=totp.now(), password=PASSWORD))
    return user_id, email, totp


# --- 1. second factor ---------------------------------------------------------------------------------


async def test_password_then_wrong_totp_codes_in_a_loop_locks_the_second_factor(runtime: Runtime) -> None:
    """The attacker knows the password and guesses the TOTP: password, four wrong codes, password
    again, four more ... A correct password used to count as a success and reset the count."""
    bus = runtime.bus
    assert bus is not None
    _, email, totp = await with_totp(runtime)
    guesses = 0
    locked = False
    for _round in range(4):
        result = await bus.ask(Login(identifier=email, password=PASSWORD, client_ip="10.1.0.1"))
        assert result.status == "two_factor_required" and result.challenge is not None
        for _ in range(4):
            try:
                await bus.ask(VerifyOtp(challenge_id=result.challenge.challenge_id, code=wrong(totp)))
            except TooManyRequests:
                locked = True
                break
            except Unauthorized:
                guesses += 1
        if locked:
            break
    assert locked and guesses <= runtime.settings.auth.two_factor_max_failures
    # Locked means locked: even the right code is refused now, on a fresh challenge.
    result = await bus.ask(Login(identifier=email, password=PASSWORD, client_ip="10.1.0.1"))
    assert result.challenge is not None
    with pytest.raises(TooManyRequests) as err:
        await bus.ask(VerifyOtp(challenge_id=result.challenge.challenge_id, code=totp.at(time.time() + 30)))
    assert err.value.code == "locked_out"
    scopes = [r["scope"] for r in await db_fetch(runtime, "SELECT scope FROM auth.lockouts")]
    assert scopes == ["two_factor"]


async def test_an_attackers_own_logins_do_not_refill_the_address_bucket(base_settings: Settings) -> None:
    """From one address: guesses at other people's accounts, then a successful login into the
    attacker's own account (used to reset the address counter), then guesses again: throttled
    after the burst, as if the successes had not happened."""
    async with runtime_with(base_settings, address_burst=6, address_refill_s=60.0) as rt:
        bus = rt.bus
        assert bus is not None
        _, mine = await make_user(rt)
        victims = [(await make_user(rt))[1] for _ in range(3)]
        ip = "10.6.6.6"
        guesses = 0
        with pytest.raises(TooManyRequests) as throttled:
            for i in range(12):
                guesses += 1
                with contextlib.suppress(Unauthorized):
                    await bus.ask(Login(identifier=victims[i % 3], password=f"guess {i} !!!!", client_ip=ip))
                if i % 2 == 1:
                    assert (await bus.ask(Login(identifier=mine, password=PASSWORD, client_ip=ip))).tokens
        assert throttled.value.code == "throttled"
        assert guesses == 6  # the burst, not one more for each of the attacker's own sign-ins
        # No account was locked (each victim had two guesses) and no address lockout exists any more.
        assert await db_fetch(rt, "SELECT scope, key FROM auth.lockouts") == []


async def test_an_attackers_success_never_resets_a_victims_account_count(runtime: Runtime) -> None:
    """Guessing a victim's password between the attacker's own successful logins still locks the victim."""
    bus = runtime.bus
    assert bus is not None
    _, mine = await make_user(runtime)
    _, victim = await make_user(runtime)
    with pytest.raises(TooManyRequests):
        for i in range(6):
            with contextlib.suppress(Unauthorized):
                await bus.ask(Login(identifier=victim, password=f"guess {i} !!!!", client_ip="10.7.7.7"))
            assert (await bus.ask(Login(identifier=mine, password=PASSWORD, client_ip="10.7.7.7"))).tokens


async def test_a_password_proved_without_the_second_factor_resets_nothing(runtime: Runtime) -> None:
    """Four wrong passwords, then the right one (second factor still owed), then one wrong: locked.
    The right password alone is not a completed sign-in."""
    bus = runtime.bus
    assert bus is not None
    _, email, _totp = await with_totp(runtime)
    for i in range(4):
        with pytest.raises(Unauthorized):
            await bus.ask(Login(identifier=email, password=f"guess {i} !!!!"))
    assert (await bus.ask(Login(identifier=email, password=PASSWORD))).status == "two_factor_required"
    with pytest.raises(TooManyRequests):
        await bus.ask(Login(identifier=email, password="guess 5 !!!!"))


async def test_enabling_totp_with_a_stolen_token_alone_fails_and_ends_other_sessions(runtime: Runtime) -> None:
    """An attacker with only an access token cannot bind their authenticator (the password is asked
    again); when the owner enables it, every other session (the attacker's) is revoked."""
    bus = runtime.bus
    assert bus is not None
    user_id, email = await make_user(runtime)
    mine = (await bus.ask(Login(identifier=email, password=PASSWORD))).tokens
    stolen = (await bus.ask(Login(identifier=email, password=PASSWORD))).tokens
    assert mine is not None and stolen is not None
    setup = await bus.ask(SetupTotp(user_id=user_id, account_name=email))
    totp = pyotp.TOTP(setup.secret)
    with pytest.raises(Forbidden) as err:
        await bus.ask(EnableTotp(user_id=user_id, code=totp.now(), password="not the password"))
    assert err.value.code == "wrong_password"
    await bus.ask(EnableTotp(user_id=user_id, code=totp.now(), password=PASSWORD, session_id=mine.session_id))
    assert [s.id for s in (await bus.ask(ListSessions(user_id=user_id))).items] == [mine.session_id]
    with pytest.raises(Unauthorized):
        await bus.ask(RefreshSession(refresh_token=stolen.refresh_token))
    denied = {d.jti for d in (await bus.ask(ListDeniedTokens())).items}
    assert len(denied) == 1  # the stolen session's access token


async def test_totp_secret_is_sealed_at_rest_and_clear_rows_are_sealed_at_start(base_settings: Settings) -> None:
    """A database dump does not give the TOTP secrets; rows from before sealing still work, then get sealed."""
    async with runtime_with(base_settings) as rt:
        assert rt.bus is not None and rt.db is not None
        user_id, email, totp = await with_totp(rt)
        row = (await db_fetch(rt, "SELECT secret, secret_sealed FROM auth.totp WHERE user_id = $1", user_id))[0]
        assert row["secret"] is None and totp.secret.encode() not in row["secret_sealed"]
        # A row as written before sealing existed: the secret in clear.
        other, _ = await make_user(rt)
        async with rt.db.transaction() as con:
            await con.execute(
                "INSERT INTO auth.totp (user_id, secret, enabled_at) VALUES ($1, $2, now())", other, totp.secret
            )
    # A restart (same tables) seals the clear row; signing in with the sealed secret still works.
    rt2 = Runtime(base_settings)
    await rt2.start(migrate_first=False, seed_if_empty=False)
    try:
        assert rt2.bus is not None
        rows = await db_fetch(rt2, "SELECT secret, secret_sealed FROM auth.totp WHERE user_id = $1", other)
        assert rows[0]["secret"] is None and rows[0]["secret_sealed"] is not None
        result = await rt2.bus.ask(Login(identifier=email, password=PASSWORD))
        assert result.challenge is not None
        done = await rt2.bus.ask(VerifyOtp(challenge_id=result.challenge.challenge_id, code=totp.at(time.time() + 30)))
        assert done.tokens is not None
    finally:
        await rt2.stop()


async def test_an_admin_resets_a_second_factor_audited_and_nobody_else_can(runtime: Runtime) -> None:
    bus = runtime.bus
    assert bus is not None
    user_id, email, _totp = await with_totp(runtime)
    session = (await bus.ask(Login(identifier=email, password=PASSWORD))).challenge
    assert session is not None
    agent = Caller(sub=str(uuid.uuid4()), roles=("agent",), permissions=frozenset({"users:read"}))
    with pytest.raises(Forbidden):
        await bus.ask(ResetTotp(user_id=user_id, caller=agent, reason="lost phone"))
    admin = Caller(sub="admin-1", roles=("admin",), permissions=frozenset({"users:write"}))
    assert await bus.ask(ResetTotp(user_id=user_id, caller=admin, reason="lost phone"))
    assert (await bus.ask(Login(identifier=email, password=PASSWORD))).status == "authenticated"
    audit = await db_fetch(runtime, "SELECT action, user_id, actor, reason FROM auth.admin_actions")
    assert [tuple(r) for r in audit] == [("totp_reset", user_id, "admin-1", "lost phone")]


# --- 9. deny list: a denial committed out of order still reaches every verifier ----------------------


async def test_a_denial_committed_out_of_order_reaches_another_verifier(runtime: Runtime) -> None:
    """Two revocations: the one with the smaller id commits last. A verifier that synced in between
    (another process, its own cursor) must still learn of it: with an id cursor it never did."""
    assert runtime.bus is not None and runtime.settings.database.url
    verifier = DenyList(runtime.bus, poll_s=3600)
    await verifier.sync()
    exp = time.time() + 600
    slow = await asyncpg.connect(runtime.settings.database.url)
    fast = await asyncpg.connect(runtime.settings.database.url)
    try:
        tx = slow.transaction()
        await tx.start()
        early_id = await slow.fetchval(
            "INSERT INTO auth.denied_tokens (jti, expires_at, reason) VALUES ('early', to_timestamp($1), 'test')"
            " RETURNING id",
            exp,
        )
        late_id = await fast.fetchval(
            "INSERT INTO auth.denied_tokens (jti, expires_at, reason) VALUES ('late', to_timestamp($1), 'test')"
            " RETURNING id",
            exp,
        )
        assert early_id < late_id
        await verifier.sync()  # sees 'late'; the smaller id is still in flight
        assert verifier("late") and not verifier("early")
        await tx.commit()
    finally:
        await slow.close()
        await fast.close()
    await verifier.sync()
    assert verifier("early"), "a denial committed behind the cursor was skipped"
    # And the cursor settles: once nothing is in flight the same denials are not sent again forever.
    page = await runtime.bus.ask(ListDeniedTokens(cursor=verifier.cursor))
    assert page.cursor >= verifier.cursor


async def test_deny_list_pages_end_on_whole_transactions(runtime: Runtime) -> None:
    """A revocation of thousands of tokens in one transaction is never cut in half by paging."""
    assert runtime.bus is not None and runtime.db is not None
    async with runtime.db.transaction() as con:
        await con.execute(
            "INSERT INTO auth.denied_tokens (jti, expires_at, reason)"
            " SELECT 'bulk-' || g, now() + interval '10 minutes', 'test' FROM generate_series(1, 5003) g"
        )
    async with runtime.db.transaction() as con:
        await con.execute(
            "INSERT INTO auth.denied_tokens (jti, expires_at, reason) VALUES ('after', now() + interval '10 minutes', 't')"
        )
    # Pages are cut only below the watermark; a transaction elsewhere in the cluster can hold it back.
    for _ in range(50):
        async with runtime.db.connection() as con:
            if await con.fetchval(
                "SELECT pg_snapshot_xmin(pg_current_snapshot()) > txid FROM auth.denied_tokens WHERE jti = 'after'"
            ):
                break
        await asyncio.sleep(0.1)
    else:
        pytest.skip("a long transaction elsewhere on this PostgreSQL holds the snapshot watermark back")
    first = await runtime.bus.ask(ListDeniedTokens())
    assert len(first.items) == 5003  # the whole first transaction, past the page size
    seen = {d.jti for d in first.items}
    cursor = first.cursor
    for _ in range(3):
        page = await runtime.bus.ask(ListDeniedTokens(cursor=cursor))
        seen |= {d.jti for d in page.items}
        cursor = page.cursor
    assert "after" in seen and len(seen) == 5004


# --- 3. account takeover: refresh reuse grace, staff session limit ------------------------------------


async def test_a_lost_refresh_answer_gets_the_same_pair_again_within_the_grace(runtime: Runtime) -> None:
    bus = runtime.bus
    assert bus is not None
    user_id, email = await make_user(runtime)
    first = (await bus.ask(Login(identifier=email, password=PASSWORD))).tokens
    assert first is not None
    second = (await bus.ask(RefreshSession(refresh_token=first.refresh_token))).tokens
    again = (await bus.ask(RefreshSession(refresh_token=first.refresh_token))).tokens  # the answer was lost
    assert again == second
    assert [s.id for s in (await bus.ask(ListSessions(user_id=user_id))).items] == [first.session_id]
    assert second is not None and (await bus.ask(RefreshSession(refresh_token=second.refresh_token))).tokens


async def test_a_refresh_replay_after_the_grace_still_revokes_the_family(base_settings: Settings) -> None:
    """The thief replays a stolen refresh token the owner already exchanged: the session dies."""
    async with runtime_with(base_settings, refresh_reuse_grace_s=1) as rt:
        bus = rt.bus
        assert bus is not None
        user_id, email = await make_user(rt)
        first = (await bus.ask(Login(identifier=email, password=PASSWORD))).tokens
        assert first is not None
        second = (await bus.ask(RefreshSession(refresh_token=first.refresh_token))).tokens
        assert second is not None
        await asyncio.sleep(1.3)
        with pytest.raises(Unauthorized) as err:
            await bus.ask(RefreshSession(refresh_token=first.refresh_token))
        assert err.value.code == "refresh_token_reused"
        with pytest.raises(Unauthorized):
            await bus.ask(RefreshSession(refresh_token=second.refresh_token))
        assert (await bus.ask(ListSessions(user_id=user_id))).items == []


async def test_a_staff_session_ends_after_staff_session_minutes_however_often_refreshed(seeded: Runtime) -> None:
    """A stolen staff refresh token cannot keep a session alive past security.staff_session_minutes."""
    from simveb.actors.config.messages import PutSetting

    bus = seeded.bus
    assert bus is not None and seeded.db is not None
    await bus.ask(PutSetting(key="security.staff_session_minutes", value=30, by="test"))
    user_id, email = await make_user(seeded, "agent")
    tokens = (await bus.ask(Login(identifier=email, password=PASSWORD))).tokens
    assert tokens is not None and tokens.expires_in <= 900
    left = (await db_fetch(seeded, "SELECT expires_at - created_at AS d FROM auth.sessions"))[0]["d"]
    assert left.total_seconds() == pytest.approx(1800, abs=5)
    # Eight hours of refreshing, compressed: the session is older than the limit.
    async with seeded.db.transaction() as con:
        await con.execute("UPDATE auth.sessions SET created_at = now() - interval '31 minutes'")
    with pytest.raises(Unauthorized) as err:
        await bus.ask(RefreshSession(refresh_token=tokens.refresh_token))
    assert err.value.code in ("session_expired", "session_revoked")
    assert (await bus.ask(ListSessions(user_id=user_id))).items == []
    # Twenty-nine minutes in, a refresh works but its access token ends with the session.
    fresh = (await bus.ask(Login(identifier=email, password=PASSWORD))).tokens
    assert fresh is not None
    async with seeded.db.transaction() as con:
        await con.execute(
            "UPDATE auth.sessions SET created_at = now() - interval '29 minutes' WHERE id = $1", fresh.session_id
        )
    renewed = (await bus.ask(RefreshSession(refresh_token=fresh.refresh_token))).tokens
    assert renewed is not None and renewed.expires_in <= 61


async def test_two_concurrent_requests_cannot_remove_the_last_two_admins(runtime: Runtime) -> None:
    """Two admins, two requests at once: deactivate one, demote the other. One must be refused."""
    from simveb.actors.users.messages import SYSTEM, DeactivateUser, SetUserRoles
    from simveb.errors import Conflict

    bus = runtime.bus
    assert bus is not None
    await make_user(runtime, "agent")  # seeds roles
    for _ in range(5):  # the race is won or lost by timing: try it several times
        a, _ = await make_user(runtime, "admin")
        b, _ = await make_user(runtime, "admin")
        rows = await db_fetch(
            runtime,
            "SELECT u.id FROM users.users u JOIN users.user_roles r ON r.user_id = u.id"
            " WHERE r.role = 'admin' AND u.status = 'active' AND u.id <> ALL($1::uuid[])",
            [a, b],
        )
        # Only these two are admins: earlier rounds' survivors are demoted by a third admin first.
        for row in rows:
            await bus.ask(SetUserRoles(user_id=row["id"], caller=SYSTEM, roles=["agent"]))
        results = await asyncio.gather(
            bus.ask(DeactivateUser(user_id=a, caller=SYSTEM, reason="race")),
            bus.ask(SetUserRoles(user_id=b, caller=SYSTEM, roles=["agent"])),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, Conflict)]
        assert len(refused) == 1 and refused[0].code == "last_admin", results
        admins = await db_fetch(
            runtime,
            "SELECT count(*) AS n FROM users.users u JOIN users.user_roles r ON r.user_id = u.id"
            " WHERE r.role = 'admin' AND u.status = 'active'",
        )
        assert admins[0]["n"] == 1


# --- 4. NPI squatting ----------------------------------------------------------------------------------


async def test_a_deactivated_account_no_longer_holds_its_npi(runtime: Runtime) -> None:
    """A squatter registers someone's NPI; once deactivated, the real owner can register it."""
    from simveb.actors.users.messages import SYSTEM, ConfirmRegistration, DeactivateUser
    from tests.actors.test_users import _registration
    from tests.users_support import npi, seed_roles

    bus = runtime.bus
    assert bus is not None
    await seed_roles(runtime)
    n = npi()
    squatter = await bus.ask(_registration(npi=n))
    assert squatter.user_id is not None
    await bus.ask(ConfirmRegistration(user_id=squatter.user_id))
    assert (await bus.ask(_registration(npi=n))).user_id is None  # held
    await bus.ask(DeactivateUser(user_id=squatter.user_id, caller=SYSTEM, reason="closed"))
    owner = await bus.ask(_registration(npi=n))
    assert owner.created and owner.user_id not in (None, squatter.user_id)


async def test_an_admin_releases_a_squatted_npi_audited_and_an_agent_cannot(runtime: Runtime) -> None:
    from simveb.actors.users.messages import ConfirmRegistration, ReleaseNpi
    from tests.actors.test_users import _registration
    from tests.users_support import npi, seed_roles

    bus = runtime.bus
    assert bus is not None
    await seed_roles(runtime)
    n = npi()
    squatter = await bus.ask(_registration(npi=n))
    assert squatter.user_id is not None
    await bus.ask(ConfirmRegistration(user_id=squatter.user_id))
    agent = Caller(sub=str(uuid.uuid4()), roles=("agent",), permissions=frozenset({"users:read", "users:kyc"}))
    with pytest.raises(Forbidden):
        await bus.ask(ReleaseNpi(user_id=squatter.user_id, caller=agent, reason="squatted"))
    admin = Caller(sub="admin-2", roles=("admin",), permissions=frozenset({"users:write"}))
    released = await bus.ask(ReleaseNpi(user_id=squatter.user_id, caller=admin, reason="owner came with papers"))
    assert released.status == "inactive"
    owner = await bus.ask(_registration(npi=n))
    assert owner.created and owner.user_id != squatter.user_id
    rows = await db_fetch(
        runtime,
        "SELECT actor, new_value->>'reason' AS reason FROM users.user_history WHERE user_id = $1 AND action = 'npi_released'",
        squatter.user_id,
    )
    assert [(r["actor"], r["reason"]) for r in rows] == [("admin-2", "owner came with papers")]
