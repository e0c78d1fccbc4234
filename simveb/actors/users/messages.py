"""The user service's public contract.

What auth needs (resolve a login, read roles and permissions, confirm a self-registration) and the
events other services keep read models from. Extended by the users work (#4) with its own queries
and commands; the messages below are the agreed interface with auth and notifications.
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from simveb.bus import Ask, Event, Record

KycStatus = Literal["unverified", "npi_verified", "kyc_verified"]
UserStatus = Literal["pending", "active", "inactive"]


class UserAuthz(Record):
    """What auth needs to decide a login and sign a token."""

    user_id: UUID
    status: UserStatus
    kind: Literal["person", "company", "staff"]
    roles: list[str]
    permissions: list[str]
    email: str | None = None
    phone: str | None = None
    npi: str | None = None
    language: Literal["fr", "en"] = "fr"
    kyc_status: KycStatus = "unverified"


class ResolveLogin(Ask[UserAuthz]):
    """Find a user by email, phone (+229...) or NPI; NotFound when none matches."""

    identifier: str


class GetUserAuthz(Ask[UserAuthz]):
    """Roles and permissions as they are now (auth re-reads them at every refresh)."""

    user_id: UUID


class ConfirmRegistration(Ask[UserAuthz]):
    """Sent by auth once a self-registered citizen proved their phone with an OTP: pending -> active."""

    user_id: UUID


class UserContactChanged(Event):
    """A user was created or changed their contact details; notifications keeps its read model from it."""

    user_id: UUID
    email: str | None = None
    phone: str | None = None
    language: Literal["fr", "en"] = "fr"
    active: bool = True


class UserDeactivated(Event):
    """A user was deactivated: auth revokes their sessions."""

    user_id: UUID
    by: str


class UserRolesChanged(Event):
    """Roles changed: auth revokes the user's sessions so the next token carries the new permissions."""

    user_id: UUID
    roles: list[str]
    by: str


class SeedUsers(Ask[int]):
    """Load the roles and permissions; returns rows added."""

    only_if_empty: bool = False
