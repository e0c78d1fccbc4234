"""End to end with registrations: a filed registration is paid on the FedaPay simulator's checkout
page and becomes paid; a full refund by a supervisor cancels it. Documents are declared (the
registrations tests' mode) so that the saga between registrations and payments is what is tested.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from simveb.config import Settings, with_overrides
from simveb.runtime import Runtime
from tests.conftest import fresh_runtime
from tests.http.test_payments import payment
from tests.payments_support import checkout as click
from tests.payments_support import invoice_number_re, payment_settings, serve, simulators
from tests.registrations_support import DECLARED_ONLY, FIRST_DOCS, new_vehicle, person
from tests.support import free_port, wait_for


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    async with simulators() as url:
        yield url


@pytest.fixture
def app_port() -> int:
    return free_port()


@pytest.fixture
def settings(base_settings: Settings, sim_url: str, app_port: int) -> Settings:
    return with_overrides(base_settings, payments=payment_settings(base_settings, sim_url, app_port))


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with fresh_runtime(settings, **DECLARED_ONLY) as rt:
        yield rt


@pytest.fixture
async def api(runtime: Runtime, settings: Settings, app_port: int) -> AsyncIterator[httpx.AsyncClient]:
    from simveb.http.app import create_app

    async with serve(create_app(settings, runtime=runtime), app_port) as url, httpx.AsyncClient(base_url=url) as c:
        yield c


async def test_a_filed_registration_is_paid_on_the_checkout_page_and_becomes_paid(
    api: httpx.AsyncClient, seeded: Runtime, sim_url: str
) -> None:
    citizen = await person(seeded, "citizen")
    await person(seeded, "agent")  # someone to assign the paid request to
    supervisor = await person(seeded, "supervisor")
    filed = await api.post(
        "/api/immatriculations",
        json={"vehicle": new_vehicle(model="406"), "declared_documents": FIRST_DOCS},
        headers=citizen.headers,
    )
    assert filed.status_code == 201, filed.text
    req = filed.json()
    assert req["status"] == "waiting_for_payment"

    # The payer names the request; the amount is the request's frozen fee, whatever the client says.
    tampered = await api.post(
        "/api/payments/initiate",
        json={"payable_id": req["id"], "provider": "fedapay", "amount_xof": 1},
        headers=citizen.headers,
    )
    assert tampered.status_code == 400  # unknown field: amounts are not the client's to give

    async def started() -> Any:
        r = await api.post(
            "/api/payments/initiate", json={"payable_id": req["id"], "provider": "fedapay"}, headers=citizen.headers
        )
        return r if r.status_code == 201 else None  # the payable opens when the event is delivered

    r = await wait_for(started, timeout=10)
    assert r.json()["payment"]["amount_xof"] == req["fee_total_xof"]
    await click(r.json()["checkout_url"], "approve")

    async def request_status() -> Any:
        got = await api.get(f"/api/immatriculations/{req['id']}", headers=citizen.headers)
        return got.json() if got.json()["status"] not in ("waiting_for_payment",) else None

    moved = await wait_for(request_status, timeout=15)
    assert moved["status"] in ("paid", "assigned_to_staff")
    pay = (await payment(api, citizen.headers, req["id"]))["payment"]
    assert pay["status"] == "succeeded" and invoice_number_re().match(pay["invoice_number"])
    assert moved["payment_id"] == pay["id"]

    # A full refund by a supervisor goes back to the registration by event.
    assert "payments:refund" in supervisor.permissions
    refund = await api.post(
        f"/api/payments/{pay['id']}/refund", json={"reason": "withdrawn"}, headers=supervisor.headers
    )
    assert refund.status_code == 201, refund.text

    async def cancelled() -> Any:
        got = await api.get(f"/api/immatriculations/{req['id']}", headers=citizen.headers)
        return got.json()["status"] == "canceled" or None

    await wait_for(cancelled, timeout=15)
