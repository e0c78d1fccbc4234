"""KKiaPay adapter: verify a transaction through the status API, refund through revert, check webhooks.

Wire facts (DOMAIN.md): `POST /api/v1/transactions/status` {transactionId} and
`POST /api/v1/transactions/revert` {transactionId}, with the headers X-API-KEY (public key),
X-PRIVATE-KEY and X-SECRET-KEY. The status answer is a flat object (`status` SUCCESS, PENDING,
FAILED, REVERTED, INVALID_TRANSACTION, TRANSACTION_NOT_FOUND; `amount`, `transactionId`, ...).
Webhooks carry the shared secret in `x-kkiapay-secret`; their payload is not documented, so only
the transaction id is read from it and the status API is asked. The widget's `data` comes back as
`state` (an assumption the simulator shares; the payment is also matched by the id the payer
confirmed). KKiaPay refunds whole transactions only.
"""

from __future__ import annotations

import hmac
from typing import Any

import httpx
import msgspec

from simveb.actors.payments.providers import ProviderError, ProviderRefused, ProviderTransaction

OUTCOMES = {
    "SUCCESS": "approved",
    "REVERTED": "approved",  # it was paid; the revert is ours to record
    "PENDING": "pending",
    "FAILED": "declined",
    "INVALID_TRANSACTION": "unknown",
    "TRANSACTION_NOT_FOUND": "unknown",
}


def secret_matches(header: str | None, secret: str) -> bool:
    """Constant-time comparison of the webhook's shared secret."""
    if not header or not secret:
        return False
    return hmac.compare_digest(header.encode(), secret.encode())


def transaction_id_of(body: bytes) -> str:
    data = msgspec.json.decode(body)
    if not isinstance(data, dict):
        raise ValueError("not an object")
    tid = data.get("transactionId") or data.get("transaction_id")
    if not tid:
        raise ValueError("no transactionId")
    return str(tid)


def parse_status(body: Any, ref: str) -> ProviderTransaction:
    if not isinstance(body, dict) or "status" not in body:
        raise ProviderError("KKiaPay answered without a status")
    status = str(body["status"])
    amount = body.get("amount")
    state = body.get("state")
    return ProviderTransaction(
        ref=str(body.get("transactionId") or ref),
        outcome=OUTCOMES.get(status, "unknown"),  # type: ignore[arg-type]
        status=status,
        amount_xof=amount if isinstance(amount, int) else None,
        # KKiaPay operates in XOF in Benin; a `currency` field, when present, is checked.
        currency=str(body.get("currency") or "XOF"),
        state=str(state) if state else None,
        raw=body,
    )


class KKiaPay:
    def __init__(
        self, client: httpx.AsyncClient, base_url: str, public_key: str, private_key: str, secret: str
    ) -> None:
        self.client = client
        self.base = base_url.rstrip("/")
        self.headers = {
            "X-API-KEY": public_key,
            "X-PRIVATE-KEY": private_key,
            "X-SECRET-KEY": secret,
            "Accept": "application/json",
        }

    async def _call(self, path: str, body: dict[str, Any]) -> Any:
        try:
            r = await self.client.post(f"{self.base}{path}", json=body, headers=self.headers)
        except httpx.HTTPError as exc:
            raise ProviderError(f"KKiaPay unreachable: {type(exc).__name__}") from None
        if r.status_code >= 500 or r.status_code == 429:
            raise ProviderError(f"KKiaPay answered {r.status_code}")
        try:
            data = r.json()
        except ValueError:
            raise ProviderError(f"KKiaPay answered {r.status_code} without JSON") from None
        if r.status_code >= 400:
            raise ProviderRefused(f"KKiaPay refused ({r.status_code}): {data}")
        return data

    async def status(self, ref: str) -> ProviderTransaction:
        return parse_status(await self._call("/api/v1/transactions/status", {"transactionId": ref}), ref)

    async def revert(self, ref: str) -> ProviderTransaction:
        body = await self._call("/api/v1/transactions/revert", {"transactionId": ref})
        if isinstance(body, dict) and body.get("status") not in ("REVERTED", "SUCCESS"):
            raise ProviderRefused(f"KKiaPay did not revert: {body.get('status')}")
        return parse_status({**body, "status": "REVERTED"} if isinstance(body, dict) else body, ref)
