"""Bus overhead: asks per second through the bus against a direct `await handler(msg)` in the same run.

Prints the p50/p99 overhead per ask in microseconds and the throughput ratio. The handler does the
same trivial work in both cases, so the difference is the price of the mailbox, the envelope, the
future and the timeout timer. Runs on uvloop when installed (as the server does), else asyncio.

Run it from a clean clone, with the project's `bench` extra:

    pip install -e ".[bench]" && python bench/bus.py [--asks 50000] [--loop uvloop|asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from simveb.bus import Actor, Bus, handler
from simveb.config import Settings
from simveb.messages import Ask, Record


class Sum(Record):
    value: int


class Add(Ask[Sum]):
    a: int
    b: int


class Adder(Actor):
    name = "adder"

    @handler
    async def add(self, msg: Add) -> Sum:
        return Sum(value=msg.a + msg.b)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(asks: int) -> dict[str, float]:
    bus = Bus(Settings())
    bus.add(Adder)
    bus.declare_graph({})
    await bus.start()
    direct_handler = Adder(bus.context).add
    msg = Add(a=1, b=2)
    clock = time.perf_counter_ns

    # warm up both paths
    for _ in range(2000):
        await bus.ask(msg)
        await direct_handler(msg)

    direct, through = [], []
    for _ in range(asks):  # interleaved, so machine noise hits both alike
        t0 = clock()
        await direct_handler(msg)
        t1 = clock()
        await bus.ask(msg)
        t2 = clock()
        direct.append(t1 - t0)
        through.append(t2 - t1)

    # throughput, each in its own tight loop
    t0 = time.perf_counter()
    for _ in range(asks):
        await direct_handler(msg)
    direct_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(asks):
        await bus.ask(msg)
    bus_s = time.perf_counter() - t0
    await bus.stop()

    overhead = [b - d for b, d in zip(through, direct, strict=True)]
    return {
        "asks": asks,
        "direct_per_s": asks / direct_s,
        "bus_per_s": asks / bus_s,
        "ratio": (asks / bus_s) / (asks / direct_s),
        "p50_overhead_us": statistics.median(overhead) / 1000,
        "p99_overhead_us": percentile(overhead, 0.99) / 1000,
        "p50_ask_us": statistics.median(through) / 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--asks", type=int, default=50_000)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    runner, loop_name = asyncio.run, "asyncio"
    if args.loop == "uvloop":
        try:
            import uvloop

            runner, loop_name = uvloop.run, "uvloop"
        except ImportError:
            pass
    r = runner(measure(args.asks))
    print(f"loop: {loop_name}")
    print(f"direct handler : {r['direct_per_s']:>12,.0f} calls/s")
    print(f"through the bus: {r['bus_per_s']:>12,.0f} asks/s   (p50 ask {r['p50_ask_us']:.1f} us)")
    print(
        f"overhead per ask: p50 {r['p50_overhead_us']:.1f} us, p99 {r['p99_overhead_us']:.1f} us (target p50 <= 25 us)"
    )
    print(
        f"bench bus: asks={args.asks} loop={loop_name} bus_per_s={r['bus_per_s']:.0f} direct_per_s={r['direct_per_s']:.0f}"
        f" ratio={r['ratio']:.4f} p50_overhead_us={r['p50_overhead_us']:.1f} p99_overhead_us={r['p99_overhead_us']:.1f}"
        f" target_p50_us=25 ok={r['p50_overhead_us'] <= 25}"
    )


if __name__ == "__main__":
    main()
