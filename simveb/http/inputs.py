"""The base of every HTTP request body.

Bodies refuse unknown fields: a typo is an error, not a silently ignored key, and a field such as
`roles`, `status`, `kyc_status` or `id` sent where it is not accepted is a 400, never a silent
privilege change (mass assignment). Fields are keyword-only, so a required one may follow an
optional one.

A body reuses the message's structs: either it extends the Record a message carries
(`class FieldsIn(VehicleFields, forbid_unknown_fields=True)`), or `body_of(Message, exclude=...)`
makes it from the message's own fields.
"""

from __future__ import annotations

import enum
import functools
import operator
import re
import sys
import types
import typing
from collections.abc import Iterable
from typing import Annotated, Any, TypeVar

import msgspec
from litestar.params import Parameter

from simveb.messages import (
    CURSOR_MAX_LENGTH,
    CURSOR_PATTERN,
    PAGE_LIMIT_DEFAULT,
    PAGE_LIMIT_MAX,
    KwOnlyMeta,
)


class Input(msgspec.Struct, metaclass=KwOnlyMeta, forbid_unknown_fields=True):
    """Base of HTTP input structs."""


def _without_none(annotation: Any) -> Any:
    """`X | None` as `X` (other annotations unchanged)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        return functools.reduce(operator.or_, rest) if rest else annotation
    return annotation


def body_of(
    message: type[msgspec.Struct],
    *,
    exclude: Iterable[str] = (),
    only: Iterable[str] | None = None,
    required: Iterable[str] = (),
    name: str,
    doc: str = "",
) -> type[Input]:
    """An HTTP body made of a message's own fields (types, constraints, defaults), less those the route
    fills in itself (the caller, path parameters). One list of fields serves the contract and the route.

    `only` keeps just those fields (a route for one procedure of a general message); `required` makes
    fields the message defaults required in this body (a transfer must name its vehicle)."""
    known = {f.name for f in msgspec.structs.fields(message)}
    skip = set(exclude) | (known - set(only) if only is not None else set())
    must = set(required)
    unknown = (set(exclude) | set(only or ()) | must) - known
    if unknown or must & skip:
        raise TypeError(
            f"{message.__name__}: no field {sorted(unknown)} or required but left out {sorted(must & skip)}"
        )
    annotations: dict[str, Any] = {}
    # The calling module, so the body is documented (OpenAPI) under the route's module.
    namespace: dict[str, Any] = {"__module__": sys._getframe(1).f_globals.get("__name__", __name__)}
    for f in msgspec.structs.fields(message):
        if f.name in skip:
            continue
        annotations[f.name] = f.type
        if f.name in must:
            annotations[f.name] = _without_none(f.type)  # required here means given, and not null
            continue
        if f.default_factory is not msgspec.NODEFAULT:
            namespace[f.name] = msgspec.field(default_factory=f.default_factory)
        elif f.default is not msgspec.NODEFAULT:
            namespace[f.name] = f.default
    namespace["__annotations__"] = annotations
    namespace["__doc__"] = doc or f"The fields of {message.__name__} that the request gives."
    return type(Input)(name, (Input,), namespace)


R = TypeVar("R", bound=msgspec.Struct)

# The two query parameters of every list route (simveb.messages owns the paging rules; these say them
# to Litestar, which checks them and documents them, before a message is built).
LimitQuery = Annotated[
    int,
    Parameter(
        ge=1,
        le=PAGE_LIMIT_MAX,
        description=f"Items per page, 1 to {PAGE_LIMIT_MAX} (default {PAGE_LIMIT_DEFAULT}).",
    ),
]
CursorQuery = Annotated[
    str | None,
    Parameter(
        min_length=1,
        max_length=CURSOR_MAX_LENGTH,
        pattern=CURSOR_PATTERN,
        description="The next_cursor of the previous page, passed back unchanged; omit it for the first page.",
    ),
]


def record_of(body: msgspec.Struct, record: type[R]) -> R:
    """The message's own Record from a body that extends it: its fields only (already validated)."""
    return record(**{name: getattr(body, name) for name in record.__struct_fields__})


_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")
_MISSING = re.compile(r"missing required field `([^`]+)`")


def field_of(error: str) -> str | None:
    """The body field a msgspec validation message is about (`$.x`, unknown or missing field `x`)."""
    found = _AT.search(error) or _UNKNOWN.search(error) or _MISSING.search(error)
    return found.group(1) if found else None


# --- validation errors ------------------------------------------------------------------------------
# Litestar reports a refused request as {key, message, source} entries, where `key` is "data" for
# anything about the body as a whole (a missing body, an unknown or missing field) and the message is
# msgspec's. A client needs the field it got wrong and what was expected, so every entry becomes
# {field, message, source}: `field` names the body field (`vehicle.vin` when nested) or the parameter,
# and is absent only when the body as a whole is wrong (missing, not JSON, not an object).

_NAMES = {
    "object": "a JSON object",
    "array": "an array",
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "null": "null",
}
_EXPECTED = re.compile(r"^Expected `([^`]+)`(?:, got `(\w+)`)?")
_ENUM = re.compile(r"^Invalid enum value (.+)$")


def _choices(annotation: Any) -> list[str]:
    """The values an enum or Literal annotation (possibly Optional, Annotated) accepts, else []."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _choices(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return [str(a) for a in typing.get_args(annotation)]
    if origin in (typing.Union, types.UnionType):
        return [c for a in typing.get_args(annotation) for c in _choices(a)]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(m.value) for m in annotation]
    return []


def _field_types(body: Any) -> dict[str, Any]:
    if isinstance(body, type) and issubclass(body, msgspec.Struct):
        return {f.name: f.type for f in msgspec.structs.fields(body)}
    return {}


def _required(body: Any) -> list[str]:
    if not (isinstance(body, type) and issubclass(body, msgspec.Struct)):
        return []
    return [
        f.name
        for f in msgspec.structs.fields(body)
        if f.default is msgspec.NODEFAULT and f.default_factory is msgspec.NODEFAULT
    ]


def field_errors(raw: Iterable[Any], *, body: Any = None, params: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """Litestar's validation entries as {field, message, source}: the field named, what was expected said.

    `body` is the route's body type and `params` its parameters' annotations: they say which fields a
    body requires and which values an enum accepts."""
    out: list[dict[str, str]] = []
    fields = _field_types(body)
    for entry in raw:
        if not isinstance(entry, dict):
            out.append({"message": str(entry)})
            continue
        message = str(entry.get("message", ""))
        key = entry.get("key")
        source = entry.get("source") or ("body" if key == "data" else None)
        field = (field_of(message) if key == "data" else key) or None
        if key == "data" and message == "'data'":
            # Litestar's KeyError for a request without a body.
            required = _required(body)
            message = "a JSON body is required" + (f": an object with {', '.join(required)}" if required else "")
            field = None
        elif _UNKNOWN.search(message):
            accepted = ", ".join(fields) if fields else ""
            message = "not a field of this body" + (f" (it accepts {accepted})" if accepted else "")
        elif _MISSING.search(message):
            message = "required"
        elif expected := _EXPECTED.match(message):
            # msgspec's type names, in words: "Expected `str | null`, got `int`" -> "expected a string or null, got an integer"
            wanted = " or ".join(_NAMES.get(t.strip(), t.strip()) for t in expected.group(1).split("|"))
            rest = message[expected.end() :]
            got = f", got {_NAMES.get(expected.group(2), expected.group(2))}" if expected.group(2) else ""
            message = f"expected {wanted}{got}{rest}"
        elif enum_value := _ENUM.match(message):
            annotation = (params or {}).get(str(field)) if source != "body" else fields.get(str(field))
            choices = _choices(annotation)
            message = f"one of {', '.join(choices)} expected, got {enum_value.group(1)}" if choices else message
        item = {"field": field, "message": message, "source": source}
        out.append({k: v for k, v in item.items() if v is not None})
    return out


def malformed_body(reason: str) -> list[dict[str, str]]:
    """The entry for a body that is not JSON at all (msgspec's reason, e.g. 'truncated')."""
    return [{"message": f"not valid JSON ({reason}): a JSON object was expected", "source": "body"}]
