"""`simveb payments reconcile`, run as a real process against the FedaPay simulator."""

from __future__ import annotations

import uuid

import httpx
import pytest
from litestar import Litestar

from simveb.actors.payments.messages import GetPayment, InitiatePayment
from simveb.config import Settings, with_overrides
from simveb.messages import Caller
from simveb.runtime import Runtime
from simveb.sandbox import sandbox_router
from tests.payments_support import request_payment
from tests.sandbox_server import serve_app
from tests.support import simveb


@pytest.fixture(scope="module")
def sim_url() -> str:
    # In a thread: the simulator must answer while the test waits for the command.
    with serve_app(Litestar(route_handlers=[sandbox_router()])) as url:
        yield url  # type: ignore[misc]


async def post(url: str, **kwargs: object) -> None:
    async with httpx.AsyncClient() as c:
        r = await c.post(url, **kwargs)  # type: ignore[arg-type]
        assert r.status_code == 200, r.text


@pytest.fixture
def settings(base_settings: Settings, sim_url: str) -> Settings:
    return with_overrides(base_settings, payments={"fedapay_url": f"{sim_url}/sandbox/fedapay"})


async def test_reconcile_settles_what_the_provider_says_and_reports_mismatches(
    runtime: Runtime, settings: Settings, sim_url: str
) -> None:
    assert runtime.bus is not None
    await post(f"{sim_url}/sandbox/fedapay/_control", json={"webhooks": {"mode": "drop"}})
    user = uuid.uuid4()
    caller = Caller(sub=str(user))
    paid = await request_payment(runtime, user)
    odd = await request_payment(runtime, user)
    waiting = await request_payment(runtime, user)
    started = {}
    for p in (paid, odd, waiting):
        started[p["payment_id"]] = await runtime.bus.ask(
            InitiatePayment(caller=caller, provider="fedapay", payment_id=uuid.UUID(p["payment_id"]))
        )
    async with httpx.AsyncClient() as c:
        # Two payers approve; their webhooks are lost; the third walks away.
        await c.post(started[paid["payment_id"]].checkout_url, data={"decision": "approve"})
        await c.post(started[odd["payment_id"]].checkout_url, data={"decision": "approve"})
    env = {"SIMVEB_PAYMENTS__FEDAPAY_URL": f"{sim_url}/sandbox/fedapay"}

    # Too young to reconcile with the default age: nothing is touched.
    done = simveb(settings, "payments", "reconcile", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.lstrip().startswith("0 pending transaction(s) older than 300 s checked: nothing pending")

    # The provider now reports another amount than the payables': both approvals are failures.
    await post(f"{sim_url}/sandbox/fedapay/_control", json={"amount_override": 1})
    done = simveb(settings, "payments", "reconcile", "--older-than", "0", env=env)
    assert done.returncode == 0, done.stderr
    assert "3 pending transaction(s) older than 0 s checked" in done.stdout
    assert "2 amount_mismatch" in done.stdout and "1 still_pending" in done.stdout
    assert "2 did not match:" in done.stdout
    await post(f"{sim_url}/sandbox/fedapay/_control", json={"clear_overrides": True})

    statuses = {
        pid: (await runtime.bus.ask(GetPayment(caller=caller, payment_id=uuid.UUID(pid)))).payment.status
        for pid in (paid["payment_id"], odd["payment_id"], waiting["payment_id"])
    }
    assert statuses == {paid["payment_id"]: "failed", odd["payment_id"]: "failed", waiting["payment_id"]: "pending"}

    # Once the provider agrees, a retry with a new attempt is settled by the next run.
    again = await runtime.bus.ask(
        InitiatePayment(caller=caller, provider="fedapay", payment_id=uuid.UUID(paid["payment_id"]))
    )
    await post(again.checkout_url, data={"decision": "approve"})
    done = simveb(settings, "payments", "reconcile", "--older-than", "0", env=env)
    assert "1 succeeded" in done.stdout and "did not match" not in done.stdout
    detail = await runtime.bus.ask(GetPayment(caller=caller, payment_id=uuid.UUID(paid["payment_id"])))
    assert detail.payment.status == "succeeded" and detail.payment.invoice_number
