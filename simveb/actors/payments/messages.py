"""The payments service's contract: what other actors send it and the events it publishes.

Any actor that needs something paid emits `PaymentRequested` (through its outbox, in the transaction
that makes the thing payable); payments opens a payable for exactly that amount. Payments never asks
the actor that requested the payment: it answers with `PaymentSucceeded`, `PaymentFailed` and
`PaymentRefunded`, which the requester consumes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec

from simveb.errors import BadRequest, Conflict, Forbidden, Invalid, NotFound
from simveb.messages import PAGE_LIMIT_DEFAULT, Ask, Caller, Cursor, Event, Limit, Page, Record

Provider = Literal["fedapay", "kkiapay"]
CounterMethod = Literal["cash", "bank"]
PaymentStatus = Literal["pending", "succeeded", "failed", "cancelled", "partially_refunded", "refunded"]
TransactionStatus = Literal["pending", "succeeded", "failed", "cancelled"]
Phone = Annotated[str, msgspec.Meta(pattern=r"^\+?[0-9]{8,15}$")]
IdempotencyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
ReceiptReference = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Reason = Annotated[str, msgspec.Meta(max_length=1000)]


class FeeLine(Record):
    """One line of a fee breakdown, frozen when the payable was requested (integer XOF)."""

    code: str
    label: str
    amount_xof: int


class PaymentRequested(Event):
    """Emitted by an actor that needs something paid; payments opens a payable for it (idempotent by
    (payable_kind, payable_id))."""

    payable_id: UUID  # the thing paid for, e.g. a registration request id
    payable_kind: str  # "registration", ...
    reference: str  # shown to the payer and on the invoice, e.g. the request number
    payer_id: UUID  # the user who must pay
    amount_xof: int
    lines: tuple[FeeLine, ...] = ()
    description: str = ""


class PaymentSucceeded(Event):
    payment_id: UUID
    payable_id: UUID
    payable_kind: str
    payer_id: UUID
    amount_xof: int
    provider: str  # fedapay | kkiapay | counter
    invoice_id: UUID | None = None
    invoice_number: str | None = None


class PaymentFailed(Event):
    payment_id: UUID
    payable_id: UUID
    payable_kind: str
    reason: str


class PaymentRefunded(Event):
    payment_id: UUID
    payable_id: UUID
    payable_kind: str
    amount_xof: int  # this refund
    refunded_total_xof: int  # all refunds of the payment so far
    full: bool


class Invoice(Record):
    id: UUID
    number: str
    payment_id: UUID
    payable_id: UUID
    payable_kind: str
    reference: str
    payer_id: UUID
    issued_at: datetime
    lines: tuple[FeeLine, ...]
    total_xof: int
    provider: str
    provider_reference: str | None = None


class GetInvoice(Ask[Invoice]):
    """An invoice by id; `caller` None is the system (documents rendering a receipt)."""

    errors = (NotFound,)

    invoice_id: UUID
    caller: Caller | None = None


# --- replies ------------------------------------------------------------------------------------------


class Payment(Record):
    """What one payable costs and where its payment stands (amounts in integer XOF)."""

    id: UUID
    payable_id: UUID
    payable_kind: str
    reference: str
    payer_id: UUID
    amount_xof: int
    currency: str = "XOF"
    lines: tuple[FeeLine, ...] = ()
    description: str = ""
    status: PaymentStatus
    provider: str | None = None
    provider_reference: str | None = None
    paid_transaction_id: UUID | None = None
    paid_at: datetime | None = None
    refunded_xof: int = 0
    invoice_id: UUID | None = None
    invoice_number: str | None = None
    created_at: datetime
    updated_at: datetime


class Transaction(Record):
    """One attempt at a provider (or one counter payment) for a payment."""

    id: UUID
    payment_id: UUID
    provider: str
    provider_ref: str | None = None
    status: TransactionStatus
    amount_xof: int
    currency: str = "XOF"
    phone: str | None = None
    checkout_url: str | None = None
    provider_status: str | None = None
    failure_reason: str | None = None
    flagged: bool = False
    flag_reason: str | None = None
    created_by: str
    created_at: datetime
    settled_at: datetime | None = None
    # filled in lists, so a page of transactions says what each was for
    reference: str | None = None
    payer_id: UUID | None = None


class Refund(Record):
    id: UUID
    payment_id: UUID
    transaction_id: UUID
    amount_xof: int
    status: Literal["pending", "succeeded", "failed"]
    automatic: bool = False
    reason: str = ""
    provider_ref: str | None = None
    error: str | None = None
    requested_by: str
    created_at: datetime
    settled_at: datetime | None = None


class PaymentDetail(Record):
    payment: Payment
    transactions: tuple[Transaction, ...] = ()
    refunds: tuple[Refund, ...] = ()


class KkiapayWidget(Record):
    """What the KKiaPay widget needs in the browser; the payer then confirms with its transactionId."""

    key: str
    amount: int
    reason: str
    phone: str | None = None
    sandbox: bool
    data: str  # our payment id, given back by the status API as `state`


class Initiated(Record):
    payment: Payment
    transaction: Transaction
    checkout_url: str | None = None  # FedaPay hosted checkout page
    widget: KkiapayWidget | None = None


class TransactionPage(Page[Transaction]):
    """Transactions, newest first."""

    items: list[Transaction]


class WebhookResult(Record):
    receipt_id: int
    outcome: str


class ReconcileLine(Record):
    """What reconciliation found for one pending transaction."""

    transaction_id: UUID
    payment_id: UUID
    provider: str
    provider_ref: str | None = None
    before: str
    provider_status: str | None = None
    after: str
    matched: bool  # False: the provider said something we could not settle (amount, unknown, error)
    note: str = ""


# --- requests -----------------------------------------------------------------------------------------


class InitiatePayment(Ask[Initiated]):
    """Start paying an open payable of the caller with a provider; the amount is the payable's."""

    errors = (BadRequest, NotFound, Conflict, Invalid)

    caller: Caller
    provider: Provider
    payment_id: UUID | None = None
    payable_id: UUID | None = None
    payable_kind: str = "registration"
    phone: Phone | None = None
    idempotency_key: IdempotencyKey | None = None


class GetPayment(Ask[PaymentDetail]):
    """One payment with its attempts and refunds: the payer's own, or any with payments:read."""

    errors = (NotFound,)

    caller: Caller
    payment_id: UUID


class ListTransactions(Ask[TransactionPage]):
    """The caller's own transactions, or everyone's with payments:read; newest first."""

    caller: Caller
    status: TransactionStatus | None = None
    provider: str | None = None
    payment_id: UUID | None = None
    payer_id: UUID | None = None
    flagged: bool | None = None
    cursor: Cursor | None = None
    limit: Limit = PAGE_LIMIT_DEFAULT


class ConfirmPayment(Ask[PaymentDetail]):
    """Either the payer asks us to verify a provider payment now (the KKiaPay widget's transactionId,
    or a FedaPay checkout just finished), or an agent with payments:confirm records a counter payment
    (`method` and `receipt_reference`)."""

    errors = (BadRequest, Forbidden, NotFound, Conflict, Invalid)

    caller: Caller
    payment_id: UUID
    transaction_id: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    method: CounterMethod | None = None
    receipt_reference: ReceiptReference | None = None
    idempotency_key: IdempotencyKey | None = None


class CancelPayment(Ask[PaymentDetail]):
    """The payer (or an agent) gives up the pending attempts; a cancelled payment may be tried again."""

    errors = (BadRequest, NotFound, Conflict, Invalid)

    caller: Caller
    payment_id: UUID
    reason: Reason = ""
    idempotency_key: IdempotencyKey | None = None


class RefundPayment(Ask[Refund]):
    """Refund (part of) a succeeded payment through its provider (payments:refund); None = the rest."""

    errors = (BadRequest, Forbidden, NotFound, Conflict, Invalid)

    caller: Caller
    payment_id: UUID
    amount_xof: Annotated[int, msgspec.Meta(ge=1)] | None = None
    reason: Reason = ""
    idempotency_key: IdempotencyKey | None = None


class HandleWebhook(Ask[WebhookResult]):
    """A provider webhook as received: raw body bytes and the proving header (signature or secret)."""

    errors = (BadRequest, NotFound)

    provider: Provider
    body: bytes
    proof: str | None = None


class ListPendingTransactions(Ask[list[UUID]]):
    """Pending provider transactions created more than `older_than_s` ago, oldest first."""

    older_than_s: Annotated[int, msgspec.Meta(ge=0)]
    limit: Annotated[int, msgspec.Meta(ge=1)] = 10_000


class ReconcileTransaction(Ask[ReconcileLine]):
    """Ask the provider where one pending transaction stands and settle it."""

    errors = (NotFound,)

    transaction_id: UUID
    by: str = "reconciliation"


class RunReconciliation(Ask[list[ReconcileLine]]):
    """Reconcile every pending transaction older than `older_than_s` (None = the setting)."""

    errors = (NotFound,)

    older_than_s: int | None = None
    by: str = "reconciliation"
