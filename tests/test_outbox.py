"""The transactional outbox on a real PostgreSQL: after commit only, at least once, deduplicated."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from simveb.bus import Actor, handler
from simveb.config import Settings, with_overrides
from simveb.messages import Ask, Event
from simveb.outbox import OutboxRelay
from simveb.runtime import Runtime
from tests.conftest import truncate_all
from tests.support import wait_for


class Ping(Event):
    n: int


class Produce(Ask[int]):
    n: int
    fail_after_emit: bool = False


class Producer(Actor):
    name = "producer"

    @handler
    async def produce(self, msg: Produce) -> int:
        async with self.db.transaction() as con:
            await self.emit(con, Ping(n=msg.n))
            if msg.fail_after_emit:
                raise RuntimeError("rolled back after emitting")
        return msg.n


class Consumer(Actor):
    """Records each event it handles, inside the inbox transaction."""

    name = "consumer"
    calls = 0
    fail_times = 0

    @handler
    async def ping(self, event: Ping, con: asyncpg.Connection) -> None:
        type(self).calls += 1
        if type(self).fail_times > 0:
            type(self).fail_times -= 1
            raise RuntimeError("consumer not ready yet")
        await con.execute("INSERT INTO bustest.seen (n) VALUES ($1)", event.n)


@pytest.fixture
async def scratch(settings: Settings) -> AsyncIterator[str]:
    url = settings.database.url
    con = await asyncpg.connect(url)
    await con.execute("CREATE SCHEMA IF NOT EXISTS bustest; CREATE TABLE IF NOT EXISTS bustest.seen (n int)")
    await con.execute("TRUNCATE bustest.seen")
    await con.close()
    await truncate_all(url)
    Consumer.calls = 0
    Consumer.fail_times = 0
    yield url


async def seen(url: str) -> list[int]:
    con = await asyncpg.connect(url)
    try:
        return [r["n"] for r in await con.fetch("SELECT n FROM bustest.seen ORDER BY n")]
    finally:
        await con.close()


async def outbox_rows(url: str) -> list[asyncpg.Record]:
    con = await asyncpg.connect(url)
    try:
        return await con.fetch("SELECT * FROM bus.outbox ORDER BY id")
    finally:
        await con.close()


def rt(settings: Settings, *, relay: bool = True) -> Runtime:
    fast = with_overrides(settings, bus={"relay_poll_s": 0.2})
    return Runtime(fast, actors=[Producer, Consumer], graph={}, relay=relay)


async def test_events_are_delivered_after_commit(settings: Settings, scratch: str) -> None:
    runtime = await rt(settings).start(migrate_first=False, seed_if_empty=False)
    try:
        await runtime.bus.ask(Produce(n=1))
        await wait_for(lambda: seen(scratch), timeout=5)
        assert await seen(scratch) == [1]
        rows = await outbox_rows(scratch)
        assert len(rows) == 1 and rows[0]["published_at"] is not None and rows[0]["type"] == "Ping"
    finally:
        await runtime.stop()


async def test_a_rollback_publishes_nothing(settings: Settings, scratch: str) -> None:
    runtime = await rt(settings).start(migrate_first=False, seed_if_empty=False)
    try:
        with pytest.raises(Exception, match="failed to handle Produce"):
            await runtime.bus.ask(Produce(n=2, fail_after_emit=True))
        await runtime.bus.ask(Produce(n=3))  # a later committed event proves the relay is running
        await wait_for(lambda: seen(scratch))
        assert await seen(scratch) == [3]
        assert [json.loads(r["payload"])["n"] for r in await outbox_rows(scratch)] == [3]
    finally:
        await runtime.stop()


async def test_redelivery_changes_nothing(settings: Settings, scratch: str) -> None:
    runtime = await rt(settings, relay=False).start(migrate_first=False, seed_if_empty=False)
    try:
        event_id = uuid.uuid4()
        for _ in range(3):
            assert await runtime.bus.deliver(event_id, Ping(n=9)) == []
        assert await seen(scratch) == [9]
        assert Consumer.calls == 1
    finally:
        await runtime.stop()


async def test_events_committed_before_a_crash_are_delivered_after_restart(settings: Settings, scratch: str) -> None:
    # First "process": commits events but has no relay (as if it died right after the commit).
    first = await rt(settings, relay=False).start(migrate_first=False, seed_if_empty=False)
    for n in range(5):
        await first.bus.ask(Produce(n=n))
    await first.stop()
    assert await seen(scratch) == []
    # Next start: the relay catches up on its own, without any new NOTIFY.
    second = await rt(settings).start(migrate_first=False, seed_if_empty=False)
    try:
        await wait_for(lambda: _count_is(scratch, 5), timeout=5)
        assert await seen(scratch) == [0, 1, 2, 3, 4]
    finally:
        await second.stop()


async def _count_is(url: str, n: int) -> bool:
    return len(await seen(url)) == n


async def test_a_failing_consumer_gets_the_event_again_later(settings: Settings, scratch: str) -> None:
    Consumer.fail_times = 1
    runtime = await rt(settings).start(migrate_first=False, seed_if_empty=False)
    try:
        await runtime.bus.ask(Produce(n=4))
        # First delivery fails; the row is retried after its backoff (1 s), then handled once.
        await wait_for(lambda: seen(scratch), timeout=8)
        assert await seen(scratch) == [4]
        rows = await outbox_rows(scratch)
        assert rows[0]["attempts"] == 1 and rows[0]["published_at"] is not None
    finally:
        await runtime.stop()


async def test_two_relays_deliver_each_event_once(settings: Settings, scratch: str) -> None:
    producer = await rt(settings, relay=False).start(migrate_first=False, seed_if_empty=False)
    for n in range(300):
        await producer.bus.ask(Produce(n=n))
    await producer.stop()
    a = await rt(settings, relay=False).start(migrate_first=False, seed_if_empty=False)
    b = await rt(settings, relay=False).start(migrate_first=False, seed_if_empty=False)
    small = with_overrides(settings, bus={"relay_batch": 10})
    a.bus.settings = b.bus.settings = small.bus
    relays = [OutboxRelay(a.bus, a.db, name="a"), OutboxRelay(b.bus, b.db, name="b")]
    try:
        for relay in relays:
            await relay.start()
        await wait_for(lambda: _count_is(scratch, 300), timeout=20)
        assert relays[0].delivered + relays[1].delivered == 300
        assert relays[0].delivered > 0 and relays[1].delivered > 0, "both relays took a share"
        assert Consumer.calls == 300
    finally:
        for relay in relays:
            await relay.stop()
        await a.stop()
        await b.stop()
