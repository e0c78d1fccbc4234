"""The message contract: the bases every actor's `messages.py` builds on, and nothing of the runtime.

A contract module imports this and nothing heavier, so another process (or a client SDK) can use an
actor's messages without the bus, the outbox or the database. Messages are frozen, keyword-only,
tagged msgspec Structs: they cross a process boundary unchanged. `Caller` is who is asking, as the
HTTP layer (the token) or the CLI knows it; messages that need an identity carry one.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar
from uuid import UUID

import msgspec

from simveb.errors import DomainError

R = TypeVar("R")


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
