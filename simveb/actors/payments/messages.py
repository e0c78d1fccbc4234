"""The payments service's contract: what other actors send it and the events it publishes.

Any actor that needs something paid emits `PaymentRequested` (through its outbox, in the transaction
that makes the thing payable); payments opens a payable for exactly that amount. Payments never asks
the actor that requested the payment: it answers with `PaymentSucceeded`, `PaymentFailed` and
`PaymentRefunded`, which the requester consumes.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from simveb.messages import Ask, Caller, Event, Record


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

    invoice_id: UUID
    caller: Caller | None = None
