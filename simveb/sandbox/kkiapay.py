"""KKiaPay simulator (sandbox only): the status and revert API, a stand-in for the payment widget,
and webhooks carrying the shared secret in `x-kkiapay-secret`.

API (under /sandbox/kkiapay, headers X-API-KEY, X-PRIVATE-KEY, X-SECRET-KEY):
`POST /api/v1/transactions/status` {transactionId} answers a flat object (status SUCCESS, FAILED,
PENDING, REVERTED or TRANSACTION_NOT_FOUND, amount, fees, source, country, state, transactionId);
`POST /api/v1/transactions/revert` {transactionId} refunds it in full. `POST /widget/pay`
{amount, phone, state, outcome: "success" | "failed" | "pending", webhook_url} is what the browser
widget does when a person pays: it creates the transaction, answers its transactionId and sends the
webhook (retried, 5 attempts by default). Controls as for FedaPay: `POST /kkiapay/_control`,
`POST /kkiapay/_flush`, `GET /kkiapay/_state`.
"""

from __future__ import annotations

import hmac
import secrets
import time
from typing import Any, Literal

import msgspec
from litestar import Request, Response, get, post

from simveb.config import PaymentsSettings, Settings
from simveb.sandbox.sms import Behaviour, Control
from simveb.sandbox.webhooks import WebhookControl, WebhookSender


class PayIn(msgspec.Struct, kw_only=True):
    amount: int
    phone: str = "+22997000000"
    state: str | None = None
    outcome: Literal["success", "failed", "pending"] = "success"
    webhook_url: str | None = None


class SimControl(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    api: Control | None = None
    webhooks: WebhookControl | None = None
    amount_override: int | None = None
    clear_overrides: bool = False


class SetStatusIn(msgspec.Struct, kw_only=True):
    transaction_id: str
    status: str


class KKiaPaySim:
    def __init__(self, settings: PaymentsSettings, webhook_url: str | None) -> None:
        self.public_key = settings.secret("kkiapay_public_key", production=False)
        self.private_key = settings.secret("kkiapay_private_key", production=False)
        self.secret = settings.secret("kkiapay_secret", production=False)
        self.webhook_url = webhook_url
        self.behaviour = Behaviour()
        self.webhooks = WebhookSender()
        self.transactions: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.amount_override: int | None = None

    def notify(self, tx: dict[str, Any], url: str | None) -> None:
        body = msgspec.json.encode(
            {
                "transactionId": tx["transactionId"],
                "isPaymentSucces": tx["status"] == "SUCCESS",
                "event": "transaction.success" if tx["status"] == "SUCCESS" else "transaction.failed",
                "amount": tx["amount"],
                "stateData": tx.get("state"),
            }
        )
        self.webhooks.send(
            url or self.webhook_url, body, lambda _b: {"x-kkiapay-secret": self.secret}, tx["transactionId"]
        )


def _state(request: Request[Any, Any, Any]) -> KKiaPaySim:
    state = request.app.state
    if "sandbox_kkiapay" not in state:
        settings = state.get("settings")
        if isinstance(settings, Settings):
            base = settings.payments.callback_base(settings.server)
            state["sandbox_kkiapay"] = KKiaPaySim(settings.payments, f"{base}/api/payments/webhooks/kkiapay")
        else:
            state["sandbox_kkiapay"] = KKiaPaySim(PaymentsSettings(), None)
    return state["sandbox_kkiapay"]


async def _api(request: Request[Any, Any, Any]) -> tuple[KKiaPaySim, Any, dict[str, Any] | None] | Response[Any]:
    """The simulator, the transactionId asked for and its transaction (None when unknown); or the
    response that ends the call (a misbehaviour, wrong keys, a body without transactionId)."""
    sim = _state(request)
    sim.requests.append({"method": request.method, "path": request.url.path, "at": time.time()})
    failure = await sim.behaviour.misbehave(sim.behaviour.next())
    if failure is not None:
        return failure
    h = request.headers
    expected = (sim.public_key, sim.private_key, sim.secret)
    given = (h.get("x-api-key", ""), h.get("x-private-key", ""), h.get("x-secret-key", ""))
    if not all(hmac.compare_digest(a.encode(), b.encode()) for a, b in zip(expected, given, strict=True)):
        return Response({"status": "UNAUTHORIZED", "message": "invalid keys"}, status_code=401)
    try:
        body = msgspec.json.decode(await request.body())
        assert isinstance(body, dict) and body.get("transactionId")
    except (msgspec.DecodeError, AssertionError):
        return Response({"status": "INVALID_TRANSACTION"}, status_code=400)
    return sim, body["transactionId"], sim.transactions.get(str(body["transactionId"]))


@post("/kkiapay/api/v1/transactions/status", status_code=200)
async def status(request: Request[Any, Any, Any]) -> Response[Any]:
    """Where a transaction stands (simulated KKiaPay)."""
    found = await _api(request)
    if isinstance(found, Response):
        return found
    sim, tid, tx = found
    if tx is None:
        return Response({"status": "TRANSACTION_NOT_FOUND", "transactionId": tid})
    shown = dict(tx)
    if sim.amount_override is not None:
        shown["amount"] = sim.amount_override
    return Response(shown)


@post("/kkiapay/api/v1/transactions/revert", status_code=200)
async def revert(request: Request[Any, Any, Any]) -> Response[Any]:
    """Refund a successful transaction in full."""
    found = await _api(request)
    if isinstance(found, Response):
        return found
    _, _, tx = found
    if tx is None:
        return Response({"status": "TRANSACTION_NOT_FOUND"}, status_code=404)
    if tx["status"] != "SUCCESS":
        return Response(
            {"status": tx["status"], "message": "only a successful transaction can be reverted"}, status_code=422
        )
    tx["status"] = "REVERTED"
    return Response({"status": "REVERTED", "transactionId": tx["transactionId"], "amount": tx["amount"]})


@post("/kkiapay/widget/pay", status_code=200)
async def widget_pay(request: Request[Any, Any, Any], data: PayIn) -> dict[str, Any]:
    """What the widget does when a person pays: a transaction, then the webhook."""
    sim = _state(request)
    tid = f"kk_{secrets.token_hex(6)}"
    tx = {
        "transactionId": tid,
        "performed_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "type": "DEBIT",
        "status": {"success": "SUCCESS", "failed": "FAILED", "pending": "PENDING"}[data.outcome],
        "source": "MOBILE_MONEY",
        "source_common_name": "mtn-benin",
        "amount": data.amount,
        "fees": 0,
        "country": "BJ",
        "reason": "invalid_number" if data.outcome == "failed" else None,
        "state": data.state,
        "client": {"phone": data.phone},
    }
    sim.transactions[tid] = tx
    if data.outcome != "pending":
        sim.notify(tx, data.webhook_url)
    return {"transactionId": tid, "status": tx["status"]}


@post("/kkiapay/_control", status_code=200)
async def control(request: Request[Any, Any, Any], data: SimControl) -> dict[str, Any]:
    """Set how the API answers and how webhooks are delivered."""
    sim = _state(request)
    if data.api is not None:
        sim.behaviour.control = data.api
    if data.webhooks is not None:
        sim.webhooks.control = data.webhooks
    if data.clear_overrides:
        sim.amount_override = None
    if data.amount_override is not None:
        sim.amount_override = data.amount_override
    return {"ok": True}


@post("/kkiapay/_status", status_code=200)
async def set_status(request: Request[Any, Any, Any], data: SetStatusIn) -> dict[str, Any]:
    """Settle a pending transaction (SUCCESS, FAILED) and send its webhook."""
    sim = _state(request)
    tx = sim.transactions.get(data.transaction_id)
    if tx is None:
        return {"ok": False}
    tx["status"] = data.status
    sim.notify(tx, None)
    return {"ok": True}


@post("/kkiapay/_flush", status_code=200)
async def flush(request: Request[Any, Any, Any]) -> dict[str, int]:
    """Send the held webhooks, newest first."""
    return {"sent": await _state(request).webhooks.flush()}


@get("/kkiapay/_state")
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


ROUTES: list[Any] = [status, revert, widget_pay, control, set_status, flush, state]
