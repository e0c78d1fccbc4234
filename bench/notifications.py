"""Benchmark: SMS delivered per second through the durable queue, against posting them directly.

Both paths deliver the same messages to the SMS gateway simulator over real HTTP in the same run:
- queued: `SendNotification` asks write rows; the notifications actor's workers claim, send and
  settle them (the whole durable path: render, insert, claim with SKIP LOCKED, HTTP, update);
- direct: httpx posts the same bodies to the simulator with the same number in flight.
The ratio queued/direct is the price of durability. Runs standalone on the embedded PostgreSQL, or
on the server named by SIMVEB_TEST_DATABASE_URL (a scratch database is created and dropped).

Run it from a clean clone, with the project's `bench` extra:

    pip install -e ".[bench]" && python bench/notifications.py [--messages 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path

import httpx
from common import database, simulator  # bench/common.py

from simveb.actors.notifications.actor import NotificationsActor
from simveb.actors.notifications.messages import SeedNotifications, SendNotification
from simveb.config import Settings, with_overrides
from simveb.runtime import Runtime


def body(i: int) -> str:
    return f"SIMVEB : votre dossier IMM-{i:06d} est prêt."


async def queued(settings: Settings, n: int) -> float:
    runtime = Runtime(settings, actors=[NotificationsActor], graph={"notifications": set()}, relay=False)
    await runtime.start(migrate_first=False, seed_if_empty=False)
    try:
        assert runtime.bus is not None and runtime.db is not None
        await runtime.bus.ask(SeedNotifications())
        started = time.perf_counter()

        async def send(i: int) -> None:
            await runtime.bus.ask(  # type: ignore[union-attr]
                SendNotification(channel="sms", to=f"+2299{i:07d}", template="custom", params={"text": body(i)})
            )

        for chunk in range(0, n, 200):
            await asyncio.gather(*(send(i) for i in range(chunk, min(n, chunk + 200))))
        async with runtime.db.pool.acquire() as con:
            while True:
                sent = await con.fetchval("SELECT count(*) FROM notifications.messages WHERE status = 'sent'")
                if sent >= n:
                    break
                await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
    finally:
        await runtime.stop()
    return n / elapsed


async def direct(base: str, n: int, in_flight: int) -> float:
    limit = asyncio.Semaphore(in_flight)
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=in_flight)) as client:

        async def post(i: int) -> None:
            async with limit:
                r = await client.post(
                    f"{base}/sandbox/sms/messages",
                    json={"from": "SIMVEB", "to": f"+2299{i:07d}", "text": body(i), "reference": f"direct-{i}"},
                )
                r.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(post(i) for i in range(n)))
        return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    logging.getLogger("simveb").setLevel(logging.WARNING)
    for noisy in ("httpx", "pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as scratch, database(Path(scratch)) as url, simulator() as base:
        settings = with_overrides(
            Settings(),
            server={"data_dir": scratch, "log_level": "WARNING"},
            database={"url": url, "migrate_on_start": False, "pool_min": 2, "pool_max": 10},
            notifications={"sms_url": f"{base}/sandbox/sms", "poll_s": 0.05},
        )
        n = args.messages
        in_flight = settings.notifications.workers * settings.notifications.batch
        direct_per_s = asyncio.run(direct(base, n, in_flight))
        queued_per_s = asyncio.run(queued(settings, n))
        print(f"messages={n} workers={settings.notifications.workers} batch={settings.notifications.batch}")
    # Printed once the embedded server is stopped, so the result is the very last line.
    print(
        f"bench notifications: queued_per_s={queued_per_s:.0f} direct_per_s={direct_per_s:.0f}"
        f" ratio={queued_per_s / direct_per_s:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
