"""The payment saga and crash safety: events from payments move requests; a runtime stopped right after a
commit (before the relay delivered anything) leaves a state that a new runtime completes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from simveb.actors.payments.messages import PaymentFailed, PaymentRefunded, PaymentSucceeded
from simveb.actors.registrations.messages import ChangeStatus, FileRequest, GetRequest, NewVehicle, ValidateRequest
from simveb.actors.users.messages import GetUserAuthz
from simveb.actors.vehicles.messages import GetVehicle, GetVehicleHistory, VehicleFields
from simveb.config import Settings
from simveb.messages import Caller
from simveb.outbox import emit
from simveb.runtime import Runtime
from simveb.seed import seed
from tests.conftest import fresh_runtime
from tests.registrations_support import DECLARED_ONLY, FIRST_DOCS, WITHOUT_PAYMENTS, vin
from tests.support import wait_for
from tests.users_support import make_user


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """All actors but documents: these tests declare documents instead of uploading them."""
    async with fresh_runtime(settings, **DECLARED_ONLY) as rt:
        yield rt


async def caller_for(rt: Runtime, *roles: str) -> Caller:
    assert rt.bus is not None
    staff = not set(roles) & {"citizen", "company", "affiliate"}
    user = await make_user(rt, *roles, kind="staff" if staff else "person")
    authz = await rt.bus.ask(GetUserAuthz(user_id=user.id))
    return Caller(sub=str(user.id), roles=tuple(authz.roles), permissions=frozenset(authz.permissions))


def filing(citizen: Caller) -> FileRequest:
    fields = VehicleFields(make="Peugeot", model="406", energy="Gazole", year=2020)
    return FileRequest(caller=citizen, vehicle=NewVehicle(vin=vin(), fields=fields), declared_documents=FIRST_DOCS)


async def publish_durably(rt: Runtime, event: Any) -> None:
    """As the payments actor would: through the outbox, delivered by the relay after commit."""
    assert rt.db is not None
    async with rt.db.transaction() as con:
        await emit(con, event, source="payments")


async def request_status(rt: Runtime, rid: uuid.UUID, who: Caller) -> str:
    assert rt.bus is not None
    return (await rt.bus.ask(GetRequest(request_id=rid, caller=who))).status


async def test_payment_succeeded_pays_and_assigns_once(seeded: Runtime) -> None:
    assert seeded.bus is not None
    citizen = await caller_for(seeded, "citizen")
    agent = await caller_for(seeded, "agent")
    req = await seeded.bus.ask(filing(citizen))
    assert req.status == "waiting_for_payment"
    # A failure changes nothing but is recorded.
    await publish_durably(
        seeded,
        PaymentFailed(payment_id=uuid.uuid4(), payable_id=req.id, payable_kind="registration", reason="declined"),
    )
    pid = uuid.uuid4()
    ok = PaymentSucceeded(
        payment_id=pid,
        payable_id=req.id,
        payable_kind="registration",
        payer_id=citizen.user_id,  # type: ignore[arg-type]
        amount_xof=req.fee_total_xof,
        provider="fedapay",
    )
    await publish_durably(seeded, ok)
    await wait_for(lambda: _status_is(seeded, req.id, citizen, "assigned_to_staff"))
    # Redelivered with the same event id: nothing more happens (inbox).
    event_id = uuid.uuid4()
    await seeded.bus.publish(ok, event_id=event_id)
    await seeded.bus.publish(ok, event_id=event_id)
    done = await seeded.bus.ask(GetRequest(request_id=req.id, caller=citizen))
    assert done.assignee_id == agent.user_id and done.payment_id == pid
    assert seeded.db is not None
    async with seeded.db.connection() as con:
        kinds = await con.fetch(
            "SELECT kind, amount_xof FROM registrations.payments WHERE request_id = $1 ORDER BY id", req.id
        )
        steps = await con.fetch(
            "SELECT to_status, by_sub FROM registrations.steps WHERE request_id = $1 ORDER BY id", req.id
        )
    assert [k["kind"] for k in kinds][:2] == ["failed", "succeeded"]
    assert sum(1 for s in steps if s["to_status"] == "paid") == 1
    assert any(s["to_status"] == "paid" and s["by_sub"] == "payments:fedapay" for s in steps)


async def _status_is(rt: Runtime, rid: uuid.UUID, who: Caller, status: str) -> bool:
    return await request_status(rt, rid, who) == status


async def test_full_refund_before_validation_cancels(seeded: Runtime) -> None:
    assert seeded.bus is not None
    citizen = await caller_for(seeded, "citizen")
    await caller_for(seeded, "agent")
    req = await seeded.bus.ask(filing(citizen))
    pid = uuid.uuid4()
    await publish_durably(
        seeded,
        PaymentSucceeded(
            payment_id=pid,
            payable_id=req.id,
            payable_kind="registration",
            payer_id=req.applicant_id,
            amount_xof=req.fee_total_xof,
            provider="kkiapay",
        ),
    )
    await wait_for(lambda: _status_is(seeded, req.id, citizen, "assigned_to_staff"))
    await publish_durably(
        seeded,
        PaymentRefunded(
            payment_id=pid,
            payable_id=req.id,
            payable_kind="registration",
            amount_xof=req.fee_total_xof,
            refunded_total_xof=req.fee_total_xof,
            full=True,
        ),
    )
    await wait_for(lambda: _status_is(seeded, req.id, citizen, "canceled"))
    final = await seeded.bus.ask(GetRequest(request_id=req.id, caller=citizen))
    assert final.amount_paid_xof == 0


async def test_underpayment_does_not_pay(seeded: Runtime) -> None:
    assert seeded.bus is not None
    citizen = await caller_for(seeded, "citizen")
    req = await seeded.bus.ask(filing(citizen))
    await publish_durably(
        seeded,
        PaymentSucceeded(
            payment_id=uuid.uuid4(),
            payable_id=req.id,
            payable_kind="registration",
            payer_id=req.applicant_id,
            amount_xof=req.fee_total_xof - 1,
            provider="fedapay",
        ),
    )
    assert seeded.db is not None

    async def recorded() -> bool:
        assert seeded.db is not None
        async with seeded.db.connection() as con:
            return bool(await con.fetchval("SELECT count(*) FROM registrations.payments WHERE request_id = $1", req.id))

    await wait_for(recorded)
    assert await request_status(seeded, req.id, citizen) == "waiting_for_payment"


async def test_stop_after_commits_then_restart_ends_consistent(settings: Settings) -> None:
    """Runtime A has no relay: every event it commits stays in the outbox when it stops (a crash
    between saga steps). Runtime B, on the same database, delivers them and everything converges.
    No payments service: with no relay it could not open the payable, so the agent's direct "paid"
    (the fallback of that mode) stands for the payment."""
    async with fresh_runtime(settings, relay=False, **WITHOUT_PAYMENTS) as a:
        await seed(a)
        assert a.bus is not None
        citizen = await caller_for(a, "citizen")
        agent = await caller_for(a, "agent")
        validator = await caller_for(a, "validator")
        req = await a.bus.ask(filing(citizen))
        await a.bus.ask(ChangeStatus(request_id=req.id, to_status="paid", caller=agent))
        for status in ("verified", "pre_validated"):
            await a.bus.ask(ChangeStatus(request_id=req.id, to_status=status, caller=agent))
        done = await a.bus.ask(ValidateRequest(request_id=req.id, caller=validator))
        assert done.plate == "AA 0001 RB"
        # Nothing was delivered: the vehicle has no plate yet, nobody was notified.
        assert (await a.bus.ask(GetVehicle(vehicle_id=req.vehicle_id))).plate is None  # type: ignore[arg-type]
        assert a.db is not None
        async with a.db.connection() as con:
            assert await con.fetchval("SELECT count(*) FROM notifications.messages") == 0
            pending = await con.fetchval("SELECT count(*) FROM bus.outbox WHERE source = 'registrations'")
        assert pending >= 8
    b = Runtime(settings, **WITHOUT_PAYMENTS)
    await b.start(migrate_first=False, seed_if_empty=False)
    try:
        assert b.bus is not None and b.db is not None

        async def plated() -> bool:
            assert b.bus is not None
            return (await b.bus.ask(GetVehicle(vehicle_id=req.vehicle_id))).plate == "AA 0001 RB"  # type: ignore[arg-type]

        await wait_for(plated, timeout=15)
        history = (await b.bus.ask(GetVehicleHistory(vehicle_id=req.vehicle_id))).items  # type: ignore[arg-type]
        assert [h.reason for h in history if h.field == "plate"] == [f"registration request {req.id}"]

        async def notified() -> bool:
            assert b.db is not None
            async with b.db.connection() as con:
                n = await con.fetchval(
                    "SELECT count(*) FROM notifications.messages WHERE user_id = $1 AND channel = 'in_app'"
                    " AND template_event = 'status_changed'",
                    citizen.user_id,
                )
            # submitted, waiting_for_payment, paid, validated: the visible status changes (the
            # citizen's welcome message, delivered in the same catch-up, is not one of them)
            seen.append(n)
            return n == 4

        seen: list[int] = []

        try:
            await wait_for(notified, timeout=15)
        except AssertionError:
            raise AssertionError(f"in-app messages: {seen[-1:]}") from None
        final = await b.bus.ask(GetRequest(request_id=req.id, caller=citizen))
        assert final.status == "validated" and final.plate == "AA 0001 RB"
        async with b.db.connection() as con:
            assert await con.fetchval("SELECT count(*) FROM registrations.issued_plates") == 1
    finally:
        await b.stop()
