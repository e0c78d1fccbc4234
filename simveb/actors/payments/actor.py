"""The payments actor: payables opened by PaymentRequested, attempts at FedaPay and KKiaPay, counter
payments, webhooks, refunds, invoices and the nightly reconciliation.

What is paid and how much always comes from the payable (the requester's frozen fee); a request only
picks the provider and the payer's phone. Provider statements are trusted only as the provider's API
answers them: a verified webhook (FedaPay signature, KKiaPay shared secret) only triggers a fetch of
the transaction, and `_settle` applies that answer under a lock of the payment row. A transaction
leaves `pending` once, so a redelivered or out-of-order webhook changes nothing; a provider amount or
currency other than the payable's is a failed payment; a second success for a paid payable is
refunded automatically and flagged.

Handlers that call a provider take no connection: they read and commit what they need in short
transactions and never hold a connection across an HTTP call or an ask (the receipt prefix comes
from the config actor, cached for a minute).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import httpx
import msgspec

from simveb.actors.config.messages import GetSetting
from simveb.actors.payments import store
from simveb.actors.payments.messages import (
    CancelPayment,
    ConfirmPayment,
    GetInvoice,
    GetPayment,
    HandleWebhook,
    Initiated,
    InitiatePayment,
    Invoice,
    KkiapayWidget,
    ListPendingTransactions,
    ListTransactions,
    Payment,
    PaymentDetail,
    PaymentFailed,
    PaymentRefunded,
    PaymentRequested,
    PaymentSucceeded,
    ReconcileLine,
    ReconcileTransaction,
    Refund,
    RefundPayment,
    RunReconciliation,
    Transaction,
    TransactionPage,
    WebhookResult,
)
from simveb.actors.payments.providers import ProviderError, ProviderRefused, ProviderTransaction
from simveb.actors.payments.providers import fedapay as fedapay_wire
from simveb.actors.payments.providers import kkiapay as kkiapay_wire
from simveb.actors.payments.providers.fedapay import FedaPay
from simveb.actors.payments.providers.kkiapay import KKiaPay
from simveb.audit import Audited
from simveb.bus import Actor, current_event_id, handler
from simveb.errors import BadRequest, Conflict, DomainError, Forbidden, Invalid, NotFound, Unavailable
from simveb.messages import Caller, decode_cursor, page

log = logging.getLogger("simveb.payments")
R = TypeVar("R")
PAID = ("succeeded", "partially_refunded", "refunded")
PREFIX_TTL_S = 60.0
DEFAULT_PREFIX = "SIMVEB-REC"
DEFAULT_HOUR = 2


class ReplayedError(DomainError):
    """A DomainError stored with an Idempotency-Key, raised again for a retry with that key."""

    def __init__(self, stored: dict[str, Any]) -> None:
        super().__init__(stored["detail"], code=stored["code"])
        self.status = stored["status"]  # type: ignore[misc]
        self.title = stored["title"]  # type: ignore[misc]


class WebhookRefused(BadRequest):
    code = "webhook_refused"


def _request_hash(operation: str, msg: Any) -> str:
    fields = {k: v for k, v in msgspec.to_builtins(msg).items() if k not in ("caller", "idempotency_key")}
    return hashlib.sha256(operation.encode() + b"\0" + msgspec.json.encode(fields)).hexdigest()


def _may_see(caller: Caller | None, payment: Payment) -> bool:
    if caller is None:
        return True
    return caller.user_id == payment.payer_id or caller.can("payments:read") or caller.can("payments:confirm")


class PaymentsActor(Audited, Actor):
    name = "payments"
    # No in-memory state but clients and a cache: correctness comes from row locks on payments.
    concurrency = 8

    async def on_start(self) -> None:
        s = self.settings.payments
        production = self.settings.is_production
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(s.provider_timeout_s, connect=min(5.0, s.provider_timeout_s)),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )
        self.fedapay = FedaPay(self.client, s.fedapay_url, s.secret("fedapay_secret_key", production=production))
        self.fedapay_webhook_secret = s.secret("fedapay_webhook_secret", production=production)
        self.kkiapay_secret = s.secret("kkiapay_secret", production=production)
        self.kkiapay_public_key = s.secret("kkiapay_public_key", production=production)
        self.kkiapay = KKiaPay(
            self.client,
            s.kkiapay_url,
            self.kkiapay_public_key,
            s.secret("kkiapay_private_key", production=production),
            self.kkiapay_secret,
        )
        self.callback_base = s.callback_base(self.settings.server)
        self._prefix: tuple[str, float] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._nightly = asyncio.create_task(self._nightly_loop(), name="payments:reconciliation")

    async def on_stop(self) -> None:
        self._nightly.cancel()
        for task in [self._nightly, *self._background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=self.bus.settings.shutdown_grace_s)
        await self.client.aclose()

    # --- helpers ------------------------------------------------------------------------------------

    async def _setting(self, key: str, default: Any) -> Any:
        try:
            return (await self.bus.ask(GetSetting(key=key))).value
        except NotFound:
            return default

    async def _receipt_prefix(self) -> str:
        now = time.monotonic()
        if self._prefix is None or now - self._prefix[1] > PREFIX_TTL_S:
            self._prefix = (str(await self._setting("payments.receipt_prefix", DEFAULT_PREFIX)), now)
        return self._prefix[0]

    async def _resolve(self, con: asyncpg.Connection, some_id: UUID, caller: Caller | None, *, lock: bool) -> Payment:
        """A payment by its id or by the id of what it pays for; 404 for one the caller may not see."""
        payment = await store.get_payment(con, some_id, lock=lock)
        if payment is None:
            row = await con.fetchval("SELECT id FROM payments.payments WHERE payable_id = $1 LIMIT 1", some_id)
            payment = await store.get_payment(con, row, lock=lock) if row else None
        if payment is None or not _may_see(caller, payment):
            raise NotFound("no such payment", code="payment_not_found")
        return payment

    async def _detail(self, con: asyncpg.Connection, payment_id: UUID) -> PaymentDetail:
        payment = await store.get_payment(con, payment_id)
        assert payment is not None
        return PaymentDetail(
            payment=payment,
            transactions=tuple(await store.transactions_of(con, payment_id)),
            refunds=tuple(await store.refunds_of(con, payment_id)),
        )

    async def _idempotent(self, operation: str, msg: Any, reply: type[R], work: Callable[[], Awaitable[R]]) -> R:
        """Stripe's Idempotency-Key: the first answer (or expected error) is replayed for the same key
        and request; the same key with another request is a 422; a key still in flight is a 409."""
        key: str | None = msg.idempotency_key
        if key is None:
            return await work()
        owner = msg.caller.sub
        digest = _request_hash(operation, msg)
        ttl = self.settings.payments.idempotency_ttl_h
        async with self.db.transaction() as con:
            stored = await store.claim_key(con, owner, key, operation, digest, ttl)
        if stored is not None:
            if stored.operation != operation or stored.request_hash != digest:
                raise Invalid("this Idempotency-Key was used with another request", code="idempotency_key_reused")
            if stored.status != "done":
                raise Conflict("a request with this Idempotency-Key is still in progress", code="idempotency_in_flight")
            if stored.error is not None:
                raise ReplayedError(stored.error)
            return msgspec.convert(stored.response, reply)
        try:
            result = await work()
        except DomainError as exc:
            if exc.status >= 500:  # a temporary failure: let the client retry with the same key
                async with self.db.transaction() as con:
                    await store.release_key(con, owner, key)
                raise
            error = {"status": exc.status, "code": exc.code, "detail": exc.detail, "title": exc.title}
            async with self.db.transaction() as con:
                await store.finish_key(con, owner, key, error=error)
            raise
        except BaseException:
            async with self.db.transaction() as con:
                await store.release_key(con, owner, key)
            raise
        async with self.db.transaction() as con:
            await store.finish_key(con, owner, key, response=msgspec.to_builtins(result))
        return result

    # --- payables -----------------------------------------------------------------------------------

    @handler
    async def requested(self, ev: PaymentRequested, con: asyncpg.Connection) -> None:
        if ev.amount_xof <= 0:
            log.error(
                "PaymentRequested for %s %s with amount %s ignored", ev.payable_kind, ev.payable_id, ev.amount_xof
            )
            return
        if ev.lines and sum(line.amount_xof for line in ev.lines) != ev.amount_xof:
            log.warning("fee lines of %s %s do not add up to %s", ev.payable_kind, ev.payable_id, ev.amount_xof)
        await store.open_payable(con, ev, current_event_id.get())

    # --- initiate -----------------------------------------------------------------------------------

    @handler
    async def initiate(self, msg: InitiatePayment) -> Initiated:
        return await self._idempotent("initiate", msg, Initiated, lambda: self._initiate(msg))

    async def _initiate(self, msg: InitiatePayment) -> Initiated:
        if msg.payment_id is None and msg.payable_id is None:
            raise Invalid("give payment_id or payable_id", code="payment_required")
        by = msg.caller.sub
        async with self.db.transaction() as con:
            if msg.payment_id is not None:
                # the id of the payment, or of what it pays for (the registration's id)
                payment = await store.get_payment(con, msg.payment_id, lock=True)
                if payment is None:
                    payment = await store.get_payment_by_payable(con, msg.payable_kind, msg.payment_id, lock=True)
            else:
                payment = await store.get_payment_by_payable(con, msg.payable_kind, msg.payable_id, lock=True)  # type: ignore[arg-type]
            # Only the payer starts a mobile money payment; anyone else sees nothing (404, not 403).
            if payment is None or payment.payer_id != msg.caller.user_id:
                raise NotFound("no such payment", code="payment_not_found")
            if payment.status in PAID:
                raise Conflict("this is paid already", code="already_paid")
            if payment.status != "pending":
                await store.set_payment_status(con, payment, "pending", by=by, reason=f"new attempt ({msg.provider})")
            txn = await store.insert_transaction(
                con,
                payment_id=payment.id,
                provider=msg.provider,
                amount_xof=payment.amount_xof,
                created_by=by,
                phone=msg.phone,
            )
        if msg.provider == "kkiapay":
            widget = KkiapayWidget(
                key=self.kkiapay_public_key,
                amount=payment.amount_xof,
                reason=payment.description or payment.reference,
                phone=msg.phone,
                sandbox=not self.settings.is_production,
                data=str(payment.id),
            )
            async with self.db.connection() as con:
                fresh = await store.get_payment(con, payment.id)
            return Initiated(payment=fresh or payment, transaction=txn, widget=widget)
        try:
            remote = await self.fedapay.create(
                amount_xof=payment.amount_xof,
                description=payment.description or f"SIMVEB {payment.reference}",
                callback_url=f"{self.callback_base}/api/payments/webhooks/fedapay",
                payment_id=str(payment.id),
                phone=msg.phone,
                reference=payment.reference,
            )
            _token, url = await self.fedapay.checkout(remote.ref)
        except (ProviderError, ProviderRefused) as exc:
            log.warning("FedaPay transaction for payment %s not created: %s", payment.id, exc)
            async with self.db.transaction() as con:
                await store.settle_transaction(
                    con, txn.id, "failed", provider_status=None, failure_reason=f"provider_unavailable: {exc}"
                )
            raise Unavailable(
                "FedaPay cannot take the payment now; try again shortly", code="provider_unavailable"
            ) from None
        async with self.db.transaction() as con:
            txn = await store.attach_provider(
                con, txn.id, provider_ref=remote.ref, checkout_url=url, status=remote.status
            )
            fresh = await store.get_payment(con, payment.id)
        return Initiated(payment=fresh or payment, transaction=txn, checkout_url=url)

    # --- reads --------------------------------------------------------------------------------------

    @handler
    async def get_payment(self, msg: GetPayment, con: asyncpg.Connection) -> PaymentDetail:
        payment = await self._resolve(con, msg.payment_id, msg.caller, lock=False)
        return await self._detail(con, payment.id)

    @handler
    async def list_transactions(self, msg: ListTransactions, con: asyncpg.Connection) -> TransactionPage:
        if msg.caller.can("payments:read"):
            payer = msg.payer_id
        else:
            payer = msg.caller.user_id
            if payer is None or (msg.payer_id is not None and msg.payer_id != payer):
                return TransactionPage(items=[])
        after = decode_cursor(msg.cursor, dt.datetime, UUID)
        items = await store.list_transactions(
            con,
            payer_id=payer,
            status=msg.status,
            provider=msg.provider,
            payment_id=msg.payment_id,
            flagged=msg.flagged,
            after=after,
            limit=msg.limit + 1,
        )
        return page(TransactionPage, items, msg.limit, lambda t: (t.created_at, t.id))

    @handler
    async def get_invoice(self, msg: GetInvoice, con: asyncpg.Connection) -> Invoice:
        invoice = await store.get_invoice(con, msg.invoice_id)
        if invoice is None:
            raise NotFound("no such invoice", code="invoice_not_found")
        c = msg.caller
        if c is not None and c.user_id != invoice.payer_id and not c.can("payments:read"):
            raise NotFound("no such invoice", code="invoice_not_found")
        return invoice

    # --- confirm: counter payments, or "verify my payment now" --------------------------------------

    @handler
    async def confirm(self, msg: ConfirmPayment) -> PaymentDetail:
        return await self._idempotent("confirm", msg, PaymentDetail, lambda: self._confirm(msg))

    async def _confirm(self, msg: ConfirmPayment) -> PaymentDetail:
        if msg.method is not None:
            return await self._counter(msg)
        async with self.db.connection() as con:
            payment = await self._resolve(con, msg.payment_id, msg.caller, lock=False)
            attempts = await store.transactions_of(con, payment.id)
        by = msg.caller.sub
        if msg.transaction_id is not None:
            # The KKiaPay widget's transactionId: only the status API's answer counts.
            try:
                remote = await self.kkiapay.status(msg.transaction_id)
            except ProviderError as exc:
                raise Unavailable(f"KKiaPay cannot be reached: {exc}", code="provider_unavailable") from None
            except ProviderRefused:
                raise Invalid("KKiaPay does not know this transaction", code="unknown_transaction") from None
            if remote.outcome == "unknown":
                raise Invalid(f"KKiaPay says {remote.status} for this transaction", code="unknown_transaction")
            if remote.state is not None and remote.state != str(payment.id):
                raise Invalid("this KKiaPay transaction was made for another payment", code="transaction_mismatch")
            await self._apply("kkiapay", remote, by=by, payment_hint=payment.id)
        else:
            for attempt in attempts:
                if attempt.status == "pending" and attempt.provider == "fedapay" and attempt.provider_ref:
                    try:
                        remote = await self.fedapay.fetch(attempt.provider_ref)
                    except (ProviderError, ProviderRefused) as exc:
                        raise Unavailable(f"FedaPay cannot be reached: {exc}", code="provider_unavailable") from None
                    await self._settle(attempt.id, remote, by=by)
        async with self.db.connection() as con:
            return await self._detail(con, payment.id)

    async def _counter(self, msg: ConfirmPayment) -> PaymentDetail:
        if not msg.caller.can("payments:confirm"):
            raise Forbidden("recording a counter payment needs payments:confirm", code="missing_permission")
        if not msg.receipt_reference:
            raise Invalid("a counter payment needs its receipt_reference", code="receipt_reference_required")
        prefix = await self._receipt_prefix()
        by = msg.caller.sub
        async with self.db.transaction() as con:
            payment = await self._resolve(con, msg.payment_id, msg.caller, lock=True)
            if payment.status in PAID:
                raise Conflict("this is paid already", code="already_paid")
            if await store.find_transaction(con, msg.method, msg.receipt_reference):  # type: ignore[arg-type]
                raise Conflict("this receipt reference was recorded already", code="duplicate_receipt")
            txn = await store.insert_transaction(
                con,
                payment_id=payment.id,
                provider=msg.method,  # type: ignore[arg-type]
                amount_xof=payment.amount_xof,
                created_by=by,
                provider_ref=msg.receipt_reference,
                status="succeeded",
            )
            await self._succeed(con, payment, txn, prefix=prefix, by=by, reason=f"counter payment ({msg.method})")
            log.info("counter payment %s recorded by %s for payment %s", msg.receipt_reference, by, payment.id)
            return await self._detail(con, payment.id)

    # --- cancel -------------------------------------------------------------------------------------

    @handler
    async def cancel(self, msg: CancelPayment) -> PaymentDetail:
        return await self._idempotent("cancel", msg, PaymentDetail, lambda: self._cancel(msg))

    async def _cancel(self, msg: CancelPayment) -> PaymentDetail:
        by = msg.caller.sub
        async with self.db.transaction() as con:
            payment = await self._resolve(con, msg.payment_id, msg.caller, lock=True)
            if payment.status in PAID:
                raise Conflict("a paid payment is refunded, not cancelled", code="already_paid")
            if payment.status == "cancelled":
                return await self._detail(con, payment.id)
            await store.cancel_pending(con, payment.id, msg.reason or "cancelled by the payer")
            await store.set_payment_status(con, payment, "cancelled", by=by, reason=msg.reason)
            await self.audit(con, by, payment.id, "payment_cancelled", reason=msg.reason)
            await self.emit(
                con,
                PaymentFailed(
                    payment_id=payment.id,
                    payable_id=payment.payable_id,
                    payable_kind=payment.payable_kind,
                    reason="cancelled",
                ),
            )
            return await self._detail(con, payment.id)

    # --- refunds ------------------------------------------------------------------------------------

    @handler
    async def refund(self, msg: RefundPayment) -> Refund:
        return await self._idempotent("refund", msg, Refund, lambda: self._refund(msg))

    async def _refund(self, msg: RefundPayment) -> Refund:
        if not msg.caller.can("payments:refund"):
            raise Forbidden("refunds need payments:refund", code="missing_permission")
        by = msg.caller.sub
        async with self.db.transaction() as con:
            payment = await self._resolve(con, msg.payment_id, msg.caller, lock=True)
            if payment.status not in ("succeeded", "partially_refunded") or payment.paid_transaction_id is None:
                raise Conflict(f"a {payment.status} payment cannot be refunded", code="not_refundable")
            remaining = payment.amount_xof - payment.refunded_xof - await store.refund_in_flight(con, payment.id)
            amount = msg.amount_xof if msg.amount_xof is not None else remaining
            if remaining <= 0:
                raise Conflict("everything paid is refunded or being refunded", code="nothing_to_refund")
            if amount > remaining:
                raise Invalid(f"at most {remaining} XOF can still be refunded", code="refund_exceeds_paid")
            txn = await store.get_transaction(con, payment.paid_transaction_id)
            assert txn is not None
            if txn.provider == "kkiapay" and amount != payment.amount_xof:
                raise Invalid("KKiaPay refunds whole transactions only", code="partial_refund_unsupported")
            refund = await store.insert_refund(
                con, payment_id=payment.id, transaction_id=txn.id, amount_xof=amount, reason=msg.reason, requested_by=by
            )
            await self.audit(
                con, by, payment.id, "refund_requested", refund_id=refund.id, amount_xof=amount, reason=msg.reason
            )
        try:
            provider_ref = await self._provider_refund(txn, amount)
        except (ProviderError, ProviderRefused) as exc:
            log.warning("refund %s of payment %s failed at %s: %s", refund.id, payment.id, txn.provider, exc)
            async with self.db.transaction() as con:
                await store.settle_refund(con, refund.id, "failed", error=str(exc))
                await self.audit(con, by, payment.id, "refund_failed", refund_id=refund.id, error=str(exc)[:300])
            if isinstance(exc, ProviderRefused):
                raise Conflict(f"the provider refused the refund: {exc}", code="refund_refused") from None
            raise Unavailable(f"the provider cannot refund now: {exc}", code="provider_unavailable") from None
        async with self.db.transaction() as con:
            payment = await self._resolve(con, payment.id, None, lock=True)
            done = await store.settle_refund(con, refund.id, "succeeded", provider_ref=provider_ref)
            payment = await store.add_refunded(con, payment, amount, by=by, reason=msg.reason or "refund")
            await self.audit(
                con, by, payment.id, "refunded", refund_id=refund.id, amount_xof=amount, status=payment.status
            )
            await self.emit(
                con,
                PaymentRefunded(
                    payment_id=payment.id,
                    payable_id=payment.payable_id,
                    payable_kind=payment.payable_kind,
                    amount_xof=amount,
                    refunded_total_xof=payment.refunded_xof,
                    full=payment.status == "refunded",
                ),
            )
        return done

    async def _provider_refund(self, txn: Transaction, amount: int) -> str | None:
        """Give the money back where it came from; counter payments are paid back at the counter."""
        if txn.provider == "fedapay":
            remote = await self.fedapay.refund(txn.provider_ref or "", amount)
            return remote.ref
        if txn.provider == "kkiapay":
            remote = await self.kkiapay.revert(txn.provider_ref or "")
            return remote.ref
        return None

    async def _auto_refund(self, refund: Refund) -> None:
        async with self.db.connection() as con:
            txn = await store.get_transaction(con, refund.transaction_id)
        assert txn is not None
        try:
            ref = await self._provider_refund(txn, refund.amount_xof)
        except (ProviderError, ProviderRefused) as exc:
            log.error("automatic refund %s of double payment %s failed: %s", refund.id, txn.id, exc)
            async with self.db.transaction() as con:
                await store.settle_refund(con, refund.id, "failed", error=str(exc))
                await self.audit(con, "system", refund.payment_id, "refund_failed", refund_id=refund.id, automatic=True)
            return
        async with self.db.transaction() as con:
            await store.settle_refund(con, refund.id, "succeeded", provider_ref=ref)
            await self.audit(
                con,
                "system",
                refund.payment_id,
                "refunded",
                refund_id=refund.id,
                amount_xof=refund.amount_xof,
                automatic=True,
            )

    # --- settling what a provider says --------------------------------------------------------------

    async def _succeed(
        self, con: asyncpg.Connection, payment: Payment, txn: Transaction, *, prefix: str, by: str, reason: str
    ) -> None:
        invoice_id, number = await store.issue_invoice(
            con, payment, prefix=prefix, provider=txn.provider, provider_reference=txn.provider_ref
        )
        await store.set_payment_status(
            con,
            payment,
            "succeeded",
            by=by,
            reason=reason,
            provider=txn.provider,
            provider_reference=txn.provider_ref,
            paid_transaction_id=txn.id,
            paid_at=dt.datetime.now(dt.UTC),
        )
        await self.audit(
            con,
            by,
            payment.id,
            "payment_confirmed",
            provider=txn.provider,
            provider_reference=txn.provider_ref,
            transaction_id=txn.id,
            amount_xof=payment.amount_xof,
            invoice_number=number,
            reason=reason,
        )
        await self.emit(
            con,
            PaymentSucceeded(
                payment_id=payment.id,
                payable_id=payment.payable_id,
                payable_kind=payment.payable_kind,
                payer_id=payment.payer_id,
                amount_xof=payment.amount_xof,
                provider=txn.provider,
                invoice_id=invoice_id,
                invoice_number=number,
            ),
        )

    async def _apply(
        self, provider: str, remote: ProviderTransaction, *, by: str, payment_hint: UUID | None = None
    ) -> str:
        """Settle our transaction matching what the provider's API said."""
        async with self.db.transaction() as con:
            txn = await store.find_transaction(con, provider, remote.ref)
            if txn is None and provider == "kkiapay":
                # The widget pays before we know its id: bind it to an open KKiaPay attempt of the payment
                # it was made for (the id the payer confirmed, or the `state` we gave the widget).
                target = payment_hint
                if target is None and remote.state:
                    with contextlib.suppress(ValueError):
                        target = UUID(remote.state)
                payment = await store.get_payment(con, target, lock=True) if target else None
                if payment is None:
                    return "unknown_transaction"
                row = await con.fetchval(
                    "SELECT id FROM payments.transactions WHERE payment_id = $1 AND provider = 'kkiapay'"
                    " AND provider_ref IS NULL AND status = 'pending' ORDER BY created_at LIMIT 1",
                    payment.id,
                )
                if row is not None:
                    txn = await store.attach_provider(
                        con, row, provider_ref=remote.ref, checkout_url=None, status=remote.status
                    )
                else:
                    txn = await store.insert_transaction(
                        con,
                        payment_id=payment.id,
                        provider="kkiapay",
                        amount_xof=payment.amount_xof,
                        created_by=by,
                        provider_ref=remote.ref,
                    )
        if txn is None:
            log.warning("%s transaction %s is not one of ours", provider, remote.ref)
            return "unknown_transaction"
        return await self._settle(txn.id, remote, by=by)

    async def _settle(self, transaction_id: UUID, remote: ProviderTransaction, *, by: str) -> str:
        prefix = await self._receipt_prefix()
        auto_refund: Refund | None = None
        async with self.db.transaction() as con:
            txn = await store.get_transaction(con, transaction_id)
            assert txn is not None
            payment = await store.get_payment(con, txn.payment_id, lock=True)
            assert payment is not None
            txn = await store.get_transaction(con, transaction_id)  # re-read under the payment's lock
            assert txn is not None
            # A transaction leaves pending once. A cancelled attempt that the provider reports paid
            # still took the payer's money, so it is settled like any success.
            if txn.status != "pending" and not (txn.status == "cancelled" and remote.outcome == "approved"):
                return "unchanged"
            outcome = remote.outcome
            if outcome == "pending":
                if txn.provider_status != remote.status:
                    await store.settle_transaction(con, txn.id, "pending", provider_status=remote.status)
                return "still_pending"
            if outcome == "unknown":
                log.warning("%s says %r for transaction %s: left pending", txn.provider, remote.status, txn.id)
                return "unknown_status"
            if outcome == "approved":
                if remote.amount_xof != txn.amount_xof or (remote.currency or "XOF") != txn.currency:
                    log.warning(
                        "payment %s: %s reports %s %s for transaction %s, the payable is %s %s: failed",
                        payment.id,
                        txn.provider,
                        remote.amount_xof,
                        remote.currency,
                        remote.ref,
                        txn.amount_xof,
                        txn.currency,
                    )
                    await store.settle_transaction(
                        con,
                        txn.id,
                        "failed",
                        provider_status=remote.status,
                        failure_reason=f"amount_mismatch: provider {remote.amount_xof} {remote.currency}",
                    )
                    await self._fail_if_last(con, payment, txn, "amount_mismatch", by)
                    await self.audit(
                        con,
                        by,
                        payment.id,
                        "amount_mismatch",
                        transaction_id=txn.id,
                        provider=txn.provider,
                        reported_xof=remote.amount_xof,
                        expected_xof=txn.amount_xof,
                    )
                    return "amount_mismatch"
                if payment.status in PAID:
                    await store.settle_transaction(
                        con, txn.id, "succeeded", provider_status=remote.status, flag_reason="double_payment"
                    )
                    auto_refund = await store.insert_refund(
                        con,
                        payment_id=payment.id,
                        transaction_id=txn.id,
                        amount_xof=txn.amount_xof,
                        reason="second payment of a paid payable",
                        requested_by="system",
                        automatic=True,
                    )
                    log.warning("payment %s paid twice (transaction %s): refunding automatically", payment.id, txn.id)
                    await self.audit(
                        con, by, payment.id, "double_payment", transaction_id=txn.id, refund_id=auto_refund.id
                    )
                    outcome = "double_payment"
                else:
                    txn = await store.settle_transaction(con, txn.id, "succeeded", provider_status=remote.status)
                    await self._succeed(
                        con, payment, txn, prefix=prefix, by=by, reason=f"{txn.provider} {remote.status}"
                    )
                    return "succeeded"
            elif outcome in ("declined", "cancelled"):
                status = "failed" if outcome == "declined" else "cancelled"
                await store.settle_transaction(
                    con, txn.id, status, provider_status=remote.status, failure_reason=outcome
                )
                await self._fail_if_last(con, payment, txn, outcome, by)
                return outcome
        if auto_refund is not None:
            await self._auto_refund(auto_refund)
        return outcome

    async def _fail_if_last(
        self, con: asyncpg.Connection, payment: Payment, txn: Transaction, reason: str, by: str
    ) -> None:
        """A pending payment whose last open attempt ended badly fails (it may be tried again)."""
        if payment.status != "pending" or await store.pending_count(con, payment.id, other_than=txn.id):
            return
        to = "cancelled" if reason == "cancelled" else "failed"
        await store.set_payment_status(con, payment, to, by=by, reason=reason)
        await self.emit(
            con,
            PaymentFailed(
                payment_id=payment.id, payable_id=payment.payable_id, payable_kind=payment.payable_kind, reason=reason
            ),
        )

    # --- webhooks -----------------------------------------------------------------------------------

    @handler
    async def webhook(self, msg: HandleWebhook) -> WebhookResult:
        if msg.provider == "fedapay":
            return await self._fedapay_webhook(msg)
        return await self._kkiapay_webhook(msg)

    async def _receipt(
        self,
        provider: str,
        msg: HandleWebhook,
        *,
        error: str | None = None,
        event_type: str | None = None,
        object_id: str | None = None,
    ) -> int:
        """Record a delivery: verified unless `error` says why not. FedaPay's signature header is kept;
        KKiaPay's header is the secret itself and is never stored."""
        async with self.db.transaction() as con:
            return await store.insert_receipt(
                con,
                provider=provider,
                signature=msg.proof if provider == "fedapay" else None,
                raw_body=msg.body,
                verified=error is None,
                verification_error=error,
                event_type=event_type,
                object_id=object_id,
            )

    async def _outcome(self, receipt_id: int, outcome: str) -> WebhookResult:
        async with self.db.transaction() as con:
            await store.set_receipt_outcome(con, receipt_id, outcome)
        return WebhookResult(receipt_id=receipt_id, outcome=outcome)

    async def _fedapay_webhook(self, msg: HandleWebhook) -> WebhookResult:
        try:
            fedapay_wire.verify_signature(
                msg.proof, msg.body, self.fedapay_webhook_secret, tolerance_s=self.settings.payments.webhook_tolerance_s
            )
        except fedapay_wire.SignatureError as exc:
            await self._receipt("fedapay", msg, error=str(exc))
            log.warning("FedaPay webhook refused: %s", exc)
            raise WebhookRefused("webhook signature refused") from None
        try:
            kind, object_id = fedapay_wire.event_of(msg.body)
        except (ValueError, msgspec.DecodeError) as exc:
            rid = await self._receipt("fedapay", msg)
            return await self._outcome(rid, f"ignored: {exc}")
        rid = await self._receipt("fedapay", msg, event_type=kind, object_id=object_id)
        if not kind.startswith("transaction."):
            return await self._outcome(rid, "ignored")
        try:
            remote = await self.fedapay.fetch(object_id)
        except (ProviderError, ProviderRefused) as exc:
            await self._outcome(rid, f"refetch_failed: {exc}")
            # 503: FedaPay delivers again later; reconciliation catches it otherwise.
            raise Unavailable("cannot verify the transaction with FedaPay now", code="provider_unavailable") from None
        return await self._outcome(rid, await self._apply("fedapay", remote, by="fedapay-webhook"))

    async def _kkiapay_webhook(self, msg: HandleWebhook) -> WebhookResult:
        if not kkiapay_wire.secret_matches(msg.proof, self.kkiapay_secret):
            await self._receipt("kkiapay", msg, error="missing secret" if not msg.proof else "secret does not match")
            log.warning("KKiaPay webhook refused: wrong secret")
            raise WebhookRefused("webhook secret refused") from None
        try:
            ref = kkiapay_wire.transaction_id_of(msg.body)
        except (ValueError, msgspec.DecodeError) as exc:
            rid = await self._receipt("kkiapay", msg)
            return await self._outcome(rid, f"ignored: {exc}")
        kind = None
        with contextlib.suppress(Exception):
            kind = str(msgspec.json.decode(msg.body).get("event") or "") or None
        rid = await self._receipt("kkiapay", msg, event_type=kind, object_id=ref)
        try:
            remote = await self.kkiapay.status(ref)
        except (ProviderError, ProviderRefused) as exc:
            await self._outcome(rid, f"refetch_failed: {exc}")
            raise Unavailable("cannot verify the transaction with KKiaPay now", code="provider_unavailable") from None
        return await self._outcome(rid, await self._apply("kkiapay", remote, by="kkiapay-webhook"))

    # --- reconciliation -----------------------------------------------------------------------------

    @handler
    async def pending(self, msg: ListPendingTransactions, con: asyncpg.Connection) -> list[UUID]:
        return await store.pending_older_than(con, msg.older_than_s, msg.limit)

    @handler
    async def reconcile_one(self, msg: ReconcileTransaction) -> ReconcileLine:
        return await self._reconcile(msg.transaction_id, msg.by)

    async def _reconcile(self, transaction_id: UUID, by: str) -> ReconcileLine:
        async with self.db.connection() as con:
            txn = await store.get_transaction(con, transaction_id)
        if txn is None:
            raise NotFound("no such transaction", code="transaction_not_found")
        line = {
            "transaction_id": txn.id,
            "payment_id": txn.payment_id,
            "provider": txn.provider,
            "provider_ref": txn.provider_ref,
            "before": txn.status,
        }
        if txn.status != "pending" or not txn.provider_ref:
            return ReconcileLine(**line, after=txn.status, matched=True, note="nothing to verify")
        try:
            if txn.provider == "fedapay":
                remote = await self.fedapay.fetch(txn.provider_ref)
            else:
                remote = await self.kkiapay.status(txn.provider_ref)
        except (ProviderError, ProviderRefused) as exc:
            return ReconcileLine(**line, after=txn.status, matched=False, note=f"provider error: {exc}")
        outcome = await self._settle(txn.id, remote, by=by)
        async with self.db.connection() as con:
            after = await store.get_transaction(con, txn.id)
        matched = outcome in ("succeeded", "declined", "cancelled", "still_pending", "unchanged")
        return ReconcileLine(
            **line,
            provider_status=remote.status,
            after=after.status if after else txn.status,
            matched=matched,
            note=outcome,
        )

    @handler
    async def run_reconciliation(self, msg: RunReconciliation) -> list[ReconcileLine]:
        return await self._reconcile_all(msg.older_than_s, msg.by)

    async def _reconcile_all(self, older_than_s: int | None, by: str) -> list[ReconcileLine]:
        age = self.settings.payments.reconcile_after_s if older_than_s is None else older_than_s
        async with self.db.connection() as con:
            ids = await store.pending_older_than(con, age, 10_000)
            retries = await store.pending_automatic_refunds(con)
        lines = [await self._reconcile(tid, by) for tid in ids]
        for refund in retries:
            await self._auto_refund(refund)
        return lines

    async def _nightly_loop(self) -> None:
        """Once a day at payments.reconciliation_hour (UTC), in one process only (a row per day)."""
        while True:
            try:
                hour = int(await self._setting("payments.reconciliation_hour", DEFAULT_HOUR)) % 24
            except Exception:
                hour = DEFAULT_HOUR
            now = dt.datetime.now(dt.UTC)
            at = now.replace(hour=hour, minute=0, second=0, microsecond=0)
            if at <= now:
                at += dt.timedelta(days=1)
            await asyncio.sleep((at - now).total_seconds())
            try:
                day = dt.datetime.now(dt.UTC).date()
                async with self.db.transaction() as con:
                    if not await store.claim_run(con, day):
                        continue
                    await store.purge_keys(con, self.settings.payments.idempotency_ttl_h)
                lines = await self._reconcile_all(None, "reconciliation")
                report = [msgspec.to_builtins(x) for x in lines if not x.matched]
                async with self.db.transaction() as con:
                    await store.finish_run(con, day, {"checked": len(lines), "unmatched": report})
                log.info("reconciliation: %d pending transaction(s) checked, %d unmatched", len(lines), len(report))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("nightly reconciliation failed")
