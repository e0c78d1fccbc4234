"""Helpers of the registrations tests: seeded people with tokens carrying their real permissions, and
paying a request at the counter through the payments service."""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass
from typing import Any

from simveb.actors import ACTORS, ASK_GRAPH
from simveb.actors.users.messages import GetUserAuthz
from simveb.runtime import Runtime
from tests.support import wait_for
from tests.users_support import make_user

_vin = itertools.count(1)
_receipts = itertools.count(1)
FIRST_DOCS = ["customs_clearance", "purchase_invoice", "owner_identity", "technical_inspection"]

# These tests exercise the rules with *declared* documents, i.e. with no documents service in the
# process; tests/http/test_registrations_documents.py runs both services together.
DECLARED_ONLY: dict[str, Any] = {
    "actors": [a for a in ACTORS if a.name != "documents"],
    "graph": {name: targets - {"documents"} for name, targets in ASK_GRAPH.items() if name != "documents"},
}
# Neither documents nor payments: the mode where an agent with payments:confirm still moves a request
# to paid directly (the fallback when no payments service runs in the process).
WITHOUT_PAYMENTS: dict[str, Any] = {
    "actors": [a for a in ACTORS if a.name not in ("documents", "payments")],
    "graph": {
        name: targets - {"documents", "payments"}
        for name, targets in ASK_GRAPH.items()
        if name not in ("documents", "payments")
    },
}


@dataclass
class Person:
    id: uuid.UUID
    headers: dict[str, str]
    permissions: list[str]


def token(runtime: Runtime, sub: str, permissions: list[str], roles: list[str]) -> str:
    assert runtime.keys is not None
    now = int(time.time())
    settings = runtime.settings
    return runtime.keys.sign(
        {
            "iss": settings.security.issuer,
            "aud": settings.security.audience,
            "sub": sub,
            "iat": now,
            "exp": now + 3600,
            "jti": uuid.uuid4().hex,
            "roles": roles,
            "permissions": permissions,
        }
    )


async def person(runtime: Runtime, *roles: str, kind: str | None = None, **fields: Any) -> Person:
    """A user with these roles (seeded grid), and a bearer token with the permissions the grid gives."""
    assert runtime.bus is not None
    staff = not set(roles) & {"citizen", "company", "affiliate"}
    user = await make_user(runtime, *roles, kind=kind or ("staff" if staff else "person"), **fields)
    authz = await runtime.bus.ask(GetUserAuthz(user_id=user.id))
    tok = token(runtime, str(user.id), list(authz.permissions), list(authz.roles))
    return Person(id=user.id, headers={"Authorization": f"Bearer {tok}"}, permissions=list(authz.permissions))


def vin() -> str:
    return f"VR3UHZKX{next(_vin):09d}"


def new_vehicle(**fields: Any) -> dict[str, Any]:
    return {
        "vin": vin(),
        "fields": {
            "make": "Peugeot",
            "model": "406",
            "energy": "Essence",
            "year": 2022,
            "fiscal_hp": 6,
            "seats": 5,
            **fields,
        },
    }


async def pay_at_counter(
    api: Any, agent: Person, rid: str, *, method: str = "cash", reader: Person | None = None
) -> dict[str, Any]:
    """Record a counter payment for request `rid` the way an agent does (POST /api/payments/{id}/confirm,
    the payment named by the request's id) and wait for registrations to take the PaymentSucceeded:
    returns the request, as `reader` (default the agent) sees it, once it left waiting_for_payment.
    Pass the applicant as `reader` when the paid request may be assigned to another agent."""
    body = {"method": method, "receipt_reference": f"GUICHET-{next(_receipts):06d}-{uuid.uuid4().hex[:8]}"}

    async def recorded() -> Any:
        r = await api.post(f"/api/payments/{rid}/confirm", json=body, headers=agent.headers)
        if r.status_code == 404:
            return None  # the payable opens when PaymentRequested is delivered
        assert r.status_code == 200, r.text
        return r.json()

    await wait_for(recorded, timeout=10)

    async def moved() -> Any:
        r = await api.get(f"/api/immatriculations/{rid}", headers=(reader or agent).headers)
        assert r.status_code == 200, r.text
        return r.json() if r.json()["status"] != "waiting_for_payment" else None

    return await wait_for(moved, timeout=10)
