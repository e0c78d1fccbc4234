"""Placement: the price of an ask to an actor in another process (Redis Streams) against the same ask
to the same actor in this process, and completed asks per second with 1, 2 and 3 processes serving
one actor.

Latency: the same message, interleaved in the same run, to an actor hosted here (the local bus) and
to one hosted by another process (the remote transport, through Redis): p50/p99 of each.
Throughput: `--concurrency` askers in this process send to one actor served by 1, 2, then 3 host
processes (one consumer group: each request goes to one of them); the handler does `--work-us` of
CPU work, the part several hosts can share. The machine's cores bound what more hosts can add.

Run it from a clean clone, with the project's `bench` extra and a Redis:

    pip install -e ".[bench]" && python bench/placement.py --redis redis://127.0.0.1:6379/0

(`SIMVEB_TEST_REDIS_URL` is used when `--redis` is not given.)
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time
import uuid
from typing import Any

from simveb.bus import Actor, Bus, handler
from simveb.config import Settings, with_overrides
from simveb.messages import Ask, Record
from simveb.remote import RemoteTransport


class PlacementSum(Record):
    value: int


class PlacementAdd(Ask[PlacementSum]):
    a: int
    b: int
    work_us: int = 0


class Adder(Actor):
    name = "bench_adder"

    @handler
    async def add(self, msg: PlacementAdd) -> PlacementSum:
        if msg.work_us:
            # CPU work standing for a real handler's (what several host processes can share).
            end = time.perf_counter() + msg.work_us / 1e6
            while time.perf_counter() < end:
                pass
        return PlacementSum(value=msg.a + msg.b)


class Asker(Actor):
    name = "bench_asker"


def placement(redis_url: str, prefix: str) -> Settings:
    return with_overrides(Settings(), placement={"redis_url": redis_url, "stream_prefix": prefix})


async def start(settings: Settings, *, host: bool) -> tuple[Bus, RemoteTransport]:
    bus = Bus(settings)
    if host:
        bus.add(Adder)
        bus.add_remote(Asker)
    else:
        bus.add(Asker)
        bus.add_remote(Adder)
    bus.declare_graph({})
    await bus.start()
    transport = RemoteTransport(bus, settings.placement, hosted=list(bus.cells), known=["bench_adder", "bench_asker"])
    bus.transport = transport
    await transport.start()
    return bus, transport


async def stop(bus: Bus, transport: RemoteTransport) -> None:
    await transport.stop()
    await bus.stop()


def serve_adder(redis_url: str, prefix: str, ready: Any, done: Any) -> None:
    """A host process: serves bench_adder until told to stop."""

    async def run() -> None:
        bus, transport = await start(placement(redis_url, prefix), host=True)
        ready.set()
        await asyncio.to_thread(done.wait)
        await stop(bus, transport)

    asyncio.run(run())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def hosts(redis_url: str, prefix: str, n: int) -> tuple[list[Any], Any]:
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Event()
    procs = []
    for _ in range(n):
        ready = ctx.Event()
        proc = ctx.Process(target=serve_adder, args=(redis_url, prefix, ready, done), daemon=True)
        proc.start()
        if not ready.wait(60):
            raise SystemExit("a host process did not start within 60 s")
        procs.append(proc)
    return procs, done


def end(procs: list[Any], done: Any) -> None:
    done.set()
    for proc in procs:
        proc.join(30)
        if proc.is_alive():
            proc.kill()


async def latency(redis_url: str, asks: int) -> dict[str, float]:
    prefix = f"bench-placement-{uuid.uuid4().hex[:8]}:"
    procs, done = hosts(redis_url, prefix, 1)
    try:
        local = Bus(Settings())
        local.add(Adder)
        local.declare_graph({})
        await local.start()
        bus, transport = await start(placement(redis_url, prefix), host=False)
        msg = PlacementAdd(a=1, b=2)
        for _ in range(200):  # warm up both paths
            await local.ask(msg)
            await bus.ask(msg)
        here, there = [], []
        clock = time.perf_counter_ns
        for _ in range(asks):  # interleaved, so machine noise hits both alike
            t0 = clock()
            await local.ask(msg)
            t1 = clock()
            await bus.ask(msg)
            t2 = clock()
            here.append(t1 - t0)
            there.append(t2 - t1)
        await stop(bus, transport)
        await local.stop()
    finally:
        end(procs, done)
    await cleanup(redis_url, prefix)
    return {
        "local_p50_us": statistics.median(here) / 1000,
        "local_p99_us": percentile(here, 0.99) / 1000,
        "remote_p50_us": statistics.median(there) / 1000,
        "remote_p99_us": percentile(there, 0.99) / 1000,
    }


async def throughput(redis_url: str, n: int, concurrency: int, seconds: float, work_us: int) -> float:
    prefix = f"bench-placement-{uuid.uuid4().hex[:8]}:"
    procs, done = hosts(redis_url, prefix, n)
    try:
        bus, transport = await start(placement(redis_url, prefix), host=False)
        msg = PlacementAdd(a=1, b=2, work_us=work_us)
        for _ in range(50):
            await bus.ask(msg)
        completed = 0
        deadline = time.perf_counter() + seconds

        async def asker() -> None:
            nonlocal completed
            while time.perf_counter() < deadline:
                await bus.ask(msg, timeout=30)
                completed += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(asker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        await stop(bus, transport)
    finally:
        end(procs, done)
    await cleanup(redis_url, prefix)
    return completed / elapsed


async def cleanup(redis_url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    keys = [k async for k in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", default=os.environ.get("SIMVEB_TEST_REDIS_URL", ""), help="Redis URL")
    parser.add_argument("--asks", type=int, default=2000, help="asks of the latency comparison")
    parser.add_argument("--concurrency", type=int, default=32, help="asks in flight in the throughput runs")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each throughput run")
    parser.add_argument("--work-us", type=int, default=1000, help="CPU work of the handler in the throughput runs")
    args = parser.parse_args()
    if not args.redis:
        raise SystemExit("give --redis URL (or set SIMVEB_TEST_REDIS_URL)")
    lat = asyncio.run(latency(args.redis, args.asks))
    print(
        f"ask latency, same message, same run: local p50 {lat['local_p50_us']:.1f} us (p99 {lat['local_p99_us']:.1f}),"
        f" remote p50 {lat['remote_p50_us']:.1f} us (p99 {lat['remote_p99_us']:.1f})"
    )
    rates = {}
    for n in (1, 2, 3):
        rates[n] = asyncio.run(throughput(args.redis, n, args.concurrency, args.seconds, args.work_us))
        print(f"{n} host process(es): {rates[n]:,.0f} asks/s completed ({args.work_us} us of work each)")
    print(
        f"bench placement: asks={args.asks} local_p50_us={lat['local_p50_us']:.1f} remote_p50_us={lat['remote_p50_us']:.1f}"
        f" local_p99_us={lat['local_p99_us']:.1f} remote_p99_us={lat['remote_p99_us']:.1f}"
        f" remote_over_local_p50={lat['remote_p50_us'] / lat['local_p50_us']:.1f}"
        f" work_us={args.work_us} concurrency={args.concurrency} cores={os.cpu_count()}"
        f" hosts1_per_s={rates[1]:.0f} hosts2_per_s={rates[2]:.0f} hosts3_per_s={rates[3]:.0f}"
        f" scale_2={rates[2] / rates[1]:.2f} scale_3={rates[3] / rates[1]:.2f}"
    )


if __name__ == "__main__":
    main()
