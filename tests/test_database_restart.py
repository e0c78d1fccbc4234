"""A database restart under load, on a private embedded PostgreSQL (never the machine's shared server).

A runtime with every actor and the relay serves asks that write while its PostgreSQL is stopped and,
a few seconds later, started again with the same data directory and socket. During the outage every
ask fails quickly with a 503-class error (nothing hangs, no actor is restarted); afterwards asks
succeed again, the relay's LISTEN connection is back and delivers an event committed after the
restart (its poll is set to a minute, so only the NOTIFY can wake it in time), and the config actor's
cache invalidation listener hears a change made by another process.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from simveb import migrate
from simveb.actors.config.messages import GetSetting, PutSetting
from simveb.actors.vehicles.messages import CreateBrand
from simveb.config import Settings, with_overrides
from simveb.db import start_embedded
from simveb.errors import DomainError
from simveb.runtime import Runtime
from tests.support import wait_for

ASK_TIMEOUT_S = 3.0


class PrivateServer:
    """An embedded PostgreSQL of this test only, stopped and started with pgserver's own pg_ctl."""

    def __init__(self, data_dir: Path) -> None:
        self.handle = start_embedded(data_dir)
        self.url: str = self.handle.get_uri()
        info = self.handle.get_postmaster_info()
        self.pgdata = Path(info.pgdata)
        self.socket_dir = info.socket_dir

    def _pg_ctl(self, *args: str) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(list(args), pgdata=self.pgdata, user=self.handle.system_user, timeout=60)

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        if self.handle.system_user is not None:
            # Run as root, pgserver runs the server as its own user, which must be able to reach the
            # data directory (pgserver opens the path up the same way when it starts a server).
            from pgserver.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.pgdata)
        # The options pgserver starts it with: no TCP, the same socket directory, so the URL holds.
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.pgdata / "log"), "start")

    def cleanup(self) -> None:
        self.handle.cleanup()


@pytest.fixture
async def private_runtime(base_settings: Settings) -> AsyncIterator[tuple[Runtime, PrivateServer]]:
    # A directory of its own rather than pytest's (whose root other test sessions may close again).
    data_dir = Path(tempfile.mkdtemp(prefix="simveb-restart-"))
    server = await asyncio.to_thread(PrivateServer, data_dir)
    try:
        await migrate.migrate(server.url)
        settings = with_overrides(
            base_settings,
            database={
                "url": server.url,
                "pool_min": 2,
                "pool_max": 6,
                "acquire_timeout_s": 1.0,
                "command_timeout_s": 5.0,
            },
            bus={"ask_timeout_s": ASK_TIMEOUT_S, "relay_poll_s": 60.0},
            notifications={"workers": 1},
        )
        rt = Runtime(settings)
        await rt.start(migrate_first=False, seed_if_empty=False)
        try:
            yield rt, server
        finally:
            await rt.stop()
    finally:
        await asyncio.to_thread(server.cleanup)
        shutil.rmtree(data_dir, ignore_errors=True)


@dataclass
class Outcome:
    started: float
    ended: float
    error: BaseException | None


async def _load(rt: Runtime, outcomes: list[Outcome], stop: asyncio.Event) -> None:
    """Writes through two actors, one after the other, as fast as they are answered."""
    assert rt.bus is not None
    for i in itertools.count():
        if stop.is_set():
            return
        message: Any = (
            PutSetting(key=f"load.n{i}", value=i, type="integer", by="test")
            if i % 2
            else CreateBrand(code=f"load{i}", name=f"Load brand {i}", by="test")
        )
        started = time.monotonic()
        try:
            await rt.bus.ask(message)
            error = None
        except Exception as exc:
            error = exc
        outcomes.append(Outcome(started, time.monotonic(), error))
        if error is not None:
            await asyncio.sleep(0.05)  # a client backing off a little, not a hot loop


async def _published(rt: Runtime, key: str) -> bool:
    assert rt.db is not None
    async with rt.db.connection() as con:
        return bool(
            await con.fetchval(
                "SELECT published_at IS NOT NULL FROM bus.outbox WHERE type = 'ConfigChanged' AND payload->>'key' = $1",
                key,
            )
        )


async def test_requests_fail_cleanly_during_a_restart_and_everything_comes_back(private_runtime):
    rt, server = private_runtime
    assert rt.bus is not None and rt.relay is not None
    await rt.bus.ask(PutSetting(key="restart.probe", value=1, type="integer", by="test"))

    outcomes: list[Outcome] = []
    stop = asyncio.Event()
    load = asyncio.create_task(_load(rt, outcomes, stop))
    await asyncio.sleep(1.0)
    stopping_at = time.monotonic()
    await asyncio.to_thread(server.stop)
    down_at = time.monotonic()
    await asyncio.sleep(3.0)
    up_from = time.monotonic()
    await asyncio.to_thread(server.start)
    up_at = time.monotonic()

    # Asks succeed again once the server is back (the pool replaces its dead connections).
    await wait_for(lambda: any(o.error is None and o.started > up_at for o in outcomes), timeout=20)
    await asyncio.sleep(0.5)
    stop.set()
    await load

    before = [o for o in outcomes if o.ended < stopping_at]
    during = [o for o in outcomes if o.started > down_at and o.ended < up_from]
    failures = [o for o in outcomes if o.error is not None]
    assert before and all(o.error is None for o in before), [o.error for o in before if o.error]
    assert during and all(o.error is not None for o in during)  # the database really was down
    for o in failures:  # every failure is a clean, 503-class error, and quick
        assert isinstance(o.error, DomainError) and o.error.status == 503, repr(o.error)
        assert o.ended - o.started < ASK_TIMEOUT_S + 1.0
    assert rt.bus.down() == []
    assert all(cell.restarts == 0 for cell in rt.bus.cells.values())

    # The relay's listener reconnected and a NOTIFY wakes it: an event committed now is delivered
    # long before its one-minute poll.
    await wait_for(lambda: rt.relay._listener is not None and rt.relay._listener.connected, timeout=20)
    await rt.bus.ask(PutSetting(key="after.restart", value=True, type="boolean", by="test"))
    await wait_for(lambda: _published(rt, "after.restart"), timeout=10)

    # The config cache listens again: a change written by another process (its NOTIFY included) is
    # seen at the next read, instead of the cached value.
    config = rt.bus.cells["config"].instance
    await wait_for(lambda: config._listener is not None and config._listener.connected, timeout=20)
    assert (await rt.bus.ask(GetSetting(key="restart.probe"))).value == 1  # now cached
    other = await asyncpg.connect(server.url)
    try:
        await other.execute("UPDATE config.settings SET value = '2'::jsonb WHERE key = 'restart.probe'")
        await other.execute("SELECT pg_notify('simveb_config', 'setting:restart.probe')")
    finally:
        await other.close()

    async def probe() -> bool:
        return (await rt.bus.ask(GetSetting(key="restart.probe"))).value == 2

    await wait_for(probe, timeout=10)
