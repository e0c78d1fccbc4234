"""Audit trail cost: a small state change with its audit entry against the same change without it.

Each transaction inserts one row into a scratch table (the "state change"); the audited variant also
appends to a chain with `simveb.audit.append` (head row locked, detail normalised in the same round
trip, row inserted, head moved). Measured one transaction at a time and with `--workers` in flight:
the second shows what serialising appends on one head costs when a chain is busy. Then a walk of
the chain with `verify` (rows per second).

    pip install -e ".[bench]" && python bench/audit.py [--changes 2000] [--workers 16]

Uses the PostgreSQL named by SIMVEB_TEST_DATABASE_URL (a scratch database), else an embedded one.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
from common import database

from simveb import audit
from simveb.db import init_connection


async def change(pool: asyncpg.Pool, audited: bool, i: int) -> float:
    started = time.perf_counter()
    async with pool.acquire() as con, con.transaction():
        subject = uuid.uuid4()
        await con.execute("INSERT INTO public.bench_state (id, v) VALUES ($1, $2)", subject, i)
        if audited:
            await audit.append(
                con, "config", actor="bench", subject=subject, action="changed", detail={"v": i, "why": "bench"}
            )
    return time.perf_counter() - started


async def run(pool: asyncpg.Pool, audited: bool, changes: int, workers: int) -> tuple[float, list[float]]:
    """(changes per second, latencies) with `workers` transactions in flight."""
    counter = iter(range(changes))
    latencies: list[float] = []

    async def worker() -> None:
        for i in counter:
            latencies.append(await change(pool, audited, i))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return changes / (time.perf_counter() - started), latencies


async def measure(url: str, changes: int, workers: int) -> dict[str, float]:
    # The codecs the runtime's pool registers (jsonb as Python values), as actors have them.
    pool = await asyncpg.create_pool(url, min_size=workers, max_size=workers, init=init_connection)
    assert pool is not None
    try:
        async with pool.acquire() as con:
            await con.execute("CREATE TABLE public.bench_state (id uuid PRIMARY KEY, v int NOT NULL)")
        await run(pool, True, 200, 1)  # warm the pool, the plans and the chain's head
        figures: dict[str, float] = {}
        for label, inflight in (("seq", 1), ("conc", workers)):
            plain_rate, plain_lat = await run(pool, False, changes, inflight)
            audited_rate, audited_lat = await run(pool, True, changes, inflight)
            figures[f"{label}_ratio"] = audited_rate / plain_rate
            figures[f"{label}_plain_per_s"] = plain_rate
            figures[f"{label}_audited_per_s"] = audited_rate
            figures[f"{label}_plain_p50_ms"] = statistics.median(plain_lat) * 1000
            figures[f"{label}_audited_p50_ms"] = statistics.median(audited_lat) * 1000
        async with pool.acquire() as con:
            started = time.perf_counter()
            report = await audit.verify(con, "config")
            assert report.broken is None, report
            figures["verify_rows_per_s"] = report.rows / (time.perf_counter() - started)
            figures["rows"] = report.rows
        return figures
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=2000, help="transactions per variant and mode")
    parser.add_argument("--workers", type=int, default=16, help="transactions in flight in the concurrent mode")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, database(Path(scratch)) as url:
        f = asyncio.run(measure(url, args.changes, args.workers))
    print(
        f"one at a time: {f['seq_plain_per_s']:.0f} vs {f['seq_audited_per_s']:.0f} changes/s"
        f" (p50 {f['seq_plain_p50_ms']:.2f} vs {f['seq_audited_p50_ms']:.2f} ms);"
        f" {args.workers} in flight: {f['conc_plain_per_s']:.0f} vs {f['conc_audited_per_s']:.0f} changes/s"
        f" (p50 {f['conc_plain_p50_ms']:.2f} vs {f['conc_audited_p50_ms']:.2f} ms);"
        f" verify {f['verify_rows_per_s']:.0f} rows/s over {f['rows']:.0f} rows"
    )
    print(
        f"bench audit: seq_ratio={f['seq_ratio']:.2f} conc_ratio={f['conc_ratio']:.2f}"
        f" verify_rows_per_s={f['verify_rows_per_s']:.0f}"
    )


if __name__ == "__main__":
    main()
