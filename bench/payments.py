"""Benchmark: verified FedaPay webhooks handled per second, against the simulator answering the same
transaction fetches directly, in the same run.

- handled: signed webhooks POSTed over HTTP to the real app (uvicorn, this process) for approved
  transactions; each one is verified (HMAC over the raw body), stored as a receipt, re-fetched from
  the FedaPay simulator over HTTP, settled under a row lock (transaction, payment, invoice number
  from the yearly counter) with a PaymentSucceeded event in the outbox;
- baseline: httpx GETs the same transactions from the simulator directly (the re-fetch alone), same
  number in flight.
The ratio handled/baseline is what verification, storage and settlement cost on top of the one call
to the provider that cannot be avoided. The simulator runs in a thread with its own event loop.

Run it from a clean clone, with the project's `bench` extra (uvicorn serves the simulator):

    pip install -e ".[bench]" && python bench/payments.py [--webhooks 500] [--in-flight 16]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import logging
import socket
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import msgspec
import uvicorn
from common import database, providers_at, simulator  # bench/common.py

from simveb.actors.config.actor import ConfigActor
from simveb.actors.payments.actor import PaymentsActor
from simveb.actors.payments.messages import InitiatePayment, PaymentRequested
from simveb.config import PaymentsSettings, Settings, with_overrides
from simveb.http.app import create_app
from simveb.messages import Caller
from simveb.outbox import emit
from simveb.runtime import Runtime

SECRET = PaymentsSettings().secret("fedapay_webhook_secret", production=False)
API_KEY = PaymentsSettings().secret("fedapay_secret_key", production=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def signed(tid: int) -> tuple[bytes, str]:
    body = msgspec.json.encode({"klass": "v1/event", "type": "transaction.approved", "object_id": tid})
    t = int(time.time())
    mac = hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return body, f"t={t},s={mac}"


async def prepare(runtime: Runtime, sim: str, n: int) -> list[int]:
    """n payables, each with a FedaPay transaction approved at the simulator (its webhook dropped)."""
    assert runtime.bus is not None and runtime.db is not None
    async with httpx.AsyncClient() as c:
        await c.post(f"{sim}/sandbox/fedapay/_control", json={"webhooks": {"mode": "drop"}})
    payer = uuid.uuid4()
    payables = [uuid.uuid4() for _ in range(n)]
    async with runtime.db.transaction() as con:
        events = [
            PaymentRequested(
                payable_id=p,
                payable_kind="registration",
                reference=f"BENCH-{i:06d}",
                payer_id=payer,
                amount_xof=60_000,
            )
            for i, p in enumerate(payables)
        ]
        await emit(con, *events, source="registrations")
    while True:
        async with runtime.db.pool.acquire() as con:
            if await con.fetchval("SELECT count(*) FROM payments.payments") >= n:
                break
        await asyncio.sleep(0.05)
    caller = Caller(sub=str(payer))
    refs: list[int] = []
    for chunk in range(0, n, 32):
        started = await asyncio.gather(
            *(
                runtime.bus.ask(InitiatePayment(caller=caller, provider="fedapay", payable_id=p))
                for p in payables[chunk : chunk + 32]
            )
        )
        refs += [int(s.transaction.provider_ref) for s in started]  # type: ignore[arg-type]
    async with httpx.AsyncClient() as c:
        for ref in refs:
            await c.post(f"{sim}/sandbox/fedapay/_status", json={"transaction_id": ref, "status": "approved"})
    return refs


async def baseline(sim: str, refs: list[int], in_flight: int) -> float:
    limit = asyncio.Semaphore(in_flight)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=in_flight)) as client:

        async def fetch(ref: int) -> None:
            async with limit:
                r = await client.get(f"{sim}/sandbox/fedapay/v1/transactions/{ref}", headers=headers)
                assert r.status_code == 200 and r.json()["v1/transaction"]["status"] == "approved"

        started = time.perf_counter()
        await asyncio.gather(*(fetch(ref) for ref in refs))
        return len(refs) / (time.perf_counter() - started)


async def handled(app_url: str, refs: list[int], in_flight: int) -> float:
    limit = asyncio.Semaphore(in_flight)
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=in_flight)) as client:

        async def post(ref: int) -> None:
            async with limit:
                body, header = signed(ref)
                r = await client.post(
                    f"{app_url}/api/payments/webhooks/fedapay",
                    content=body,
                    headers={"X-FEDAPAY-SIGNATURE": header, "Content-Type": "application/json"},
                )
                assert r.status_code == 200 and r.json()["outcome"] == "succeeded", r.text

        started = time.perf_counter()
        await asyncio.gather(*(post(ref) for ref in refs))
        return len(refs) / (time.perf_counter() - started)


async def run(settings: Settings, sim: str, port: int, n: int, in_flight: int) -> tuple[float, float, int]:
    runtime = Runtime(settings, actors=[ConfigActor, PaymentsActor], graph={"config": set(), "payments": {"config"}})
    await runtime.start(migrate_first=False, seed_if_empty=False)
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, runtime=runtime), port=port, log_level="warning", access_log=False)
    )
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(1000):  # up to 10 s
            if server.started:
                break
            await asyncio.sleep(0.01)
        refs = await prepare(runtime, sim, n)
        base = await baseline(sim, refs, in_flight)
        rate = await handled(f"http://127.0.0.1:{port}", refs, in_flight)
        assert runtime.db is not None
        async with runtime.db.pool.acquire() as con:
            events = await con.fetchval("SELECT count(*) FROM bus.outbox WHERE type = 'PaymentSucceeded'")
        return rate, base, events
    finally:
        server.should_exit = True
        await task
        await runtime.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--webhooks", type=int, default=500)
    parser.add_argument("--in-flight", type=int, default=16)
    args = parser.parse_args()
    for noisy in ("simveb", "httpx", "pgserver", "uvicorn"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as scratch, database(Path(scratch)) as url, simulator() as sim:
        port = free_port()
        settings = with_overrides(
            Settings(),
            server={"data_dir": scratch, "log_level": "WARNING", "sandbox": False, "port": port},
            database={"url": url, "migrate_on_start": False, "pool_min": 2, "pool_max": 20},
            ratelimit={"enabled": False},
            payments={"callback_base_url": f"http://127.0.0.1:{port}"},
        )
        settings = providers_at(settings, sim)  # the simulators run apart, not mounted in the app
        rate, base, events = asyncio.run(run(settings, sim, port, args.webhooks, args.in_flight))
        print(f"webhooks={args.webhooks} in_flight={args.in_flight} events={events}")
    # Printed once the embedded server is stopped, so the result is the very last line.
    print(
        f"bench payments: webhooks_per_s={rate:.0f} refetch_per_s={base:.0f} ratio={rate / base:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
