"""FedaPay adapter: create a transaction, get its checkout URL, fetch it, refund it, verify webhooks.

Wire facts (DOMAIN.md): `POST /v1/transactions` with a Bearer secret key, objects wrapped under
their class key (`{"v1/transaction": {...}}`), `POST /v1/transactions/{id}/token` answering the
hosted checkout `{token, url}`. Webhooks carry `X-FEDAPAY-SIGNATURE: t=<unix>,s=<hex>[,s=...]` with
s = HMAC-SHA256(secret, "<t>.<raw body>"); we accept when any s matches (constant time) and t is
within the tolerance. A verified webhook only says "look at transaction N": the transaction is then
fetched from the API and only that answer is trusted.

Refund (`POST /v1/transactions/{id}/refund` with {amount}) is not in the SDK facts we have; it is
the shape the simulator speaks and must be checked against the live API before production.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import httpx
import msgspec

from simveb.actors.payments.providers import ProviderError, ProviderRefused, ProviderTransaction

PAID = {"approved", "transferred", "refunded", "approved_partially_refunded", "transferred_partially_refunded"}
# FedaPay's currency ids; XOF is the only one this service takes.
CURRENCY_IDS = {1: "XOF"}


class SignatureError(Exception):
    """A webhook whose signature header is missing, malformed, wrong or stale."""


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The header value FedaPay sends for this body (also what the simulator and tests use)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},s={mac}"


def verify_signature(
    header: str | None, body: bytes, secret: str, *, tolerance_s: int, now: float | None = None
) -> int:
    """Check the signature header against the raw body; return its timestamp or raise SignatureError."""
    if not header:
        raise SignatureError("missing X-FEDAPAY-SIGNATURE")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError("malformed timestamp") from None
        elif key == "s":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError("no timestamp or no signature in the header")
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    # Compare against every s= (a secret being rolled) and never stop early on a match.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected.encode(), candidate.encode())
    if not matched:
        raise SignatureError("signature does not match")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError("timestamp outside the tolerance")
    return timestamp


def _outcome(status: str) -> str:
    if status in PAID:
        return "approved"
    if status == "pending":
        return "pending"
    if status == "declined":
        return "declined"
    if status in ("canceled", "cancelled", "expired"):
        return "cancelled"
    return "unknown"


def parse_transaction(body: Any) -> ProviderTransaction:
    obj = body.get("v1/transaction") if isinstance(body, dict) else None
    if not isinstance(obj, dict) or "id" not in obj or "status" not in obj:
        raise ProviderError("FedaPay answered without a v1/transaction object")
    currency = None
    if isinstance(obj.get("currency"), dict):
        currency = obj["currency"].get("iso")
    elif isinstance(obj.get("currency_id"), int):
        currency = CURRENCY_IDS.get(obj["currency_id"], f"id:{obj['currency_id']}")
    metadata = obj.get("custom_metadata") if isinstance(obj.get("custom_metadata"), dict) else {}
    amount = obj.get("amount")
    return ProviderTransaction(
        ref=str(obj["id"]),
        outcome=_outcome(str(obj["status"])),  # type: ignore[arg-type]
        status=str(obj["status"]),
        amount_xof=amount if isinstance(amount, int) else None,
        currency=currency,
        state=str(metadata["payment_id"]) if metadata.get("payment_id") else None,
        raw=obj,
    )


def event_of(body: bytes) -> tuple[str, str]:
    """(type, transaction id) of a webhook body; raises ValueError when it names no transaction."""
    data = msgspec.json.decode(body)
    event = data.get("v1/event", data) if isinstance(data, dict) else None
    if not isinstance(event, dict):
        raise ValueError("not an event object")
    kind = event.get("type") or event.get("name") or ""
    entity = event.get("entity") if isinstance(event.get("entity"), dict) else {}
    object_id = event.get("object_id") or entity.get("id")
    if object_id is None:
        raise ValueError("the event names no transaction")
    return str(kind), str(object_id)


class FedaPay:
    def __init__(self, client: httpx.AsyncClient, base_url: str, secret_key: str) -> None:
        self.client = client
        self.base = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {secret_key}", "Accept": "application/json"}

    async def _call(self, method: str, path: str, json: Any = None) -> Any:
        try:
            r = await self.client.request(method, f"{self.base}{path}", json=json, headers=self.headers)
        except httpx.HTTPError as exc:
            raise ProviderError(f"FedaPay unreachable: {type(exc).__name__}") from None
        if r.status_code >= 500 or r.status_code == 429:
            raise ProviderError(f"FedaPay answered {r.status_code}")
        try:
            body = r.json()
        except ValueError:
            raise ProviderError(f"FedaPay answered {r.status_code} without JSON") from None
        if r.status_code >= 400:
            message = body.get("message") if isinstance(body, dict) else None
            raise ProviderRefused(f"FedaPay refused ({r.status_code}): {message or 'no message'}")
        return body

    async def create(
        self,
        *,
        amount_xof: int,
        description: str,
        callback_url: str,
        payment_id: str,
        phone: str | None,
        reference: str,
    ) -> ProviderTransaction:
        customer: dict[str, Any] = {}
        if phone:
            customer["phone_number"] = {"number": phone, "country": "bj"}
        body = {
            "description": description,
            "amount": amount_xof,
            "currency": {"iso": "XOF"},
            "callback_url": callback_url,
            "custom_metadata": {"payment_id": payment_id, "reference": reference},
        }
        if customer:
            body["customer"] = customer
        return parse_transaction(await self._call("POST", "/v1/transactions", body))

    async def checkout(self, ref: str) -> tuple[str, str]:
        body = await self._call("POST", f"/v1/transactions/{ref}/token")
        if not isinstance(body, dict) or not body.get("url"):
            raise ProviderError("FedaPay token call answered without a url")
        return str(body.get("token", "")), str(body["url"])

    async def fetch(self, ref: str) -> ProviderTransaction:
        return parse_transaction(await self._call("GET", f"/v1/transactions/{ref}"))

    async def refund(self, ref: str, amount_xof: int) -> ProviderTransaction:
        return parse_transaction(await self._call("POST", f"/v1/transactions/{ref}/refund", {"amount": amount_xof}))
