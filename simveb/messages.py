"""The message contract: the bases every actor's `messages.py` builds on, and nothing of the runtime.

A contract module imports this and nothing heavier, so another process (or a client SDK) can use an
actor's messages without the bus, the outbox or the database. Messages are frozen, keyword-only,
tagged msgspec Structs: they cross a process boundary unchanged. `Caller` is who is asking, as the
HTTP layer (the token) or the CLI knows it; messages that need an identity carry one.

Every list that grows pages the same way, and this module owns how: a list message carries `cursor`
(`Cursor | None`) and `limit` (`Limit`, 1..200, default 50); its reply is a `Page` subclass
(`items`, `next_cursor`, None on the last page). The cursor is opaque to clients: the list's keyset
(for most lists `(created_at, id)`) as base64url JSON, made by `page()` and read back, typed, by
`decode_cursor()`, so one piece of code encodes, checks and refuses (`InvalidCursor`, a 400) cursors.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Annotated, Any, ClassVar, Generic, TypeVar
from uuid import UUID

import msgspec

from simveb.errors import DomainError, InvalidCursor

R = TypeVar("R")
T = TypeVar("T")


class KwOnlyMeta(msgspec.StructMeta):
    """msgspec's kw_only applies to one class's own fields only; this makes it the default of a family,
    so a subclass may put a required field after an optional one without repeating the option."""

    def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **options: Any) -> Any:
        options.setdefault("kw_only", True)
        return super().__new__(mcls, name, bases, namespace, **options)


class Record(msgspec.Struct, metaclass=KwOnlyMeta, frozen=True):
    """Base of replies and value objects carried by messages: frozen and keyword-only."""


class Message(msgspec.Struct, metaclass=KwOnlyMeta, frozen=True, tag=True, tag_field="msg_type"):
    """Base of every message: frozen, keyword-only, tagged with its class name."""


class Ask(Message, Generic[R]):
    """A request answered with an R (or a DomainError).

    `errors` declares the DomainErrors its handler answers with (part of the contract: the HTTP
    layer documents them on every route that asks this message). An ask timeout (Unavailable) is
    always possible and need not be listed.
    """

    errors: ClassVar[tuple[type[DomainError], ...]] = ()


class Tell(Message):
    """A command that expects no reply."""


class Event(Message):
    """Something that happened. Delivered to every actor with a handler for it."""


class Caller(Record):
    """Who is asking: the subject of the access token (a user id, or "system" / "cli:<name>"), its roles
    and permissions. The HTTP layer builds it once per request from the verified token; the CLI and
    the actors' own sagas build it for themselves.

    It answers only what the token says. Object-level decisions (is this my vehicle, my request) are
    the owning actor's: it sees the data.
    """

    sub: str
    roles: tuple[str, ...] = ()
    permissions: frozenset[str] = frozenset()

    def can(self, *permissions: str) -> bool:
        """Does the caller hold every one of these permissions?"""
        return all(p in self.permissions for p in permissions)

    def has_role(self, *roles: str) -> bool:
        return any(r in self.roles for r in roles)

    @property
    def user_id(self) -> UUID | None:
        """The caller's user id, or None for the system and the CLI."""
        try:
            return UUID(self.sub)
        except ValueError:
            return None


class ContractError(RuntimeError):
    """Two messages share a tag: a programming mistake found when the contracts are indexed."""


def event_types() -> dict[str, type[Event]]:
    """Every Event subclass by tag, to decode outbox rows; refuses two events with the same tag."""
    found: dict[str, type[Event]] = {}
    stack = list(Event.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        tag = cls.__struct_config__.tag
        if tag in found and found[tag] is not cls:
            raise ContractError(f"two events share the tag {tag!r}: {found[tag].__module__} and {cls.__module__}")
        found[tag] = cls
    return found


# --- pages ---------------------------------------------------------------------------------------

PAGE_LIMIT_DEFAULT = 50
PAGE_LIMIT_MAX = 200
CURSOR_MAX_LENGTH = 512
CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"

Limit = Annotated[int, msgspec.Meta(ge=1, le=PAGE_LIMIT_MAX, description=f"Items per page, 1 to {PAGE_LIMIT_MAX}.")]
Cursor = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=CURSOR_MAX_LENGTH,
        pattern=CURSOR_PATTERN,
        description="The next_cursor of the previous page, as given (opaque).",
    ),
]


class Page(Record, Generic[T]):
    """One page of a list: its items and the cursor of the next page (None on the last page).

    Each list's reply subclasses it and names its item type again (`items: list[Vehicle]`), so the
    OpenAPI document shows the item schema under a readable name (`VehiclePage`)."""

    items: list[T]
    next_cursor: str | None = None


P = TypeVar("P", bound=Page[Any])


def encode_cursor(*key: Any) -> str:
    """An opaque cursor from a keyset (datetimes, UUIDs, numbers, strings), base64url without padding."""
    return base64.urlsafe_b64encode(msgspec.json.encode(key)).rstrip(b"=").decode()


def decode_cursor(cursor: str | None, *types: Any) -> tuple[Any, ...] | None:
    """The keyset a cursor of this list carries, typed as `types`; None for the first page.

    A cursor that is not one of this list's (garbled, from another list, edited) is an
    `InvalidCursor` (400), never a 500 and never a silent first page."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return msgspec.json.decode(raw, type=tuple[types])  # type: ignore[valid-type]
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidCursor() from None


def page(cls: type[P], rows: Sequence[Any], limit: int, key: Callable[[Any], tuple[Any, ...]]) -> P:
    """The page of `rows` fetched with `limit + 1`: the extra row only says that a next page exists,
    and the cursor is the keyset of the last item shown."""
    items = list(rows[:limit])
    more = len(rows) > limit and bool(items)
    return cls(items=items, next_cursor=encode_cursor(*key(items[-1])) if more else None)
