"""HTTP routes of the payments service (seed §5) and the providers' webhooks.

Amounts never come from the client: `initiate` names the payment (or the thing paid for) and picks
the provider and phone. `Idempotency-Key` is honoured on initiate, confirm, cancel and refund.
Permissions (README): the payer sees their own payments; `payments:read` sees every payment and
transaction; `payments:confirm` records counter payments; `payments:refund` refunds. A payment the
caller may not see is a 404.

The two webhook routes are public and proved by their provider's signature (FedaPay) or shared
secret (KKiaPay) only; the raw body bytes are handed to the actor untouched, because the HMAC is over
exactly what was received.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, get, post
from litestar.params import HeaderParameter, Parameter

from simveb.actors.payments.messages import (
    CancelPayment,
    ConfirmPayment,
    GetInvoice,
    GetPayment,
    HandleWebhook,
    IdempotencyKey,
    Initiated,
    InitiatePayment,
    Invoice,
    ListTransactions,
    PaymentDetail,
    Refund,
    RefundPayment,
    TransactionPage,
    TransactionStatus,
    WebhookResult,
)
from simveb.bus import Bus
from simveb.http.inputs import CursorQuery, LimitQuery, body_of
from simveb.http.security import requires
from simveb.messages import PAGE_LIMIT_DEFAULT, Caller

PUBLIC = {"public": True}
Key = Annotated[
    IdempotencyKey | None,
    HeaderParameter(name="Idempotency-Key", required=False, description="replays the first answer for 24 h"),
]


# Bodies are the messages' own fields, less what the route sets (the caller, the payment in the path,
# the Idempotency-Key header).
_ROUTE_SETS = ("caller", "idempotency_key")
InitiateIn = body_of(InitiatePayment, exclude=_ROUTE_SETS, name="InitiateIn")
ConfirmIn = body_of(ConfirmPayment, exclude=(*_ROUTE_SETS, "payment_id"), name="ConfirmIn")
CancelIn = body_of(CancelPayment, exclude=(*_ROUTE_SETS, "payment_id"), name="CancelIn")
RefundIn = body_of(RefundPayment, exclude=(*_ROUTE_SETS, "payment_id"), name="RefundIn")


class PaymentsController(Controller):
    path = "/api/payments"
    tags = ["payments"]

    @post("/initiate", status_code=201)
    async def initiate(self, bus: Bus, caller: Caller, data: InitiateIn, idempotency_key: Key = None) -> Initiated:
        """Start paying: FedaPay answers a checkout URL, KKiaPay the widget parameters."""
        return await bus.ask(
            InitiatePayment(
                caller=caller,
                provider=data.provider,
                payment_id=data.payment_id,
                payable_id=data.payable_id,
                payable_kind=data.payable_kind,
                phone=data.phone,
                idempotency_key=idempotency_key,
            )
        )

    @get("/transactions")
    async def transactions(
        self,
        bus: Bus,
        caller: Caller,
        status: TransactionStatus | None = None,
        provider: Annotated[
            str | None, Parameter(pattern=r"^[a-z][a-z0-9_]{0,29}$", description="fedapay, kkiapay or counter")
        ] = None,
        payment_id: UUID | None = None,
        payer_id: UUID | None = None,
        flagged: bool | None = None,
        cursor: CursorQuery = None,
        limit: LimitQuery = PAGE_LIMIT_DEFAULT,
    ) -> TransactionPage:
        """The caller's transactions (everyone's with payments:read), newest first, cursor-paginated."""
        return await bus.ask(
            ListTransactions(
                caller=caller,
                status=status,
                provider=provider,
                payment_id=payment_id,
                payer_id=payer_id,
                flagged=flagged,
                cursor=cursor,
                limit=limit,
            )
        )

    @get("/{payment_id:uuid}")
    async def get_payment(self, bus: Bus, caller: Caller, payment_id: UUID) -> PaymentDetail:
        """A payment (by its id or the paid thing's id) with its attempts and refunds."""
        return await bus.ask(GetPayment(caller=caller, payment_id=payment_id))

    @post("/{payment_id:uuid}/confirm", status_code=200)
    async def confirm(
        self, bus: Bus, caller: Caller, payment_id: UUID, data: ConfirmIn | None = None, idempotency_key: Key = None
    ) -> PaymentDetail:
        """Verify a provider payment now, or record a counter payment (payments:confirm)."""
        body = data or ConfirmIn()
        return await bus.ask(
            ConfirmPayment(
                caller=caller,
                payment_id=payment_id,
                transaction_id=body.transaction_id,
                method=body.method,
                receipt_reference=body.receipt_reference,
                idempotency_key=idempotency_key,
            )
        )

    @post("/{payment_id:uuid}/cancel", status_code=200)
    async def cancel(
        self, bus: Bus, caller: Caller, payment_id: UUID, data: CancelIn | None = None, idempotency_key: Key = None
    ) -> PaymentDetail:
        """Give up the pending attempts (the payment can be started again)."""
        body = data or CancelIn()
        return await bus.ask(
            CancelPayment(caller=caller, payment_id=payment_id, reason=body.reason, idempotency_key=idempotency_key)
        )

    @post("/{payment_id:uuid}/refund", status_code=201, guards=[requires("payments:refund")])
    async def refund(
        self, bus: Bus, caller: Caller, payment_id: UUID, data: RefundIn | None = None, idempotency_key: Key = None
    ) -> Refund:
        """Refund a payment through its provider, in part or in full (payments:refund)."""
        body = data or RefundIn()
        return await bus.ask(
            RefundPayment(
                caller=caller,
                payment_id=payment_id,
                amount_xof=body.amount_xof,
                reason=body.reason,
                idempotency_key=idempotency_key,
            )
        )

    @get("/invoice/{invoice_id:uuid}")
    async def invoice(self, bus: Bus, caller: Caller, invoice_id: UUID) -> Invoice:
        """An invoice (receipt) as JSON."""
        return await bus.ask(GetInvoice(invoice_id=invoice_id, caller=caller))

    @post("/webhooks/fedapay", opt=PUBLIC, status_code=200)
    async def fedapay_webhook(self, bus: Bus, request: Request[Any, Any, Any]) -> WebhookResult:
        """FedaPay events, proved by X-FEDAPAY-SIGNATURE over the raw body."""
        body = await request.body()
        return await bus.ask(
            HandleWebhook(provider="fedapay", body=body, proof=request.headers.get("x-fedapay-signature"))
        )

    @post("/webhooks/kkiapay", opt=PUBLIC, status_code=200)
    async def kkiapay_webhook(self, bus: Bus, request: Request[Any, Any, Any]) -> WebhookResult:
        """KKiaPay events, proved by the x-kkiapay-secret header."""
        body = await request.body()
        return await bus.ask(
            HandleWebhook(provider="kkiapay", body=body, proof=request.headers.get("x-kkiapay-secret"))
        )


CONTROLLERS = [PaymentsController]
