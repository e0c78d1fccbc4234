"""Payments over real HTTP: the app on its own port, FedaPay and KKiaPay simulators on theirs.

A payer's browser clicks on the simulator's checkout page; the simulator signs and delivers the
webhook to the app; the app re-fetches the transaction from the simulator before acting. Attacks
(forged signatures, stale or replayed webhooks, modified bodies, someone else's payment) are
written as the attacker would send them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgspec
import pytest

from simveb.actors.config.messages import PutSetting
from simveb.actors.payments.messages import GetInvoice, RunReconciliation
from simveb.config import Settings, with_overrides
from simveb.runtime import Runtime
from tests.payments_support import (
    KKIAPAY_SECRET,
    invoice_number_re,
    payment_settings,
    request_payment,
    serve,
    sign,
    sim_control,
    sim_state,
    simulators,
)
from tests.payments_support import checkout as click
from tests.support import free_port, wait_for
from tests.users_support import events

Headers = Callable[..., dict[str, str]]


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
async def api(runtime: Runtime, settings: Settings, app_port: int) -> AsyncIterator[httpx.AsyncClient]:
    from simveb.http.app import create_app

    async with serve(create_app(settings, runtime=runtime), app_port) as url, httpx.AsyncClient(base_url=url) as c:
        yield c


@pytest.fixture
def payer(auth: Headers) -> tuple[uuid.UUID, dict[str, str]]:
    user = uuid.uuid4()
    return user, auth(sub=str(user), roles=("citizen",))


SUPERVISOR = ("payments:read", "payments:refund", "payments:confirm")


async def payment(api: httpx.AsyncClient, headers: dict[str, str], pid: str) -> dict[str, Any]:
    r = await api.get(f"/api/payments/{pid}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def wait_status(api: httpx.AsyncClient, headers: dict[str, str], pid: str, status: str) -> dict[str, Any]:
    async def reached() -> Any:
        body = await payment(api, headers, pid)
        return body if body["payment"]["status"] == status else None

    return await wait_for(reached, timeout=15, interval=0.05)


async def initiate(api: httpx.AsyncClient, headers: dict[str, str], pid: str, **extra: Any) -> httpx.Response:
    body = {"payment_id": pid, "provider": "fedapay", "phone": "+22997000001", **extra}
    return await api.post("/api/payments/initiate", json=body, headers=headers)


async def paid_by_checkout(api: httpx.AsyncClient, headers: dict[str, str], pid: str) -> dict[str, Any]:
    r = await initiate(api, headers, pid)
    assert r.status_code == 201, r.text
    await click(r.json()["checkout_url"], "approve")
    return await wait_status(api, headers, pid, "succeeded")


async def deliveries_done(sim_url: str, count: int, provider: str = "fedapay") -> list[dict[str, Any]]:
    async def done() -> Any:
        state = await sim_state(sim_url, provider)
        ok = [w for w in state["webhooks"] if w.get("status") is not None]
        return ok if len(ok) >= count and not state["in_flight"] else None

    return await wait_for(done, timeout=15, interval=0.05)


# --- the happy path and the payer's other choices ----------------------------------------------------


async def test_approve_on_checkout_pays_issues_the_next_invoice_and_tells_the_requester(
    api: httpx.AsyncClient, runtime: Runtime, payer: tuple[uuid.UUID, dict[str, str]], sim_url: str
) -> None:
    user, headers = payer
    assert runtime.bus is not None
    await runtime.bus.ask(PutSetting(key="payments.receipt_prefix", value="REC-TEST", type="string", by="test"))
    p = await request_payment(runtime, user)
    r = await initiate(api, headers, p["payable_id"])  # by the registration's id works too
    assert r.status_code == 201, r.text
    started = r.json()
    assert started["payment"]["amount_xof"] == 60_000 and started["transaction"]["status"] == "pending"
    page = await click(started["checkout_url"], None)
    assert "60 000 FCFA" in page and "Immatriculation" in page
    done = await click(started["checkout_url"], "approve")
    assert "Paiement approuvé" in done

    body = await wait_status(api, headers, p["payment_id"], "succeeded")
    pay = body["payment"]
    assert pay["provider"] == "fedapay" and pay["invoice_number"] == f"REC-TEST-{dt.datetime.now(dt.UTC).year}-000001"
    invoice = (await api.get(f"/api/payments/invoice/{pay['invoice_id']}", headers=headers)).json()
    assert invoice["total_xof"] == 60_000 and [x["amount_xof"] for x in invoice["lines"]] == [25_000, 35_000]
    assert invoice["reference"] == p["reference"] and invoice["payer_id"] == str(user)

    succeeded = await wait_for(lambda: events(runtime, "PaymentSucceeded"))
    assert len(succeeded) == 1 and succeeded[0]["invoice_number"] == pay["invoice_number"]
    assert succeeded[0]["payable_id"] == p["payable_id"] and succeeded[0]["amount_xof"] == 60_000

    # The webhook was verified, then the transaction was fetched from the provider before acting.
    state = await sim_state(sim_url)
    tid = started["transaction"]["provider_ref"]
    assert any(q["method"] == "GET" and q["path"].endswith(f"/v1/transactions/{tid}") for q in state["requests"])
    async with runtime.db.pool.acquire() as con:  # type: ignore[union-attr]
        receipts = await con.fetch("SELECT verified, outcome, raw_body FROM payments.webhook_receipts")
    assert [(r["verified"], r["outcome"]) for r in receipts] == [(True, "succeeded")]
    assert msgspec.json.decode(receipts[0]["raw_body"])["type"] == "transaction.approved"

    # A paid payment cannot be started again.
    again = await initiate(api, headers, p["payment_id"])
    assert again.status_code == 409 and again.json()["code"] == "already_paid"


async def test_invoice_numbers_follow_each_other_without_gaps(
    api: httpx.AsyncClient, runtime: Runtime, payer: tuple[uuid.UUID, dict[str, str]]
) -> None:
    user, headers = payer
    numbers = []
    for _ in range(3):
        p = await request_payment(runtime, user, amount=10_000)
        numbers.append((await paid_by_checkout(api, headers, p["payment_id"]))["payment"]["invoice_number"])
    assert all(invoice_number_re().match(n) for n in numbers)
    assert [int(n.rsplit("-", 1)[1]) for n in numbers] == [1, 2, 3]


async def test_decline_fails_the_payment_and_it_can_be_tried_again(
    api: httpx.AsyncClient, runtime: Runtime, payer: tuple[uuid.UUID, dict[str, str]]
) -> None:
    user, headers = payer
    p = await request_payment(runtime, user)
    r = await initiate(api, headers, p["payment_id"])
    await click(r.json()["checkout_url"], "decline")
    body = await wait_status(api, headers, p["payment_id"], "failed")
    assert body["transactions"][0]["status"] == "failed" and body["payment"]["invoice_id"] is None
    failed = await wait_for(lambda: events(runtime, "PaymentFailed"))
    assert failed[0]["reason"] == "declined"
    assert await events(runtime, "PaymentSucceeded") == []
    retry = await initiate(api, headers, p["payment_id"])
    assert retry.status_code == 201 and retry.json()["payment"]["status"] == "pending"
    await click(retry.json()["checkout_url"], "approve")
    await wait_status(api, headers, p["payment_id"], "succeeded")


async def test_abandoned_checkout_stays_pending_until_reconciliation_sees_it_expire(
    api: httpx.AsyncClient, runtime: Runtime, payer: tuple[uuid.UUID, dict[str, str]], sim_url: str
) -> None:
    user, headers = payer
    assert runtime.bus is not None
    p = await request_payment(runtime, user)
    r = await initiate(api, headers, p["payment_id"])
    await click(r.json()["checkout_url"], None)  # opened, then the payer walks away
    lines = await runtime.bus.ask(RunReconciliation(older_than_s=0))
    assert [(x.before, x.after, x.note, x.matched) for x in lines] == [("pending", "pending", "still_pending", True)]
    assert (await payment(api, headers, p["payment_id"]))["payment"]["status"] == "pending"

    ref = int(r.json()["transaction"]["provider_ref"])
    async with httpx.AsyncClient() as c:
        await c.post(f"{sim_url}/sandbox/fedapay/_status", json={"transaction_id": ref, "status": "canceled"})
    lines = await runtime.bus.ask(RunReconciliation(older_than_s=0))
    assert [(x.after, x.provider_status) for x in lines] == [("cancelled", "canceled")]
    assert (await payment(api, headers, p["payment_id"]))["payment"]["status"] == "cancelled"
    # Nothing pending is left to reconcile.
    assert await runtime.bus.ask(RunReconciliation(older_than_s=0)) == []


async def test_payer_cancels_then_starts_again(
    api: httpx.AsyncClient, runtime: Runtime, payer: tuple[uuid.UUID, dict[str, str]]
) -> None:
    user, headers = payer
    p = await request_payment(runtime, user)
    await initiate(api, headers, p["payment_id"])
    r = await api.post(f"/api/payments/{p['payment_id']}/cancel", json={"reason": "changed my mind"}, headers=headers)
    assert r.status_code == 200 and r.json()["payment"]["status"] == "cancelled"
    assert [t["status"] for t in r.json()["transactions"]] == ["cancelled"]
    again = await initiate(api, headers, p["payment_id"])
    assert again.status_code == 201


# --- webhook attacks ---------------------------------------------------------------------------------


async def _pending_with_approved_provider(
    api: httpx.AsyncClient, runtime: Runtime, headers: dict[str, str], user: uuid.UUID, sim_url: str
) -> tuple[dict[str, Any], bytes]:
    """A pending payment whose provider transaction is approved but whose webhook was dropped, and the
    body an attacker (or a replayer) would post for it."""
    await sim_control(sim_url, webhooks={"mode": "drop"})
    p = await request_payment(runtime, user)
    r = await initiate(api, headers, p["payment_id"])
    await click(r.json()["checkout_url"], "approve")
    tx = {"id": int(r.json()["transaction"]["provider_ref"]), "status": "approved", "amount": 60_000}
    body = msgspec.json.encode(
        {"klass": "v1/event", "type": "transaction.approved", "entity": tx, "object_id": tx["id"]}
    )
    return p, body


async def test_forged_signatures_are_refused_and_stored_as_unverified(
    api: httpx.AsyncClient, runtime: Runtime, payer: tuple[uuid.UUID, dict[str, str]], sim_url: str
) -> None:
    user, headers = payer
    p, body = await _pending_with_approved_provider(api, runtime, headers, user, sim_url)
    before = len((await sim_state(sim_url))["requests"])
    url = "/api/payments/webhooks/fedapay"
    forged = [
        None,
        "",
        "garbage",
        f"t={int(time.time())}",
        f"t={int(time.time())},s=",
        sign(body, secret="not-the-secret"),
        sign(body, secret=""),
        sign(body).replace("s=", "v1="),
        f"t=abc,s={'0' * 64}",
    ] + [f"t={int(time.time())},s={secrets.token_hex(32)}" for _ in range(30)]
    for header in forged:
        h = {} if header is None else {"X-FEDAPAY-SIGNATURE": header}
        r = await api.post(url, content=body, headers={"Content-Type": "application/json", **h})
        assert r.status_code == 400, (header, r.text)
        assert r.json()["code"] == "webhook_refused"
    # Nothing was believed: no re-fetch, still pending, no event, every receipt stored unverified.
    assert len((await sim_state(sim_url))["requests"]) == before
    assert (await payment(api, headers, p["payment_id"]))["payment"]["status"] == "pending"
    assert await events(runtime, "PaymentSucceeded") == []
    async with runtime.db.pool.acquire() as con:  # type: ignore[union-attr]
        rows = await con.fetch("SELECT verified, verification_error FROM payments.webhook_receipts")
    assert len(rows) == len(forged) and not any(r["verified"] for r in rows)
    assert all(r["verification_error"] for r in rows)

    # The genuine signature of the same body is accepted and acted upon (after a re-fetch).
    r = await api.post(url, content=body, headers={"X-FEDAPAY-SIGNATURE": sign(body)})
    assert r.status_code == 200 and r.json()["outcome"] == "succeeded"


async def test_stale_timestamp_and_modified_body_are_refused(
    api: httpx.AsyncClient, runtime: Runtime, payer: tuple[uuid.UUID, dict[str, str]], sim_url: str
) -> None:
    user, headers = payer
    p, body = await _pending_with_approved_provider(api, runtime, headers, user, sim_url)
    url = "/api/payments/webhooks/fedapay"
    stale = sign(body, at=int(time.time()) - 310)
    future = sign(body, at=int(time.time()) + 310)
    modified = body.replace(b"transaction.approved", b"transaction.declined")
    for content, header in [(body, stale), (body, future), (modified, sign(body)), (body + b" ", sign(body))]:
        r = await api.post(url, content=content, headers={"X-FEDAPAY-SIGNATURE": header})
        assert r.status_code == 400, r.text
    assert (await payment(api, headers, p["payment_id"]))["payment"]["status"] == "pending"
    # Within the tolerance is fine.
    r = await api.post(url, content=body, headers={"X-FEDAPAY-SIGNATURE": sign(body, at=int(time.time()) - 250)})
    assert r.status_code == 200


async def test_a_replayed_webhook_changes_nothing(
    api: httpx.AsyncClient, runtime: Runtime, payer: tuple[uuid.UUID, dict[str, str]], sim_url: str
) -> None:
    user, headers = payer
    p, body = await _pending_with_approved_provider(api, runtime, headers, user, sim_url)
    header = sign(body)
    outcomes = []
    for _ in range(5):  # the attacker captured one genuine delivery and plays it again
        r = await api.post("/api/payments/webhooks/fedapay", content=body, headers={"X-FEDAPAY-SIGNATURE": header})
        assert r.status_code == 200
        outcomes.append(r.json()["outcome"])
    assert outcomes == ["succeeded"] + ["unchanged"] * 4
    await wait_for(lambda: events(runtime, "PaymentSucceeded"))
    await asyncio.sleep(0.3)
    assert len(await events(runtime, "PaymentSucceeded")) == 1
    body_ = await payment(api, headers, p["payment_id"])
    assert body_["payment"]["invoice_number"].endswith("-000001") and len(body_["transactions"]) == 1


async def test_ten_redeliveries_pay_once(
    api: httpx.AsyncClient, runtime: Runtime, payer: tuple[uuid.UUID, dict[str, str]], sim_url: str
) -> None:
    user, headers = payer
    await sim_control(sim_url, webhooks={"duplicates": 10})
    p = await request_payment(runtime, user)
    r = await initiate(api, headers, p["payment_id"])
    await click(r.json()["checkout_url"], "approve")
    delivered = await deliveries_done(sim_url, 10)
    assert [d["status"] for d in delivered] == [200] * 10
    await wait_status(api, headers, p["payment_id"], "succeeded")
    assert len(await events(runtime, "PaymentSucceeded")) == 1
    async with runtime.db.pool.acquire() as con:  # type: ignore[union-attr]
        assert await con.fetchval("SELECT count(*) FROM payments.invoices") == 1
        outcomes = await con.fetch("SELECT outcome FROM payments.webhook_receipts ORDER BY id")
    assert sorted(o["outcome"] for o in outcomes) == ["succeeded"] + ["unchanged"] * 9


async def test_webhooks_out_of_order_declined_after_approved_changes_nothing(
    api: httpx.AsyncClient, runtime: Runtime, payer: tuple[uuid.UUID, dict[str, str]], sim_url: str
) -> None:
    user, headers = payer
    await sim_control(sim_url, webhooks={"reorder": True})
    p = await request_payment(runtime, user)
    r = await initiate(api, headers, p["payment_id"])
    await click(r.json()["checkout_url"], "approve")
    ref = int(r.json()["transaction"]["provider_ref"])
    async with httpx.AsyncClient() as c:
        # A "declined" event for the same transaction, sent after the approval: flushed first.
        await c.post(f"{sim_url}/sandbox/fedapay/_send", json={"transaction_id": ref, "type": "transaction.declined"})
        assert (await c.post(f"{sim_url}/sandbox/fedapay/_flush")).json() == {"sent": 2}
    labels = [d["event"] for d in (await sim_state(sim_url))["webhooks"]]
    assert labels == [f"transaction.declined#{ref}", f"transaction.approved#{ref}"]
    body = await wait_status(api, headers, p["payment_id"], "succeeded")
    assert body["transactions"][0]["status"] == "succeeded"
    # And a declined event after it is settled changes nothing either.
    await sim_control(sim_url, webhooks={"mode": "deliver"})
    async with httpx.AsyncClient() as c:
        await c.post(f"{sim_url}/sandbox/fedapay/_send", json={"transaction_id": ref, "type": "transaction.declined"})
    await deliveries_done(sim_url, 3)
    assert (await payment(api, headers, p["payment_id"]))["payment"]["status"] == "succeeded"
    assert await events(runtime, "PaymentFailed") == []


async def test_a_provider_amount_that_differs_is_a_failed_payment(
    api: httpx.AsyncClient,
    runtime: Runtime,
    payer: tuple[uuid.UUID, dict[str, str]],
    sim_url: str,
    simveb_logs: Any,
) -> None:
    user, headers = payer
    await sim_control(sim_url, amount_override=100)
    p = await request_payment(runtime, user)
    r = await initiate(api, headers, p["payment_id"])
    await click(r.json()["checkout_url"], "approve")
    body = await wait_status(api, headers, p["payment_id"], "failed")
    assert body["transactions"][0]["failure_reason"].startswith("amount_mismatch")
    assert (await wait_for(lambda: events(runtime, "PaymentFailed")))[0]["reason"] == "amount_mismatch"
    assert await events(runtime, "PaymentSucceeded") == []
    assert "reports 100 XOF" in simveb_logs.text()

    await sim_control(sim_url, clear_overrides=True, currency_override="EUR")
    p2 = await request_payment(runtime, user)
    r = await initiate(api, headers, p2["payment_id"])
    await click(r.json()["checkout_url"], "approve")
    await wait_status(api, headers, p2["payment_id"], "failed")


async def test_a_second_success_is_refunded_automatically_and_flagged(
    api: httpx.AsyncClient, runtime: Runtime, payer: tuple[uuid.UUID, dict[str, str]], sim_url: str, auth: Headers
) -> None:
    user, headers = payer
    p = await request_payment(runtime, user)
    first = (await initiate(api, headers, p["payment_id"])).json()
    second = (await initiate(api, headers, p["payment_id"])).json()  # a second tab
    await click(first["checkout_url"], "approve")
    await wait_status(api, headers, p["payment_id"], "succeeded")
    await click(second["checkout_url"], "approve")

    async def refunded() -> Any:
        body = await payment(api, headers, p["payment_id"])
        return body if body["refunds"] and body["refunds"][0]["status"] == "succeeded" else None

    body = await wait_for(refunded, timeout=15)
    assert body["payment"]["status"] == "succeeded" and body["payment"]["refunded_xof"] == 0
    flagged = [t for t in body["transactions"] if t["flagged"]]
    assert [t["id"] for t in flagged] == [second["transaction"]["id"]] and flagged[0]["flag_reason"] == "double_payment"
    assert body["refunds"][0]["automatic"] and body["refunds"][0]["amount_xof"] == 60_000
    sim_tx = {t["id"]: t for t in (await sim_state(sim_url))["transactions"]}
    assert sim_tx[int(second["transaction"]["provider_ref"])]["status"] == "refunded"
    assert sim_tx[int(first["transaction"]["provider_ref"])]["status"] == "approved"
    assert len(await events(runtime, "PaymentSucceeded")) == 1 and await events(runtime, "PaymentRefunded") == []
    # Finance staff find it among flagged transactions.
    page = (await api.get("/api/payments/transactions?flagged=true", headers=auth(*SUPERVISOR))).json()
    assert [t["id"] for t in page["items"]] == [second["transaction"]["id"]]


# --- refunds -----------------------------------------------------------------------------------------


async def test_partial_then_full_refund_never_more_than_paid(
    api: httpx.AsyncClient, runtime: Runtime, payer: tuple[uuid.UUID, dict[str, str]], sim_url: str, auth: Headers
) -> None:
    user, headers = payer
    p = await request_payment(runtime, user)
    body = await paid_by_checkout(api, headers, p["payment_id"])
    url = f"/api/payments/{p['payment_id']}/refund"
    assert (await api.post(url, json={"amount_xof": 1000}, headers=headers)).status_code == 403
    boss = auth(*SUPERVISOR, sub="supervisor-1", roles=("supervisor",))

    r = await api.post(url, json={"amount_xof": 20_000, "reason": "overcharged"}, headers=boss)
    assert r.status_code == 201 and r.json()["status"] == "succeeded", r.text
    assert (await payment(api, headers, p["payment_id"]))["payment"]["status"] == "partially_refunded"
    too_much = await api.post(url, json={"amount_xof": 40_001}, headers=boss)
    assert too_much.status_code == 422 and too_much.json()["code"] == "refund_exceeds_paid"
    rest = await api.post(url, json={"reason": "request withdrawn"}, headers=boss)
    assert rest.status_code == 201 and rest.json()["amount_xof"] == 40_000
    final = await payment(api, headers, p["payment_id"])
    assert final["payment"]["status"] == "refunded" and final["payment"]["refunded_xof"] == 60_000
    again = await api.post(url, json={"amount_xof": 1}, headers=boss)
    assert again.status_code == 409

    async def two_refunds() -> Any:
        found = await events(runtime, "PaymentRefunded")
        return found if len(found) == 2 else None

    refunded = await wait_for(two_refunds)
    assert [(e["amount_xof"], e["refunded_total_xof"], e["full"]) for e in refunded] == [
        (20_000, 20_000, False),
        (40_000, 60_000, True),
    ]
    ref = int(body["payment"]["provider_reference"])
    sim_tx = {t["id"]: t for t in (await sim_state(sim_url))["transactions"]}
    assert sim_tx[ref]["refunded_amount"] == 60_000 and sim_tx[ref]["status"] == "refunded"


async def test_a_refund_the_provider_cannot_make_now_is_a_503_and_changes_nothing(
    api: httpx.AsyncClient, runtime: Runtime, payer: tuple[uuid.UUID, dict[str, str]], sim_url: str, auth: Headers
) -> None:
    user, headers = payer
    p = await request_payment(runtime, user)
    await paid_by_checkout(api, headers, p["payment_id"])
    await sim_control(sim_url, api={"mode": "fail", "times": 1})
    boss = auth(*SUPERVISOR, sub="supervisor-1")
    r = await api.post(f"/api/payments/{p['payment_id']}/refund", json={"amount_xof": 5000}, headers=boss)
    assert r.status_code == 503
    body = await payment(api, headers, p["payment_id"])
    assert body["payment"]["status"] == "succeeded" and body["payment"]["refunded_xof"] == 0
    assert [x["status"] for x in body["refunds"]] == ["failed"]
    r = await api.post(f"/api/payments/{p['payment_id']}/refund", json={"amount_xof": 60_000}, headers=boss)
    assert r.status_code == 201


# --- idempotency -------------------------------------------------------------------------------------


async def test_idempotent_retries_replay_the_first_answer(
    api: httpx.AsyncClient, runtime: Runtime, payer: tuple[uuid.UUID, dict[str, str]], sim_url: str, auth: Headers
) -> None:
    user, headers = payer
    p = await request_payment(runtime, user)
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = await initiate(api, {**headers, **key}, p["payment_id"])
    second = await initiate(api, {**headers, **key}, p["payment_id"])
    assert first.status_code == second.status_code == 201
    assert first.json()["transaction"]["id"] == second.json()["transaction"]["id"]
    assert first.json()["checkout_url"] == second.json()["checkout_url"]
    assert len((await sim_state(sim_url))["transactions"]) == 1
    other = await initiate(api, {**headers, **key}, p["payment_id"], phone="+22997000002")
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    # Keys belong to their caller: another user's same key is theirs, and finds nothing of ours.
    stranger = auth(sub=str(uuid.uuid4()))
    assert (await initiate(api, {**stranger, **key}, p["payment_id"])).status_code == 404

    await click(first.json()["checkout_url"], "approve")
    await wait_status(api, headers, p["payment_id"], "succeeded")
    boss = {**auth(*SUPERVISOR, sub="supervisor-1"), "Idempotency-Key": "refund-1"}
    url = f"/api/payments/{p['payment_id']}/refund"
    a = await api.post(url, json={"amount_xof": 1000}, headers=boss)
    b = await api.post(url, json={"amount_xof": 1000}, headers=boss)
    assert a.status_code == b.status_code == 201 and a.json()["id"] == b.json()["id"]
    assert (await payment(api, headers, p["payment_id"]))["payment"]["refunded_xof"] == 1000
    c = await api.post(url, json={"amount_xof": 2000}, headers=boss)
    assert c.status_code == 422
    # An error is replayed too (Stripe semantics): same key, same request, same 422.
    big = {**boss, "Idempotency-Key": "refund-2"}
    e1 = await api.post(url, json={"amount_xof": 10**6}, headers=big)
    e2 = await api.post(url, json={"amount_xof": 10**6}, headers=big)
    assert e1.status_code == e2.status_code == 422 and e1.json()["code"] == e2.json()["code"] == "refund_exceeds_paid"
    # A key older than 24 h is forgotten.
    async with runtime.db.pool.acquire() as con:  # type: ignore[union-attr]
        await con.execute("UPDATE payments.idempotency_keys SET created_at = now() - interval '25 hours'")
    d = await api.post(url, json={"amount_xof": 1000}, headers=boss)
    assert d.status_code == 201 and d.json()["id"] != a.json()["id"]


# --- who sees what -----------------------------------------------------------------------------------


async def test_another_users_payment_is_a_404_everywhere(
    api: httpx.AsyncClient, runtime: Runtime, payer: tuple[uuid.UUID, dict[str, str]], auth: Headers
) -> None:
    user, headers = payer
    p = await request_payment(runtime, user)
    body = await paid_by_checkout(api, headers, p["payment_id"])
    other = auth(sub=str(uuid.uuid4()), roles=("citizen",))
    pid = p["payment_id"]
    assert (await api.get(f"/api/payments/{pid}", headers=other)).status_code == 404
    assert (await api.get(f"/api/payments/{p['payable_id']}", headers=other)).status_code == 404
    assert (await api.post(f"/api/payments/{pid}/cancel", headers=other)).status_code == 404
    assert (await api.post(f"/api/payments/{pid}/confirm", headers=other)).status_code == 404
    assert (await api.get(f"/api/payments/invoice/{body['payment']['invoice_id']}", headers=other)).status_code == 404
    r = await api.post(
        "/api/payments/initiate", json={"payable_id": p["payable_id"], "provider": "fedapay"}, headers=other
    )
    assert r.status_code == 404
    assert (await api.get("/api/payments/transactions", headers=other)).json()["items"] == []
    assert (await api.get(f"/api/payments/{uuid.uuid4()}", headers=headers)).status_code == 404
    assert (await api.get(f"/api/payments/{pid}")).status_code == 401
    # Finance staff see it; the documents service asks for the invoice as the system.
    assert (await api.get(f"/api/payments/{pid}", headers=auth("payments:read"))).status_code == 200
    assert runtime.bus is not None
    invoice = await runtime.bus.ask(GetInvoice(invoice_id=uuid.UUID(body["payment"]["invoice_id"])))
    assert invoice.total_xof == 60_000


async def test_transactions_list_is_the_callers_own_with_filters_and_a_cursor(
    api: httpx.AsyncClient, runtime: Runtime, payer: tuple[uuid.UUID, dict[str, str]], auth: Headers
) -> None:
    user, headers = payer
    mine = [await request_payment(runtime, user, amount=5000) for _ in range(3)]
    for p in mine:
        await initiate(api, headers, p["payment_id"])
    someone = uuid.uuid4()
    theirs = await request_payment(runtime, someone, amount=7000)
    await initiate(api, auth(sub=str(someone)), theirs["payment_id"])

    seen, cursor = [], None
    while True:
        q = "/api/payments/transactions?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await api.get(q, headers=headers)).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 3 and {t["payment_id"] for t in seen} == {p["payment_id"] for p in mine}
    assert all(t["payer_id"] == str(user) for t in seen)
    everyone = (await api.get("/api/payments/transactions?status=pending", headers=auth("payments:read"))).json()
    assert len(everyone["items"]) == 4
    only = (await api.get(f"/api/payments/transactions?payer_id={someone}", headers=auth("payments:read"))).json()
    assert [t["amount_xof"] for t in only["items"]] == [7000]
    assert (await api.get("/api/payments/transactions?cursor=%%%", headers=headers)).status_code == 400


# --- counter payments --------------------------------------------------------------------------------


async def test_agent_records_a_counter_payment_with_its_receipt(
    api: httpx.AsyncClient, runtime: Runtime, payer: tuple[uuid.UUID, dict[str, str]], auth: Headers
) -> None:
    user, headers = payer
    p = await request_payment(runtime, user)
    url = f"/api/payments/{p['payment_id']}/confirm"
    cash = {"method": "cash", "receipt_reference": "GUICHET-COT-000123"}
    assert (await api.post(url, json=cash, headers=headers)).status_code == 403  # the payer cannot
    agent = auth("payments:confirm", sub="agent-7", roles=("agent",))
    assert (await api.post(url, json={"method": "cash"}, headers=agent)).status_code == 422
    r = await api.post(url, json=cash, headers=agent)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["payment"]["status"] == "succeeded" and body["payment"]["provider"] == "cash"
    assert body["transactions"][0]["created_by"] == "agent-7"
    assert body["transactions"][0]["provider_ref"] == "GUICHET-COT-000123"
    assert invoice_number_re().match(body["payment"]["invoice_number"])
    succeeded = await wait_for(lambda: events(runtime, "PaymentSucceeded"))
    assert succeeded[0]["provider"] == "cash"
    again = await api.post(url, json=cash, headers=agent)
    assert again.status_code == 409
    async with runtime.db.pool.acquire() as con:  # type: ignore[union-attr]
        history = await con.fetch("SELECT to_status, by FROM payments.history ORDER BY id")
    assert [(h["to_status"], h["by"]) for h in history] == [("succeeded", "agent-7")]


# --- KKiaPay -----------------------------------------------------------------------------------------


async def test_kkiapay_widget_payment_confirmed_by_webhook_then_reverted(
    api: httpx.AsyncClient, runtime: Runtime, payer: tuple[uuid.UUID, dict[str, str]], sim_url: str, auth: Headers
) -> None:
    user, headers = payer
    p = await request_payment(runtime, user)
    r = await initiate(api, headers, p["payment_id"], provider="kkiapay")
    assert r.status_code == 201, r.text
    widget = r.json()["widget"]
    assert widget["amount"] == 60_000 and widget["data"] == p["payment_id"] and widget["sandbox"] is True
    callback = str(api.base_url).rstrip("/") + "/api/payments/webhooks/kkiapay"
    async with httpx.AsyncClient() as c:
        paid = await c.post(
            f"{sim_url}/sandbox/kkiapay/widget/pay",
            json={"amount": widget["amount"], "state": widget["data"], "webhook_url": callback},
        )
    tid = paid.json()["transactionId"]
    body = await wait_status(api, headers, p["payment_id"], "succeeded")
    assert body["payment"]["provider"] == "kkiapay" and body["transactions"][0]["provider_ref"] == tid
    # The payer's own confirmation afterwards changes nothing.
    again = await api.post(f"/api/payments/{p['payment_id']}/confirm", json={"transaction_id": tid}, headers=headers)
    assert again.status_code == 200 and len(again.json()["transactions"]) == 1

    boss = auth(*SUPERVISOR, sub="supervisor-1")
    url = f"/api/payments/{p['payment_id']}/refund"
    partial = await api.post(url, json={"amount_xof": 1000}, headers=boss)
    assert partial.status_code == 422 and partial.json()["code"] == "partial_refund_unsupported"
    full = await api.post(url, json={}, headers=boss)
    assert full.status_code == 201
    assert (await sim_state(sim_url, "kkiapay"))["transactions"][0]["status"] == "REVERTED"
    assert (await payment(api, headers, p["payment_id"]))["payment"]["status"] == "refunded"


async def test_kkiapay_confirm_by_transaction_id_and_forged_secret(
    api: httpx.AsyncClient, runtime: Runtime, payer: tuple[uuid.UUID, dict[str, str]], sim_url: str
) -> None:
    user, headers = payer
    await sim_control(sim_url, "kkiapay", webhooks={"mode": "drop"})
    p = await request_payment(runtime, user)
    await initiate(api, headers, p["payment_id"], provider="kkiapay")
    async with httpx.AsyncClient() as c:
        paid = await c.post(f"{sim_url}/sandbox/kkiapay/widget/pay", json={"amount": 60_000})
    tid = paid.json()["transactionId"]
    # An attacker posts a webhook for it without the secret, or with a wrong one.
    body = msgspec.json.encode({"transactionId": tid, "isPaymentSucces": True})
    for h in ({}, {"x-kkiapay-secret": "guess"}, {"x-kkiapay-secret": KKIAPAY_SECRET + "x"}):
        r = await api.post("/api/payments/webhooks/kkiapay", content=body, headers=h)
        assert r.status_code == 400
    assert (await payment(api, headers, p["payment_id"]))["payment"]["status"] == "pending"
    async with runtime.db.pool.acquire() as con:  # type: ignore[union-attr]
        stored = await con.fetch("SELECT verified, signature FROM payments.webhook_receipts")
    assert [(s["verified"], s["signature"]) for s in stored] == [(False, None)] * 3  # the secret is never stored

    # The payer confirms with the widget's id; the status API says SUCCESS for the right amount.
    r = await api.post(f"/api/payments/{p['payment_id']}/confirm", json={"transaction_id": tid}, headers=headers)
    assert r.status_code == 200 and r.json()["payment"]["status"] == "succeeded"
    # A transaction id KKiaPay does not know is refused.
    p2 = await request_payment(runtime, user)
    r = await api.post(f"/api/payments/{p2['payment_id']}/confirm", json={"transaction_id": "kk_nope"}, headers=headers)
    assert r.status_code == 422 and r.json()["code"] == "unknown_transaction"
    # Someone else's KKiaPay transaction (made for another payment) cannot pay this one.
    async with httpx.AsyncClient() as c:
        other = await c.post(
            f"{sim_url}/sandbox/kkiapay/widget/pay", json={"amount": 60_000, "state": str(uuid.uuid4())}
        )
    r = await api.post(
        f"/api/payments/{p2['payment_id']}/confirm",
        json={"transaction_id": other.json()["transactionId"]},
        headers=headers,
    )
    assert r.status_code == 422 and r.json()["code"] == "transaction_mismatch"
