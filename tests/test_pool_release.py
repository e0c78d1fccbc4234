"""Pooled connections are released without asyncpg's session reset query (simveb.db.keep_session):
nothing may leave session state on them, and a transaction left open is still rolled back."""

from __future__ import annotations

import contextlib


async def test_released_connections_carry_no_session_state(seeded) -> None:
    db = seeded.db
    assert db.pool._reset is not None, "the pool releases with keep_session"
    async with contextlib.AsyncExitStack() as stack:
        # Every connection the pool holds: seeding went through every actor's handlers on them.
        cons = [await stack.enter_async_context(db.pool.acquire()) for _ in range(db.pool.get_size())]
        for con in cons:
            state = await con.fetchrow(
                "SELECT (SELECT count(*) FROM pg_settings WHERE source = 'session') AS settings,"
                " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks,"
                " (SELECT count(*) FROM pg_listening_channels()) AS channels,"
                " (SELECT count(*) FROM pg_cursors WHERE is_holdable) AS cursors"
            )
            assert dict(state) == {"settings": 0, "locks": 0, "channels": 0, "cursors": 0}


async def test_a_transaction_left_open_is_rolled_back_at_release(runtime) -> None:
    db = runtime.db
    con = await db.pool.acquire()
    pid = con.get_server_pid()
    await con.execute("BEGIN")
    await con.execute("CREATE TEMP TABLE left_open (x int) ON COMMIT DROP")
    await db.pool.release(con)
    async with contextlib.AsyncExitStack() as stack:
        cons = [await stack.enter_async_context(db.pool.acquire()) for _ in range(db.pool.get_size())]
        again = [c for c in cons if c.get_server_pid() == pid]
        assert again, "the released connection went back to the pool"
        assert not again[0].is_in_transaction()
        assert await again[0].fetchval("SELECT to_regclass('pg_temp.left_open') IS NULL"), "rolled back"
