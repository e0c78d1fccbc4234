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

import re
import sys
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


def body_of(message: type[msgspec.Struct], *, exclude: Iterable[str] = (), name: str, doc: str = "") -> type[Input]:
    """An HTTP body made of a message's own fields (types, constraints, defaults), less those the route
    fills in itself (the caller, path parameters). One list of fields serves the contract and the route."""
    skip = set(exclude)
    known = {f.name for f in msgspec.structs.fields(message)}
    if skip - known:
        raise TypeError(f"{message.__name__} has no field {sorted(skip - known)}")
    annotations: dict[str, Any] = {}
    # The calling module, so the body is documented (OpenAPI) under the route's module.
    namespace: dict[str, Any] = {"__module__": sys._getframe(1).f_globals.get("__name__", __name__)}
    for f in msgspec.structs.fields(message):
        if f.name in skip:
            continue
        annotations[f.name] = f.type
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
