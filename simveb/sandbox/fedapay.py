"""FedaPay simulator (sandbox only): the transactions API, a hosted checkout page, signed webhooks.

API (under /sandbox/fedapay, Bearer secret key): `POST /v1/transactions`, `POST
/v1/transactions/{id}/token` (answers the checkout URL), `GET /v1/transactions/{id}`, `POST
/v1/transactions/{id}/refund` {amount}; objects wrapped as `{"v1/transaction": {...}}`.
`GET /checkout/{token}` is the page a person sees: amount, description, "Approuver" and "Refuser"
(and "Annuler"). The choice sets the transaction's status and sends a `transaction.approved` /
`.declined` / `.canceled` webhook, signed `X-FEDAPAY-SIGNATURE: t=..,s=..` with the webhook secret,
to the transaction's callback URL (or the `url` set by control), retried until a 2xx.

Test controls: `POST /fedapay/_control` {"api": sms-like Control (fail, slow, garbage), "webhooks":
WebhookControl (drop, delay, duplicates, hold/reorder, url), "amount_override", "currency_override"
(what GET answers, to play a provider reporting another amount)}, `POST /fedapay/_flush` (send held
webhooks, newest first), `POST /fedapay/_send` {transaction_id, type} (send one event now),
`POST /fedapay/_status` {transaction_id, status} (change a status silently, e.g. an abandoned
checkout expiring), `GET /fedapay/_state` (transactions, requests, webhook deliveries).

Secrets are those of the app's settings when mounted in it, else the development defaults, so the
simulator and a development server agree without configuration.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import itertools
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import MediaType, Request, Response, get, post

from simveb.config import PaymentsSettings, Settings
from simveb.sandbox.sms import Behaviour, Control
from simveb.sandbox.webhooks import WebhookControl, WebhookSender

STATUS_EVENTS = {
    "approved": "transaction.approved",
    "declined": "transaction.declined",
    "canceled": "transaction.canceled",
}


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """FedaPay's signature header, computed here independently of our client's verifier."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},s={mac}"


class SimControl(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    api: Control | None = None
    webhooks: WebhookControl | None = None
    amount_override: int | None = None
    currency_override: str | None = None
    clear_overrides: bool = False


class SendIn(msgspec.Struct, kw_only=True):
    transaction_id: int
    type: str | None = None  # default: the event of the current status


class StatusIn(msgspec.Struct, kw_only=True):
    transaction_id: int
    status: str


class FedaPaySim:
    def __init__(self, settings: PaymentsSettings) -> None:
        self.api_key = settings.secret("fedapay_secret_key", production=False)
        self.webhook_secret = settings.secret("fedapay_webhook_secret", production=False)
        self.behaviour = Behaviour()
        self.webhooks = WebhookSender()
        self.transactions: dict[int, dict[str, Any]] = {}
        self.tokens: dict[str, int] = {}
        self.requests: list[dict[str, Any]] = []
        self.ids = itertools.count(1001)
        self.events = itertools.count(1)
        self.amount_override: int | None = None
        self.currency_override: str | None = None

    def event(self, tx: dict[str, Any], kind: str) -> bytes:
        event = {
            "id": next(self.events),
            "klass": "v1/event",
            "type": kind,
            "entity": tx,
            "object_id": tx["id"],
            "account_id": 1,
            "created_at": datetime.now(UTC).isoformat(),
        }
        return msgspec.json.encode(event)

    def notify(self, tx: dict[str, Any], kind: str) -> None:
        body = self.event(tx, kind)
        self.webhooks.send(
            tx.get("callback_url"),
            body,
            lambda b: {"X-FEDAPAY-SIGNATURE": sign(self.webhook_secret, b, int(time.time()))},
            f"{kind}#{tx['id']}",
        )


def _state(request: Request[Any, Any, Any]) -> FedaPaySim:
    state = request.app.state
    if "sandbox_fedapay" not in state:
        settings = state.get("settings")
        state["sandbox_fedapay"] = FedaPaySim(
            settings.payments if isinstance(settings, Settings) else PaymentsSettings()
        )
    return state["sandbox_fedapay"]


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def _api(request: Request[Any, Any, Any]) -> tuple[FedaPaySim, Response[Any] | None]:
    """Record the request, check the key, apply the API control."""
    sim = _state(request)
    sim.requests.append({"method": request.method, "path": request.url.path, "at": time.time()})
    failure = await sim.behaviour.misbehave(sim.behaviour.next())
    if failure is not None:
        return sim, failure
    if request.headers.get("authorization") != f"Bearer {sim.api_key}":
        return sim, Response({"message": "Unauthenticated."}, status_code=401)
    return sim, None


def _wrap(tx: dict[str, Any]) -> dict[str, Any]:
    return {"v1/transaction": tx}


@post("/fedapay/v1/transactions", status_code=200)
async def create_transaction(request: Request[Any, Any, Any]) -> Response[Any]:
    """Create a transaction (simulated FedaPay)."""
    sim, failure = await _api(request)
    if failure is not None:
        return failure
    try:
        body = msgspec.json.decode(await request.body())
        amount = body["amount"]
        iso = (body.get("currency") or {}).get("iso", "XOF")
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
        return Response({"message": "invalid transaction"}, status_code=400)
    if not isinstance(amount, int) or amount <= 0:
        return Response({"message": "amount must be a positive integer"}, status_code=400)
    tid = next(sim.ids)
    tx = {
        "klass": "v1/transaction",
        "id": tid,
        "reference": f"trx_{secrets.token_hex(4)}",
        "transaction_key": secrets.token_hex(8),
        "amount": amount,
        "description": body.get("description", ""),
        "callback_url": body.get("callback_url"),
        "status": "pending",
        "customer_id": 1,
        "currency_id": 1 if iso == "XOF" else 99,
        "mode": None,
        "custom_metadata": body.get("custom_metadata") or {},
        "created_at": _now(),
        "updated_at": _now(),
        "paid_at": None,
        "refunded_amount": 0,
    }
    sim.transactions[tid] = tx
    return Response(_wrap(tx), status_code=200)


@post("/fedapay/v1/transactions/{tid:int}/token", status_code=200)
async def token(request: Request[Any, Any, Any], tid: int) -> Response[Any]:
    """The hosted checkout token and URL of a transaction."""
    sim, failure = await _api(request)
    if failure is not None:
        return failure
    if tid not in sim.transactions:
        return Response({"message": "Transaction not found"}, status_code=404)
    value = secrets.token_urlsafe(16)
    sim.tokens[value] = tid
    url = f"{str(request.base_url).rstrip('/')}/sandbox/fedapay/checkout/{value}"
    return Response({"token": value, "url": url}, status_code=200)


@get("/fedapay/v1/transactions/{tid:int}")
async def fetch_transaction(request: Request[Any, Any, Any], tid: int) -> Response[Any]:
    """One transaction as FedaPay answers it."""
    sim, failure = await _api(request)
    if failure is not None:
        return failure
    tx = sim.transactions.get(tid)
    if tx is None:
        return Response({"message": "Transaction not found"}, status_code=404)
    shown = dict(tx)
    if sim.amount_override is not None:
        shown["amount"] = sim.amount_override
    if sim.currency_override is not None:
        shown["currency_id"] = 99
        shown["currency"] = {"iso": sim.currency_override}
    return Response(_wrap(shown))


@post("/fedapay/v1/transactions/{tid:int}/refund", status_code=200)
async def refund(request: Request[Any, Any, Any], tid: int) -> Response[Any]:
    """Refund part or all of an approved transaction."""
    sim, failure = await _api(request)
    if failure is not None:
        return failure
    tx = sim.transactions.get(tid)
    if tx is None:
        return Response({"message": "Transaction not found"}, status_code=404)
    try:
        amount = msgspec.json.decode(await request.body()).get("amount", tx["amount"])
    except (msgspec.DecodeError, AttributeError):
        return Response({"message": "invalid refund"}, status_code=400)
    if tx["status"] not in ("approved", "approved_partially_refunded", "transferred"):
        return Response({"message": f"a {tx['status']} transaction cannot be refunded"}, status_code=422)
    if not isinstance(amount, int) or amount <= 0 or tx["refunded_amount"] + amount > tx["amount"]:
        return Response({"message": "refund exceeds the amount paid"}, status_code=422)
    tx["refunded_amount"] += amount
    tx["status"] = "refunded" if tx["refunded_amount"] == tx["amount"] else "approved_partially_refunded"
    tx["updated_at"] = _now()
    return Response(_wrap(tx))


PAGE = """<!doctype html>
<html lang="fr"><head><meta charset="utf-8"><title>FedaPay (simulateur) - Paiement</title>
<style>body{{font-family:sans-serif;max-width:32rem;margin:3rem auto}}button{{font-size:1.1rem;margin:.3rem}}</style>
</head><body>
<p><strong>SIMULATEUR FedaPay</strong> : aucun argent réel n'est débité.</p>
<h1>Paiement de {amount} FCFA</h1>
<p>{description}</p>
<p>Transaction n° {tid} &middot; statut : <strong id="status">{status}</strong></p>
{form}
</body></html>"""

FORM = """<form method="post">
<button name="decision" value="approve" id="approve">Approuver le paiement</button>
<button name="decision" value="decline" id="decline">Refuser</button>
<button name="decision" value="cancel" id="cancel">Annuler</button>
</form>"""


def _page(tx: dict[str, Any], *, message: str = "") -> Response[str]:
    form = FORM if tx["status"] == "pending" else f'<p id="result">{html.escape(message or tx["status"])}</p>'
    text = PAGE.format(
        amount=f"{tx['amount']:,}".replace(",", " "),
        description=html.escape(str(tx.get("description") or "")),
        tid=tx["id"],
        status=html.escape(tx["status"]),
        form=form,
    )
    return Response(text, media_type=MediaType.HTML)


@get("/fedapay/checkout/{value:str}", media_type=MediaType.HTML)
async def checkout_page(request: Request[Any, Any, Any], value: str) -> Response[str]:
    """The hosted checkout page where the payer approves or declines."""
    sim = _state(request)
    tid = sim.tokens.get(value)
    if tid is None:
        return Response("<p>Lien de paiement inconnu ou expiré.</p>", status_code=404, media_type=MediaType.HTML)
    return _page(sim.transactions[tid])


@post("/fedapay/checkout/{value:str}", media_type=MediaType.HTML, status_code=200)
async def checkout_decide(request: Request[Any, Any, Any], value: str) -> Response[str]:
    """The payer's decision: the status changes and a signed webhook is sent."""
    sim = _state(request)
    tid = sim.tokens.get(value)
    if tid is None:
        return Response("<p>Lien de paiement inconnu ou expiré.</p>", status_code=404, media_type=MediaType.HTML)
    tx = sim.transactions[tid]
    decision = (await request.form()).get("decision")
    status = {"approve": "approved", "decline": "declined", "cancel": "canceled"}.get(str(decision))
    if status is None:
        return Response("<p>Choix inconnu.</p>", status_code=400, media_type=MediaType.HTML)
    if tx["status"] != "pending":
        return _page(tx, message=f"Cette transaction est déjà {tx['status']}.")
    tx["status"] = status
    tx["updated_at"] = _now()
    if status == "approved":
        tx["paid_at"] = _now()
        tx["mode"] = "mtn"
    sim.notify(tx, STATUS_EVENTS[status])
    message = {"approved": "Paiement approuvé.", "declined": "Paiement refusé.", "canceled": "Paiement annulé."}[status]
    return _page(tx, message=message + " Vous pouvez fermer cette page.")


@post("/fedapay/_control", status_code=200)
async def control(request: Request[Any, Any, Any], data: SimControl) -> dict[str, Any]:
    """Set how the API answers and how webhooks are delivered."""
    sim = _state(request)
    if data.api is not None:
        sim.behaviour.control = data.api
    if data.webhooks is not None:
        sim.webhooks.control = data.webhooks
    if data.clear_overrides:
        sim.amount_override = sim.currency_override = None
    if data.amount_override is not None:
        sim.amount_override = data.amount_override
    if data.currency_override is not None:
        sim.currency_override = data.currency_override
    return {"ok": True}


@post("/fedapay/_flush", status_code=200)
async def flush(request: Request[Any, Any, Any]) -> dict[str, int]:
    """Send the held webhooks, newest first."""
    return {"sent": await _state(request).webhooks.flush()}


@post("/fedapay/_send", status_code=200)
async def send_event(request: Request[Any, Any, Any], data: SendIn) -> dict[str, Any]:
    """Send one webhook for a transaction now (any event type)."""
    sim = _state(request)
    tx = sim.transactions.get(data.transaction_id)
    if tx is None:
        return {"ok": False}
    sim.notify(tx, data.type or STATUS_EVENTS.get(tx["status"], "transaction.updated"))
    return {"ok": True}


@post("/fedapay/_status", status_code=200)
async def set_status(request: Request[Any, Any, Any], data: StatusIn) -> dict[str, Any]:
    """Change a transaction's status without any webhook (an expired checkout, a late settlement)."""
    tx = _state(request).transactions.get(data.transaction_id)
    if tx is None:
        return {"ok": False}
    tx["status"] = data.status
    tx["updated_at"] = _now()
    return {"ok": True}


@get("/fedapay/_state")
async def state(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Transactions, API requests and webhook deliveries seen so far."""
    sim = _state(request)
    return {
        "transactions": list(sim.transactions.values()),
        "requests": sim.requests,
        "webhooks": sim.webhooks.deliveries,
        "held": len(sim.webhooks.held),
        "in_flight": len(sim.webhooks.tasks),
    }


ROUTES: list[Any] = [
    create_transaction,
    token,
    fetch_transaction,
    refund,
    checkout_page,
    checkout_decide,
    control,
    flush,
    send_event,
    set_status,
    state,
]
