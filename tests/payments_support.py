"""Helpers of the payments tests: the provider simulators and the app on real ports, payables opened
the way registrations opens them (PaymentRequested through the outbox), a payer's browser on the
FedaPay checkout page, and independent signing of webhooks (not our verifier's code).

The simulators and the app are served by uvicorn on the test's event loop: the simulator's webhooks
reach the app over TCP exactly as the provider's would.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn
from litestar import Litestar

from simveb.actors.payments.messages import FeeLine, PaymentRequested
from simveb.config import PaymentsSettings, Settings
from simveb.outbox import emit
from simveb.runtime import Runtime
from simveb.sandbox import sandbox_router
from tests.support import free_port, wait_for

DEV = PaymentsSettings()
WEBHOOK_SECRET = DEV.secret("fedapay_webhook_secret", production=False)
KKIAPAY_SECRET = DEV.secret("kkiapay_secret", production=False)
_refs = itertools.count(1)


@contextlib.asynccontextmanager
async def serve(app: Any, port: int | None = None) -> AsyncIterator[str]:
    """Serve an ASGI app on 127.0.0.1 on the current event loop; yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", access_log=False)
    )
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started, timeout=10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def simulators() -> AsyncIterator[str]:
    async with serve(Litestar(route_handlers=[sandbox_router()])) as url:
        yield url


def payment_settings(base: Settings, sim_url: str, app_port: int) -> dict[str, Any]:
    return {
        "fedapay_url": f"{sim_url}/sandbox/fedapay",
        "kkiapay_url": f"{sim_url}/sandbox/kkiapay",
        "callback_base_url": f"http://127.0.0.1:{app_port}",
        "reconcile_after_s": 0,
    }


LINES = (
    FeeLine(code="base", label="Immatriculation (première)", amount_xof=25_000),
    FeeLine(code="four_wheels_plus", label="Quatre roues et plus", amount_xof=35_000),
)


async def request_payment(
    runtime: Runtime, payer_id: uuid.UUID, *, amount: int = 60_000, lines: tuple[FeeLine, ...] = LINES
) -> dict[str, Any]:
    """Open a payable exactly as registrations does: PaymentRequested emitted in a transaction."""
    assert runtime.db is not None
    payable_id = uuid.uuid4()
    reference = f"IMM-2026-{next(_refs):06d}"
    event = PaymentRequested(
        payable_id=payable_id,
        payable_kind="registration",
        reference=reference,
        payer_id=payer_id,
        amount_xof=amount,
        lines=lines if sum(x.amount_xof for x in lines) == amount else (),
        description=f"Immatriculation {reference}",
    )
    async with runtime.db.transaction() as con:
        await emit(con, event, source="registrations")

    async def opened() -> Any:
        async with runtime.db.pool.acquire() as con:  # type: ignore[union-attr]
            return await con.fetchval("SELECT id FROM payments.payments WHERE payable_id = $1", payable_id)

    payment_id = await wait_for(opened, timeout=10)
    return {"payment_id": str(payment_id), "payable_id": str(payable_id), "reference": reference, "amount": amount}


def sign(body: bytes, *, secret: str = WEBHOOK_SECRET, at: int | None = None) -> str:
    """A FedaPay signature header, computed as the provider documents it."""
    t = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},s={mac}"


async def checkout(url: str, decision: str | None) -> str:
    """What a person does on the checkout page: open it, then click (None: walk away)."""
    async with httpx.AsyncClient() as c:
        page = await c.get(url)
        assert page.status_code == 200 and "Approuver" in page.text, page.text
        if decision is None:
            return page.text
        done = await c.post(url, data={"decision": decision})
        assert done.status_code == 200, done.text
        return done.text


async def sim_state(sim_url: str, provider: str = "fedapay") -> dict[str, Any]:
    async with httpx.AsyncClient() as c:
        return (await c.get(f"{sim_url}/sandbox/{provider}/_state")).json()


async def sim_control(sim_url: str, provider: str = "fedapay", **body: Any) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{sim_url}/sandbox/{provider}/_control", json=body)
        assert r.status_code == 200, r.text


def invoice_number_re(prefix: str = "SIMVEB-REC") -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}-\d{{4}}-\d{{6}}$")
