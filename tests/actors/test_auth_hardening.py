"""Identity and sessions hardening, each test written as the attack it stops (issue 13: 1, 3, 4, 9)."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from simveb.actors.auth.messages import ListDeniedTokens
from simveb.http.security import DenyList
from simveb.runtime import Runtime

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
