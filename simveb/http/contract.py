"""The API contract as the frontends read it: the one problem schema, and what `document(app)` derives
for every route from what the route really does, so nobody writes it by hand per route.

For each operation it sets, on the route handler, before Litestar builds the OpenAPI document:

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
from typing import Any

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


class FieldError(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One field of a refused request."""

    field: str | None = None
    """The field or parameter (a body field by name, `$.a.b` for a nested one), when known."""
    message: str
    """What was wrong and what was expected."""
    source: str | None = None
    """Where the field is: body, query, path, header or cookie."""


class Problem(msgspec.Struct, kw_only=True):
    """An error, as RFC 9457 problem details (`application/problem+json`).

    `code` is the stable machine code a frontend maps to its own text (the `ErrorCode` schema lists
    them); `detail` is for humans and may change. Some errors add members (`retry_after`, `fields`,
    `allowed`, `reasons` …), described with the code.
    """

    type: str
    """A URI naming the kind of problem (`https://simveb.bj/problems/<code>`)."""
    title: str
    """A short summary of the status."""
    status: int
    """The HTTP status."""
    detail: str
    """What happened, for humans."""
    code: str
    """The stable machine code (see the `ErrorCode` schema)."""
    instance: str
    """The request path."""
    errors: list[FieldError] | msgspec.UnsetType = msgspec.UNSET
    """The refused fields, on validation errors."""


def _example(status: int) -> dict[str, Any]:
    code = TITLES[status].lower().replace(" ", "_")
    return {
        "type": f"https://simveb.bj/problems/{code.replace('_', '-')}",
        "title": TITLES[status],
        "status": status,
        "detail": _MEANING.get(status, TITLES[status]),
        "code": code,
        "instance": "/api/…",
    }


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


def document(app: Litestar, *, open_prefixes: tuple[str, ...], body_limit: bool = True) -> None:
    """Set every route handler's documented errors, security, operation id, summary and description."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if not handler.resolve_include_in_schema():
                continue
            _document_handler(route, handler, open_prefixes=open_prefixes, body_limit=body_limit)


def _document_handler(route: HTTPRoute, handler: Any, *, open_prefixes: tuple[str, ...], body_limit: bool) -> None:
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
    source_has = _source_markers(handler.fn)
    has_body = "data" in params or source_has["body"]

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
        errors.add(Invalid)
        if body_limit:
            errors.add(PayloadTooLarge)
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
def _source_markers(fn: Callable[..., Any]) -> dict[str, bool]:
    try:
        source = inspect.getsource(inspect.unwrap(fn))
    except (OSError, TypeError):
        source = ""
    return {"body": bool(_BODY_MARKERS.search(source))}


# --- the finished document --------------------------------------------------------------------------


class ContractPlugin(OpenAPIPlugin):
    """Litestar's OpenAPI plugin, finishing the JSON document once it is built (`finish`).

    Litestar 2 has no hook after the document is built, and what is left needs the whole document:
    an explicit `security: []` on public operations (Litestar drops an empty list), a second media
    type on a success answer, the catalogue of error codes. The app's own plugin instance is given
    this class (`adopt`); it adds no state, so the instance layout is unchanged.
    """

    __slots__ = ()

    def provide_openapi_schema(self) -> dict[str, Any]:
        if not self._openapi_schema:
            self._openapi_schema = finish(self.app, self.provide_openapi().to_schema())
        return self._openapi_schema


def adopt(app: Litestar) -> None:
    """Make the app's OpenAPI plugin finish its document (see ContractPlugin)."""
    plugin = app.plugins.get(OpenAPIPlugin)
    plugin.__class__ = ContractPlugin


def openapi_document(app: Litestar) -> dict[str, Any]:
    """The OpenAPI document as served at /schema/openapi.json."""
    return app.plugins.get(OpenAPIPlugin).provide_openapi_schema()


def finish(app: Litestar, doc: dict[str, Any]) -> dict[str, Any]:
    """Public operations declare `security: []`; extra media types (`opt["media_types"]`, `opt["content"]`);
    the `ErrorCode` schema lists every code the code base raises, once."""
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
