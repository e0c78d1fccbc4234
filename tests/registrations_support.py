"""Helpers of the registrations tests: seeded people with tokens carrying their real permissions."""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass
from typing import Any

from simveb.actors import ACTORS, ASK_GRAPH
from simveb.actors.users.messages import GetUserAuthz
from simveb.runtime import Runtime
from tests.users_support import make_user

_vin = itertools.count(1)
FIRST_DOCS = ["customs_clearance", "purchase_invoice", "owner_identity", "technical_inspection"]

# These tests exercise the rules with *declared* documents, i.e. with no documents service in the
# process; tests/http/test_registrations_documents.py runs both services together.
DECLARED_ONLY: dict[str, Any] = {
    "actors": [a for a in ACTORS if a.name != "documents"],
    "graph": {name: targets - {"documents"} for name, targets in ASK_GRAPH.items() if name != "documents"},
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
