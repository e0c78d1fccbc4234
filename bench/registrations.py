"""Benchmark: registrations completed end to end through the actors, and plate allocation against a
bare counter.

On the embedded PostgreSQL, or on the server named by SIMVEB_TEST_DATABASE_URL (a scratch database is
created and dropped), one runtime with every actor but documents (documents are declared, so uploads
and their review are not what is measured; bench/documents.py measures those) and the outbox relay:
- registrations: a citizen files a first registration (new vehicle, documents declared), an agent
  records a cash payment at the payments counter (ConfirmPayment: the cheapest payment path, no
  provider round trip; the invoice is issued and PaymentSucceeded moves the request to paid by event),
  verifies and pre-validates, a validator validates (the plate is allocated in that transaction); the clock
  stops when every vehicle shows its plate (PlateAssigned delivered by the relay). Reported as
  registrations per second, `--workers` at a time.
- plates: `--allocations` plates at 64-way concurrency through the bus (AllocatePlate: the series row
  lock, reservation check, issued_plates insert), against a baseline in the same run and database: a
  plain `UPDATE ... RETURNING` increment of a counter in its own table per allocation, with asyncpg
  and a pool of the same size. Each side runs twice, interleaved. Target ratio >= 0.5.

Run it from a clean clone, with the project's `bench` extra:

    pip install -e ".[bench]" && python bench/registrations.py [--registrations 200] [--workers 16] [--allocations 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from common import database  # bench/common.py

from simveb.actors import ACTORS, ASK_GRAPH
from simveb.actors.payments.messages import ConfirmPayment
from simveb.actors.registrations.messages import (
    AllocatePlate,
    ChangeStatus,
    FileRequest,
    GetRequest,
    NewVehicle,
    ValidateRequest,
)
from simveb.actors.users.messages import SYSTEM, CreateUser, GetUserAuthz
from simveb.actors.vehicles.messages import GetVehicle, VehicleFields
from simveb.config import Settings, with_overrides
from simveb.errors import NotFound
from simveb.messages import Caller
from simveb.runtime import Runtime
from simveb.seed import seed

DOCS = ["customs_clearance", "purchase_invoice", "owner_identity", "technical_inspection"]
CONCURRENCY = 64
POOL = 16


async def person(rt: Runtime, role: str, n: int) -> Caller:
    assert rt.bus is not None
    if role == "citizen":
        fields: dict[str, Any] = {
            "kind": "person",
            "npi": f"{9_000_000_000 + n}",
            "phone": f"+22901{n:08d}",
            "last_name": "Bench",
            "first_name": "Citizen",
        }
    else:
        fields = {"kind": "staff", "email": f"{role}{n}@bench.bj"}
    user = await rt.bus.ask(CreateUser(caller=SYSTEM, roles=[role], **fields))
    authz = await rt.bus.ask(GetUserAuthz(user_id=user.id))
    return Caller(sub=str(user.id), roles=tuple(authz.roles), permissions=frozenset(authz.permissions))


async def pay_at_counter(bus: Any, agent: Caller, request_id: Any, receipt: str) -> None:
    """Record a cash payment for the request at the payments counter and wait for the request to
    leave waiting_for_payment (PaymentRequested, then PaymentSucceeded, go through the relay)."""
    deadline = time.monotonic() + 60
    while True:
        if time.monotonic() > deadline:
            raise RuntimeError(f"request {request_id}: no payable opened within 60 s")
        try:
            await bus.ask(ConfirmPayment(caller=agent, payment_id=request_id, method="cash", receipt_reference=receipt))
            break
        except NotFound:
            await asyncio.sleep(0.005)  # the payable opens when PaymentRequested is delivered
    while (await bus.ask(GetRequest(request_id=request_id, caller=agent))).status == "waiting_for_payment":  # noqa: ASYNC110
        await asyncio.sleep(0.005)


async def registrations(rt: Runtime, total: int, workers: int) -> tuple[float, float]:
    """(validated per second, plated per second): the second waits for the relay's delivery too."""
    assert rt.bus is not None
    bus = rt.bus
    citizens = [await person(rt, "citizen", i) for i in range(workers)]
    agent = await person(rt, "agent", 1)
    validator = await person(rt, "validator", 1)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    vehicles: list[Any] = []

    async def worker(citizen: Caller) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            fields = VehicleFields(make="Peugeot", model="406", energy="Gazole", year=2021)
            req = await bus.ask(
                FileRequest(
                    caller=citizen,
                    vehicle=NewVehicle(vin=f"VF3BENCH{i:09d}", fields=fields),
                    declared_documents=DOCS,
                )
            )
            await pay_at_counter(bus, agent, req.id, f"BENCH-{i:09d}")
            await bus.ask(ChangeStatus(request_id=req.id, to_status="verified", caller=agent))
            await bus.ask(ChangeStatus(request_id=req.id, to_status="pre_validated", caller=agent))
            done = await bus.ask(ValidateRequest(request_id=req.id, caller=validator))
            assert done.plate
            vehicles.append((done.vehicle_id, done.plate))

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in citizens))
    validated = time.perf_counter() - start
    for vehicle_id, plate in vehicles:
        while (await bus.ask(GetVehicle(vehicle_id=vehicle_id))).plate != plate:  # noqa: ASYNC110 (another actor's state)
            await asyncio.sleep(0.01)
    plated = time.perf_counter() - start
    assert len({p for _, p in vehicles}) == total
    return total / validated, total / plated


async def through_bus(rt: Runtime, n: int) -> float:
    assert rt.bus is not None
    bus = rt.bus
    left = iter(range(n))

    async def worker() -> None:
        for _ in left:
            await bus.ask(AllocatePlate(format_code="car"))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return n / (time.perf_counter() - start)


async def baseline(pool: asyncpg.Pool, n: int) -> float:
    left = iter(range(n))

    async def worker() -> None:
        for _ in left:
            async with pool.acquire() as con:
                await con.fetchval("UPDATE bench_counter SET value = value + 1 WHERE id = 1 RETURNING value")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return n / (time.perf_counter() - start)


async def main_async(url: str, data_dir: str, args: argparse.Namespace) -> None:
    settings = with_overrides(
        Settings(),
        server={"data_dir": data_dir, "log_level": "WARNING"},
        database={"url": url, "migrate_on_start": False, "pool_min": 2, "pool_max": POOL},
        bus={"ask_timeout_s": 60.0},
    )
    # With a documents actor, declared documents do not let a request leave `pending`.
    actors = [a for a in ACTORS if a.name != "documents"]
    graph = {name: set(targets) - {"documents"} for name, targets in ASK_GRAPH.items() if name != "documents"}
    rt = Runtime(settings, actors=actors, graph=graph)
    await rt.start(migrate_first=False, seed_if_empty=False)
    pool = await asyncpg.create_pool(url, min_size=2, max_size=POOL)
    try:
        await seed(rt)
        async with pool.acquire() as con:
            await con.execute("CREATE TABLE bench_counter (id int PRIMARY KEY, value bigint NOT NULL)")
            await con.execute("INSERT INTO bench_counter VALUES (1, 0)")
        validated, plated = await registrations(rt, args.registrations, args.workers)
        print(
            f"registrations: {validated:.1f}/s validated, {plated:.1f}/s with the vehicle plated ({args.workers} at a time)"
        )
        await through_bus(rt, 200)  # warm up both sides
        await baseline(pool, 200)
        ours, bare = [], []
        for _ in range(2):
            ours.append(await through_bus(rt, args.allocations))
            bare.append(await baseline(pool, args.allocations))
        a, b = statistics.mean(ours), statistics.mean(bare)
        print(f"plates at {CONCURRENCY}-way: {a:.0f}/s through the actor vs {b:.0f}/s bare UPDATE ... RETURNING")
        print(
            f"bench registrations: registrations_per_s={validated:.1f} plated_per_s={plated:.1f}"
            f" plates_per_s={a:.0f} baseline_per_s={b:.0f} ratio={a / b:.2f}"
        )
    finally:
        await pool.close()
        await rt.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registrations", type=int, default=200)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--allocations", type=int, default=3000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as scratch, database(Path(scratch) / "pg") as url:
        asyncio.run(main_async(url, str(Path(scratch) / "data"), args))


if __name__ == "__main__":
    main()
