"""The API contract as the frontends read it: the one problem schema, and what `document(app)` derives
for every route from what the route really does, so nobody writes it by hand per route.

For each operation it sets, on the route handler, when Litestar builds the OpenAPI document (at the
first request for it, not when the app is made: see ContractPlugin):

- the error answers, all `application/problem+json` with the `Problem` schema: 401 and 429 from the
  shell (every route under /api), 403 from the guards, 404 from path parameters, 400 from
  parameters and bodies, 413 and 422 from bodies, and the errors of what the handler does: the
  `DomainError`s it raises (directly or through a helper of its module) and those the messages it
  asks declare (`Ask.errors`), 503 when it asks the bus at all (an ask that times out);
- security: the bearer scheme, and the permission the guard needs in the description (guards made
  by `requires`/`requires_any` say which), nothing on a public route;
- the operation id `<resource>.<verb>` (`vehicles.get`, `immatriculations.validate`), the summary
  (the docstring's first line) and the description (the rest of it).

A handler's own `responses=` for a status wins (a route that answers 404 with a page, say). What the
handler does is read once per function from its source (the names it calls), cached for the process.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.openapi.datastructures import ResponseSpec
from litestar.routes import HTTPRoute

from simveb.errors import (
    BadRequest,
    DomainError,
    Forbidden,
    Invalid,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from simveb.http.shell import OPEN_PREFIXES
from simveb.messages import Ask

PROBLEM = "application/problem+json"
BEARER = "bearer"

TITLES = {
    400: "Bad request",
    401: "Authentication required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    412: "Precondition failed",
    413: "Payload too large",
    415: "Unsupported media type",
    416: "Range not satisfiable",
    422: "Invalid input",
    428: "Precondition required",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
}

# What each status means for a client of this API, whatever the route.
_MEANING = {
    400: "The request is malformed: a parameter or the body does not parse or breaks a constraint (`errors` names the fields).",
    401: "No valid bearer token: missing, malformed, expired or revoked (`code` says which).",
    403: "The token is valid but lacks the permission this route or this object needs.",
    404: "No such resource, or one the caller may not see.",
    409: "The request conflicts with the resource's current state (`code` and `detail` say how).",
    412: "`If-Match` names a version that is no longer current: read again and retry.",
    413: "The body is larger than this route accepts.",
    415: "The body's media type is not one this route accepts.",
    416: "The requested byte range is outside the content.",
    422: "The body parses but its content is refused (`code` and `detail` say why).",
    428: "This change needs `If-Match` (or a `version`) from a previous read.",
    429: "Too many requests: wait `Retry-After` seconds.",
    503: "A service this route needs is unavailable or too slow: retry later.",
}


def _said(text: str) -> Any:
    return msgspec.Meta(description=text)


class FieldError(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One refused field of a request."""

    field: Annotated[
        str | None,
        _said("The body field (`vehicle.vin` when nested) or parameter; absent when the body as a whole is wrong."),
    ] = None
    message: Annotated[str, _said("What was wrong and what was expected.")]
    source: Annotated[str | None, _said("Where the field is: body, query, path, header or cookie.")] = None


class Problem(msgspec.Struct, kw_only=True):
    """An error, as RFC 9457 problem details (`application/problem+json`).

    `code` is the stable machine code a frontend maps to its own text (the `ErrorCode` schema lists
    them); `detail` is for humans and may change. Some errors add members (`retry_after`, `fields`,
    `allowed`, `reasons` …), described with the code.
    """

    type: Annotated[str, _said("A URI naming the kind of problem: `https://simveb.bj/problems/<code>`.")]
    title: Annotated[str, _said("A short summary of the status.")]
    status: Annotated[int, _said("The HTTP status.")]
    detail: Annotated[str, _said("What happened, for humans (may change; do not parse it).")]
    code: Annotated[str, _said("The stable machine code (see the `ErrorCode` schema).")]
    instance: Annotated[str, _said("The request's path.")]
    errors: Annotated[list[FieldError], _said("The refused fields, on validation errors.")] | msgspec.UnsetType = (
        msgspec.UNSET
    )


@functools.cache
def problem_response(status: int) -> ResponseSpec:
    """The documented answer for an error status: problem+json, the Problem schema."""
    return ResponseSpec(
        data_container=Problem,
        media_type=PROBLEM,
        description=_MEANING.get(status, TITLES.get(status, "Error")),
        generate_examples=False,
    )


# --- what a handler does, read from its source ------------------------------------------------------


class Effects(msgspec.Struct, frozen=True):
    """What a handler's code asks and raises (through the helpers of its own package too)."""

    asks: frozenset[type] = frozenset()
    raises: frozenset[type] = frozenset()


def _resolve(node: ast.expr, namespace: dict[str, Any]) -> Any:
    if isinstance(node, ast.Name):
        return namespace.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, namespace)
        return getattr(owner, node.attr, None) if inspect.ismodule(owner) else None
    return None


@functools.cache
def effects_of(fn: Callable[..., Any]) -> Effects:
    """The Ask messages a function builds and the DomainErrors it builds or raises, following calls to
    functions of the simveb HTTP layer (helpers like `viewer_of` or `expected_version`)."""
    fn = inspect.unwrap(fn)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return Effects()
    namespace = {**getattr(fn, "__globals__", {})}
    asks: set[type] = set()
    raises: set[type] = set()
    for node in ast.walk(tree):
        target = None
        if isinstance(node, ast.Call):
            target = _resolve(node.func, namespace)
        elif isinstance(node, ast.Raise) and node.exc is not None:
            target = _resolve(node.exc, namespace)
        if target is None:
            continue
        if isinstance(target, type):
            if issubclass(target, Ask):
                asks.add(target)
            elif issubclass(target, DomainError):
                raises.add(target)
        elif (
            inspect.isfunction(target)
            and target is not fn
            and getattr(target, "__module__", "").startswith("simveb.http")
        ):
            inner = effects_of(target)
            asks |= inner.asks
            raises |= inner.raises
    return Effects(frozenset(asks), frozenset(raises))


def _status_of(error: type) -> int:
    return int(getattr(error, "status", 500))


# --- the walk ---------------------------------------------------------------------------------------

_RESERVED = {"self", "request", "state", "data", "socket", "scope", "headers", "cookies", "body"}


def _verb(handler_name: str, resource: str) -> str:
    """`get_vehicle` under vehicles -> `get`; `create_brand` -> `createBrand`."""
    singular = resource[:-1] if resource.endswith("s") else resource
    words = [w for w in handler_name.strip("_").split("_") if w]
    trimmed = [w for w in words if w not in (resource, singular)] or words
    return trimmed[0] + "".join(w[:1].upper() + w[1:] for w in trimmed[1:])


def _resource(path: str) -> str:
    parts = [p for p in path.split("/") if p and not p.startswith("{")]
    if parts and parts[0] == "api" and len(parts) > 1:
        return parts[1]
    return parts[0] if parts else "root"


def permissions_of(guards: Iterable[Any]) -> list[str]:
    """What the route's guards require, as sentences (guards from `requires`/`requires_any` say it)."""
    said = []
    for guard in guards:
        described = getattr(guard, "describes", None)
        if described:
            said.append(described)
    return said


def document(app: Litestar, *, open_prefixes: tuple[str, ...] = OPEN_PREFIXES) -> None:
    """Set every route handler's documented errors, security, operation id, summary and description."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if not handler.resolve_include_in_schema():
                continue
            _document_handler(route, handler, open_prefixes=open_prefixes)


def _document_handler(route: HTTPRoute, handler: Any, *, open_prefixes: tuple[str, ...]) -> None:
    path = route.path
    resource = _resource(path)
    guards = handler.resolve_guards()
    public = bool(handler.opt.get("public"))
    open_path = path.startswith(open_prefixes)
    params = handler.parsed_fn_signature.parameters
    dependencies = set(handler.resolve_dependencies())
    path_params = set(route.path_parameters)
    other_params = [n for n in params if n not in _RESERVED and n not in dependencies and n not in path_params]
    effects = effects_of(handler.fn)
    has_body = "data" in params or _reads_body(handler.fn)

    errors: set[type] = set(effects.raises)
    for message in effects.asks:
        errors.update(getattr(message, "errors", ()))
    if effects.asks:
        errors.add(Unavailable)
    if not open_path:
        errors.update((Unauthorized, TooManyRequests))
    if guards:
        errors.update((Unauthorized, Forbidden))
    if path_params:
        errors.add(NotFound)
    if other_params or has_body or path_params:
        errors.add(BadRequest)
    if has_body:
        errors.update((Invalid, PayloadTooLarge))
    statuses = {_status_of(e) for e in errors if 400 <= _status_of(e) < 600 and _status_of(e) != 500}

    responses = dict(handler.responses or {})
    for status in sorted(statuses):
        responses.setdefault(status, problem_response(status))
    handler.responses = responses

    # Security: the bearer scheme on every route that needs a token; a public route declares none.
    if not public and not open_path:
        handler.security = [{BEARER: []}]
    needs = permissions_of(guards)

    if not isinstance(handler.operation_id, str):
        handler.operation_id = f"{resource}.{_verb(handler.handler_name, resource)}"
    doc = inspect.getdoc(inspect.unwrap(handler.fn)) or ""
    first, _, rest = doc.partition("\n")
    if handler.summary is None and first:
        handler.summary = first.strip()
    if handler.description is None:
        lines = [rest.strip()] if rest.strip() else []
        if public or open_path:
            lines.append("Public: no token needed (an invalid token sent anyway is a 401).")
        elif needs:
            lines.append("Needs a bearer token; " + "; ".join(needs) + ".")
        else:
            lines.append("Needs a bearer token (any signed-in user; what is visible depends on who asks).")
        handler.description = "\n\n".join(lines)


_BODY_MARKERS = re.compile(r"request\.(stream|form|body|json)\(")


@functools.cache
def _reads_body(fn: Callable[..., Any]) -> bool:
    """Whether the handler reads the request body itself (a stream, a form) rather than as `data`."""
    try:
        return bool(_BODY_MARKERS.search(inspect.getsource(inspect.unwrap(fn))))
    except (OSError, TypeError):
        return False


# --- the finished document --------------------------------------------------------------------------


class ContractPlugin(OpenAPIPlugin):
    """Litestar's OpenAPI plugin, documenting the route handlers (`document`) just before it builds the
    document, and finishing the JSON document once it is built (`finish`): reading the handlers'
    sources and scanning simveb's for error codes happen at the first request for the document, not
    at every `create_app`.

    Litestar 2 has no hook after the document is built, and what is left needs the whole document:
    an explicit `security: []` on public operations (Litestar drops an empty list), a second media
    type on a success answer, the catalogue of error codes. The app's own plugin instance is given
    this class (`adopt`); it adds no state, so the instance layout is unchanged.
    """

    __slots__ = ()

    def _build_openapi(self) -> Any:
        document(self.app)
        return super()._build_openapi()

    def provide_openapi_schema(self) -> dict[str, Any]:
        if not self._openapi_schema:
            self._openapi_schema = finish(self.app, self.provide_openapi().to_schema())
        return self._openapi_schema


def adopt(app: Litestar) -> None:
    """Make the app's OpenAPI plugin document the handlers and finish its document (see ContractPlugin)."""
    plugin = app.plugins.get(OpenAPIPlugin)
    plugin.__class__ = ContractPlugin


def openapi_document(app: Litestar) -> dict[str, Any]:
    """The OpenAPI document as served at /schema/openapi.json."""
    return app.plugins.get(OpenAPIPlugin).provide_openapi_schema()


def finish(app: Litestar, doc: dict[str, Any]) -> dict[str, Any]:
    """Public operations declare `security: []`; extra media types (`opt["media_types"]`, `opt["content"]`)
    and bodies read as streams (`opt["request_body"]`);
    the `ErrorCode` schema lists every code the code base raises, once; the main bodies get examples."""
    paths = doc.get("paths", {})
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        item = paths.get(route.path_format or "/")
        if item is None:
            continue
        for handler in route.route_handlers:
            for method in handler.http_methods:
                op = item.get(method.lower())
                if op is None:
                    continue
                if "security" not in op:
                    op["security"] = []
                # opt={"request_body": {media type: schema}}: a body the handler reads itself (a stream).
                if handler.opt.get("request_body") and "requestBody" not in op:
                    op["requestBody"] = {
                        "required": True,
                        "content": {m: {"schema": sch} for m, sch in handler.opt["request_body"].items()},
                    }
                # opt={"media_types": {"text/csv": schema}} adds a media type to the success answer;
                # opt={"content": {404: {"text/html": schema}}} to any documented status.
                extra = dict(handler.opt.get("content") or {})
                if handler.opt.get("media_types"):
                    extra[handler.status_code] = handler.opt["media_types"]
                for status, media in extra.items():
                    answer = op["responses"].get(str(status))
                    if answer is not None:
                        for media_type, schema in media.items():
                            answer.setdefault("content", {})[media_type] = {"schema": schema}
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    catalogue = error_codes()
    schemas["ErrorCode"] = {
        "type": "string",
        "title": "ErrorCode",
        "description": (
            "The stable `code` of a problem, for a frontend to map to its own text. "
            "`x-error-codes` gives each code's status and a sample detail."
        ),
        "enum": sorted(catalogue),
        "x-error-codes": {code: catalogue[code] for code in sorted(catalogue)},
    }
    for name, examples in EXAMPLES.items():
        if name in schemas:
            schemas[name]["examples"] = examples
    problem = schemas.get("Problem", {}).get("properties", {})
    if "code" in problem:
        problem["code"] = {
            "type": "string",
            "description": "The stable machine code: one of the `ErrorCode` schema (an older client may meet a newer one).",
        }
    return doc


@functools.cache
def error_codes() -> dict[str, dict[str, Any]]:
    """Every literal error code in simveb's source: `code="..."` given to a DomainError (or one of its
    family) and each class's own code, with its status and the first literal detail found."""
    import simveb

    root = Path(simveb.__file__).parent
    found: dict[str, dict[str, Any]] = {}
    class_defs: list[ast.ClassDef] = []
    calls: list[ast.Call] = []
    for path in sorted(root.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                class_defs.append(node)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and any(k.arg == "code" for k in node.keywords)
            ):
                calls.append(node)
    known = {"DomainError": (400, "bad_request")}  # class name -> (status, code)
    # Classes of the family, in any module: status and code from their class body, else the parent's.
    pending = list(class_defs)
    changed = True
    while changed:
        changed = False
        for node in list(pending):
            parents = [b.id for b in node.bases if isinstance(b, ast.Name) and b.id in known]
            if not parents:
                continue
            pending.remove(node)
            status, code = known[parents[0]]
            for stmt in node.body:
                if isinstance(stmt, ast.Assign | ast.AnnAssign) and isinstance(stmt.value, ast.Constant):
                    target = stmt.targets[0] if isinstance(stmt, ast.Assign) else stmt.target
                    if isinstance(target, ast.Name) and target.id == "status" and isinstance(stmt.value.value, int):
                        status = stmt.value.value
                    if isinstance(target, ast.Name) and target.id == "code" and isinstance(stmt.value.value, str):
                        code = stmt.value.value
            known[node.name] = (status, code)
            found.setdefault(code, {"status": status, "detail": TITLES.get(status, "")})
            changed = True
    for node in calls:
        if node.func.id not in known:  # type: ignore[attr-defined]
            continue
        code_kw = next(k for k in node.keywords if k.arg == "code")
        if not isinstance(code_kw.value, ast.Constant) or not isinstance(code_kw.value.value, str):
            continue
        status = known[node.func.id][0]  # type: ignore[attr-defined]
        detail = ""
        if node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                detail = first.value
            elif isinstance(first, ast.JoinedStr):
                detail = "".join(v.value if isinstance(v, ast.Constant) else "…" for v in first.values)
        entry = found.setdefault(code_kw.value.value, {"status": status, "detail": detail})
        if not entry["detail"]:
            entry["detail"] = detail
    # The shell's own codes (simveb/http/app.py derives them from the status).
    for status, title in TITLES.items():
        found.setdefault(title.lower().replace(" ", "_"), {"status": status, "detail": title})
    found.setdefault(
        "validation_error", {"status": 400, "detail": "the request does not match the route's parameters or body"}
    )
    found.setdefault("rate_limited", {"status": 429, "detail": "more requests a minute than allowed from this address"})
    return found


# --- examples of the main bodies ------------------------------------------------------------------
# Shown by the API browsers and code generators next to the schema; tests/http/test_contract.py checks
# that each one is valid against its schema, so they cannot drift from the code.

_VEHICLE_ID = "0f6a3c52-8a4e-4d5b-9a47-3c1f0e2b7d10"
_USER_ID = "5b2e9f14-7c1d-4a8e-b3f6-2d9c0a1e4f77"
_AT = "2026-12-01T09:30:00Z"

EXAMPLES: dict[str, list[Any]] = {
    "LoginIn": [
        {"email": "agent@anatt.bj", "password": "correct horse battery"},
        {"phone": "+22997000001", "password": "correct horse battery"},
    ],
    "LoginResult": [
        {
            "status": "authenticated",
            "tokens": {
                "access_token": "eyJhbGciOiJFZERTQSIsImtpZCI6Ii4uLiIsInR5cCI6ImF0K2p3dCJ9.e30.c2ln",
                "refresh_token": "rt_3q2-7wEbWmF1lQh9",
                "token_type": "Bearer",
                "expires_in": 900,
                "session_id": "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a",
                "limited": False,
            },
        },
        {
            "status": "two_factor_required",
            "challenge": {
                "challenge_id": "2c4e6a8b-0d1f-4a3c-9e5b-7d9f1a3c5e7b",
                "expires_at": _AT,
                "methods": ["totp"],
            },
        },
    ],
    "Problem": [
        {
            "type": "https://simveb.bj/problems/validation-error",
            "title": "Bad request",
            "status": 400,
            "detail": "vin: required",
            "code": "validation_error",
            "instance": "/api/vehicles",
            "errors": [{"field": "vin", "message": "required", "source": "body"}],
        },
        {
            "type": "https://simveb.bj/problems/pay-through-payments",
            "title": "Conflict",
            "status": 409,
            "detail": "a request is paid through the payments service",
            "code": "pay_through_payments",
            "instance": "/api/immatriculations/3f1d…/status",
        },
    ],
    "Vehicle": [
        {
            "id": _VEHICLE_ID,
            "vin": "VF1RFB00X64123456",
            "plate": "AB 1234 RB",
            "make": "TOYOTA",
            "model": "COROLLA",
            "vehicle_type": "passenger_car",
            "category": "car",
            "commercial_name": "Corolla 1.6",
            "year": 2019,
            "colour": "blanc",
            "energy": "petrol",
            "cylinder_cc": 1598,
            "power_kw": 97,
            "fiscal_hp": 8,
            "seats": 5,
            "max_mass_kg": 1760,
            "service_mass_kg": 1310,
            "empty_mass_kg": 1240,
            "first_registration_date": "2019-04-12",
            "customs_ref": "DOU-2026-004512",
            "characteristics": [],
            "remarks": "",
            "owners": [_USER_ID],
            "status": "active",
            "filed_by": None,
            "version": 3,
            "created_at": _AT,
            "created_by": _USER_ID,
            "updated_at": _AT,
            "updated_by": _USER_ID,
            "archived_at": None,
            "archived_by": None,
        }
    ],
    "FileIn": [
        {
            "procedure": "first_registration",
            "vehicle_id": _VEHICLE_ID,
            "declared_documents": ["customs_clearance", "invoice"],
        },
        {"procedure": "transfer", "vehicle_id": _VEHICLE_ID, "new_owners": [_USER_ID], "seller_consent": True},
    ],
    "Request": [
        {
            "id": "3f1d2c4b-6a8e-4f0d-9b1c-5e7a9c1e3f5d",
            "number": "IMM-2026-000123",
            "procedure": "first_registration",
            "status": "waiting_for_payment",
            "applicant_id": _USER_ID,
            "filed_by": None,
            "vehicle_id": _VEHICLE_ID,
            "owner_type": "person",
            "vehicle_category": "car",
            "fee_total_xof": 45000,
            "fee_lines": [],
            "amount_paid_xof": 0,
            "payment_id": None,
            "assignee_id": None,
            "required_documents": ["customs_clearance", "invoice"],
            "declared_documents": ["customs_clearance", "invoice"],
            "details": {},
            "plate": None,
            "status_since": _AT,
            "created_at": _AT,
            "updated_at": _AT,
            "version": 2,
        }
    ],
}
