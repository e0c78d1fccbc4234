"""The transactional outbox on a real PostgreSQL: after commit only, at least once, deduplicated."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from simveb.bus import Actor, handler, reader
from simveb.config import Settings, with_overrides
from simveb.messages import Ask, Event
from simveb.outbox import OutboxRelay
from simveb.runtime import Runtime
from tests.conftest import truncate_all
from tests.support import ROOT, simveb, wait_for


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


# --- a relay that never wedges (issue 8) ----------------------------------------------------------------


class FutureEvent(Event):
    """An event type only some processes know (a newer version's, during a rolling deploy)."""

    n: int


class FutureConsumer(Actor):
    name = "future_consumer"
    got: list[int] = []

    @handler
    async def future(self, event: FutureEvent, con: asyncpg.Connection) -> None:
        type(self).got.append(event.n)


async def insert_rows(url: str, *rows: tuple[str, str]) -> list[int]:
    """Insert (type, payload JSON) rows into the outbox as another process would; returns their ids."""
    con = await asyncpg.connect(url)
    try:
        return [
            await con.fetchval(
                "INSERT INTO bus.outbox (event_id, source, type, payload) VALUES ($1, 'elsewhere', $2, $3::jsonb)"
                " RETURNING id",
                uuid.uuid4(),
                type_,
                payload,
            )
            for type_, payload in rows
        ]
    finally:
        await con.close()


def ping(n: int) -> tuple[str, str]:
    return "Ping", json.dumps({"msg_type": "Ping", "n": n})


async def test_a_poison_row_is_quarantined_and_the_good_rows_around_it_flow(settings: Settings, scratch: str) -> None:
    # Valid JSON (the column is jsonb) that does not decode as a Ping: n must be an int.
    poison = ("Ping", json.dumps({"msg_type": "Ping", "n": "forty-two"}))
    ids = await insert_rows(scratch, ping(1), poison, ping(2), ping(3))
    runtime = await rt(settings).start(migrate_first=False, seed_if_empty=False)
    try:
        await wait_for(lambda: _count_is(scratch, 3), timeout=10)
        assert await seen(scratch) == [1, 2, 3]
        rows = {r["id"]: r for r in await outbox_rows(scratch)}
        bad = rows[ids[1]]
        assert bad["quarantined_at"] is not None and bad["published_at"] is None
        assert bad["last_error"].startswith("undecodable:") and "n" in bad["last_error"]
        assert all(rows[i]["published_at"] is not None for i in (ids[0], ids[2], ids[3]))
        # Nothing wedged: events emitted after the poison row still flow.
        await runtime.bus.ask(Produce(n=4))
        await wait_for(lambda: _count_is(scratch, 4), timeout=10)
        assert runtime.relay is not None and runtime.relay.quarantined == 1
    finally:
        await runtime.stop()
    listed = simveb(settings, "events", "dead")
    assert listed.returncode == 0, listed.stderr
    line = next(x for x in listed.stdout.splitlines() if x.strip().startswith(f"│ {ids[1]} "))
    assert "quarantined" in line and "undecodable" in line


async def test_an_unknown_event_type_waits_for_a_process_that_knows_it(settings: Settings, scratch: str) -> None:
    known = json.dumps({"msg_type": "ConfigChanged", "entity": "setting", "key": "k", "by": "test"})
    future_id, known_id = await insert_rows(
        scratch, ("FutureEvent", json.dumps({"msg_type": "FutureEvent", "n": 7})), ("ConfigChanged", known)
    )
    # An older process: a fresh interpreter that has every simveb event but not FutureEvent. Its relay
    # delivers the known row and must leave the unknown one alone (not dead, not claimed, not retried).
    script = (
        "import asyncio, sys\n"
        "from simveb.config import Settings, with_overrides\n"
        "from simveb.runtime import Runtime\n"
        "from tests.support import wait_for\n"
        "async def main():\n"
        "    s = with_overrides(Settings(), database={'url': sys.argv[1], 'migrate_on_start': False},"
        " server={'data_dir': sys.argv[2], 'log_level': 'WARNING'}, bus={'relay_poll_s': 0.1})\n"
        "    rt = await Runtime(s, actors=[], graph={}).start(seed_if_empty=False)\n"
        "    try:\n"
        "        await wait_for(lambda: rt.relay.delivered >= 1, timeout=20)\n"
        "        for _ in range(5):\n"
        "            await rt.relay.drain_once()\n"
        "        print('future known:', 'FutureEvent' in rt.relay._types)\n"
        "    finally:\n"
        "        await rt.stop()\n"
        "asyncio.run(main())\n"
    )
    older = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, scratch, settings.server.data_dir],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert older.returncode == 0, older.stderr
    assert "future known: False" in older.stdout
    rows = {r["id"]: r for r in await outbox_rows(scratch)}
    assert rows[known_id]["published_at"] is not None
    left = rows[future_id]
    assert (left["published_at"], left["dead_at"], left["quarantined_at"], left["claimed_by"]) == (None,) * 4
    assert left["attempts"] == 0
    # A newer process (this one: it knows FutureEvent and has a consumer for it) delivers it.
    FutureConsumer.got = []
    newer = Runtime(with_overrides(settings, bus={"relay_poll_s": 0.2}), actors=[FutureConsumer], graph={})
    await newer.start(migrate_first=False, seed_if_empty=False)
    try:
        await wait_for(lambda: FutureConsumer.got, timeout=10)
        assert FutureConsumer.got == [7]
        await wait_for(lambda: _published(scratch, future_id), timeout=5)
    finally:
        await newer.stop()


async def _published(url: str, row_id: int) -> bool:
    return any(r["id"] == row_id and r["published_at"] is not None for r in await outbox_rows(url))


async def test_a_failing_subscriber_backs_off_dies_at_the_horizon_and_is_redriven(
    settings: Settings, scratch: str
) -> None:
    Consumer.fail_times = 1_000_000
    tiny = with_overrides(settings, bus={"relay_poll_s": 0.1, "event_backoff_max_s": 0.2, "event_retry_horizon_s": 1.0})
    runtime = await Runtime(tiny, actors=[Producer, Consumer], graph={}).start(migrate_first=False, seed_if_empty=False)
    try:
        started = time.monotonic()
        await runtime.bus.ask(Produce(n=5))
        await wait_for(lambda: _dead(scratch), timeout=15)
        elapsed = time.monotonic() - started
        row = (await outbox_rows(scratch))[0]
        # Retried with backoff (several attempts, spaced), dead only once the horizon had passed.
        assert row["attempts"] >= 3 and Consumer.calls == row["attempts"]
        assert elapsed >= 1.0
        assert (row["dead_at"] - row["retry_from"]).total_seconds() >= 1.0
        assert row["last_error"] == "subscriber failed: consumer"
        calls = Consumer.calls
        await asyncio.sleep(0.5)
        assert Consumer.calls == calls, "a dead event is not retried any more"

        listed = simveb(settings, "events", "dead")
        assert listed.returncode == 0, listed.stderr
        line = next(x for x in listed.stdout.splitlines() if x.strip().startswith(f"│ {row['id']} "))
        assert "dead" in line and "Ping" in line and "subscriber failed: consumer" in line

        Consumer.fail_times = 0  # the subscriber is fixed
        redriven = simveb(settings, "events", "redrive", str(row["id"]))
        assert redriven.returncode == 0, redriven.stderr
        assert "1 event(s) redriven" in redriven.stdout
        # The relay of the running process (woken by the redrive's NOTIFY) delivers it.
        await wait_for(lambda: seen(scratch), timeout=10)
        assert await seen(scratch) == [5]
        after = (await outbox_rows(scratch))[0]
        assert after["published_at"] is not None and after["dead_at"] is None
        assert "no dead or quarantined event" in simveb(settings, "events", "dead").stdout
        none_left = simveb(settings, "events", "redrive", "--all")
        assert none_left.returncode == 0 and "0 event(s) redriven" in none_left.stdout
        neither = simveb(settings, "events", "redrive")
        assert neither.returncode == 1 and neither.stderr.startswith("simveb: error: give the ids")
    finally:
        await runtime.stop()


async def _dead(url: str) -> bool:
    return any(r["dead_at"] is not None for r in await outbox_rows(url))


async def test_purge_removes_old_delivered_rows_and_keeps_what_a_redrive_needs(
    settings: Settings, scratch: str
) -> None:
    old_done, old_dead, recent_done = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    con = await asyncpg.connect(scratch)
    try:
        await con.executemany(
            "INSERT INTO bus.outbox (event_id, source, type, payload, created_at, published_at, dead_at)"
            " VALUES ($1, 'test', 'Ping', '{}'::jsonb, now() - $2::text::interval, $3, $4)",
            [
                (old_done, "10 days", time_ago(10), None),
                (old_dead, "10 days", None, time_ago(9)),
                (recent_done, "1 hour", time_ago(0.04), None),
            ],
        )
        await con.executemany(
            "INSERT INTO bus.inbox (consumer, event_id, handled_at) VALUES ($1, $2, $3)",
            [
                ("consumer", old_done, time_ago(10)),  # its event was delivered: purged
                ("other", old_dead, time_ago(9)),  # its event is dead, a redrive must skip "other": kept
                ("consumer", recent_done, time_ago(0.04)),  # recent: kept
            ],
        )
    finally:
        await con.close()
    purged = simveb(settings, "events", "purge")
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.strip() == "purged 1 outbox row(s) and 1 inbox row(s) older than 604800 s"
    con = await asyncpg.connect(scratch)
    try:
        outbox = {r["event_id"] for r in await con.fetch("SELECT event_id FROM bus.outbox")}
        inbox = {(r["consumer"], r["event_id"]) for r in await con.fetch("SELECT consumer, event_id FROM bus.inbox")}
    finally:
        await con.close()
    assert outbox == {old_dead, recent_done}
    assert inbox == {("other", old_dead), ("consumer", recent_done)}


def time_ago(days: float) -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) - timedelta(days=days)


class StuckConsumer(Actor):
    """A subscriber that never finishes: its process dies while the relay waits for it."""

    name = "consumer"
    entered: asyncio.Event | None = None

    @handler
    async def ping(self, event: Ping, con: asyncpg.Connection) -> None:
        assert type(self).entered is not None
        type(self).entered.set()
        await asyncio.sleep(3600)


async def test_rows_claimed_by_a_relay_that_died_are_delivered_by_another_after_the_lease(
    settings: Settings, scratch: str
) -> None:
    await insert_rows(scratch, ping(1), ping(2), ping(3))
    lease = 3.0
    leased = with_overrides(settings, bus={"relay_lease_s": lease, "shutdown_grace_s": 0.5})
    StuckConsumer.entered = asyncio.Event()
    dying = await Runtime(leased, actors=[StuckConsumer], graph={}, relay=False).start(
        migrate_first=False, seed_if_empty=False
    )
    relay_a = OutboxRelay(dying.bus, dying.db, name="a")
    claimed_at = time.monotonic()
    task = asyncio.create_task(relay_a.drain_once())
    await asyncio.wait_for(StuckConsumer.entered.wait(), timeout=10)
    # The process dies mid-delivery: nothing is settled, the three rows stay leased to relay a.
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await dying.stop()
    rows = await outbox_rows(scratch)
    assert {r["claimed_by"] for r in rows} == {relay_a.name}
    assert all(r["lease_until"] is not None and r["published_at"] is None for r in rows)

    alive = await Runtime(leased, actors=[Consumer], graph={}, relay=False).start(
        migrate_first=False, seed_if_empty=False
    )
    relay_b = OutboxRelay(alive.bus, alive.db, name="b")
    try:
        if time.monotonic() - claimed_at < lease - 0.5:  # a very slow machine may be past the lease already
            assert await relay_b.drain_once() == 0, "rows under another relay's lease are not taken"
        await asyncio.sleep(max(0.0, lease + 0.2 - (time.monotonic() - claimed_at)))
        assert await relay_b.drain_once() == 3
        assert await seen(scratch) == [1, 2, 3]
        rows = await outbox_rows(scratch)
        assert all(r["published_at"] is not None and r["claimed_by"] == relay_b.name for r in rows)
    finally:
        await alive.stop()


class Look(Ask[bool]):
    pass


class Write(Ask[bool]):
    pass


class Transactions(Actor):
    """Says whether the runtime gave it its connection inside a transaction."""

    name = "transactions"

    @reader
    async def look(self, msg: Look, con: asyncpg.Connection) -> bool:
        return con.is_in_transaction()

    @handler
    async def write(self, msg: Write, con: asyncpg.Connection) -> bool:
        return con.is_in_transaction()


async def test_a_reader_runs_outside_a_transaction_a_handler_inside(settings: Settings, scratch: str) -> None:
    runtime = Runtime(settings, actors=[Transactions], graph={}, relay=False)
    await runtime.start(migrate_first=False, seed_if_empty=False)
    try:
        assert await runtime.bus.ask(Look()) is False, "no BEGIN/COMMIT round trips for a read"
        assert await runtime.bus.ask(Write()) is True
    finally:
        await runtime.stop()
