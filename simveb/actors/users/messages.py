"""The user service's public contract.

What auth needs (resolve a login, read roles and permissions, confirm a self-registration) and the
events other services keep read models from. Extended by the users work (#4) with its own queries
and commands; the messages below are the agreed interface with auth and notifications.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec

from simveb.errors import Conflict, Forbidden, Invalid, NotFound, TooManyRequests
from simveb.messages import PAGE_LIMIT_DEFAULT, Ask, Caller, Cursor, Event, Limit, Page, Record

KycStatus = Literal["unverified", "npi_verified", "kyc_verified"]
UserStatus = Literal["pending", "active", "inactive"]
UserKind = Literal["person", "company", "staff"]
Language = Literal["fr", "en"]
Sex = Literal["M", "F"]
Npi = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{10}$", description="NPI: 10 digits")]
Ifu = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{13}$", description="IFU: 13 digits")]
Phone = Annotated[str, msgspec.Meta(pattern=r"^\+22901[0-9]{8}$", description="+229 then 10 digits starting 01")]
Email = Annotated[str, msgspec.Meta(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
RoleCode = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{1,49}$")]


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

    errors = (NotFound,)

    identifier: str


class GetUserAuthz(Ask[UserAuthz]):
    """Roles and permissions as they are now (auth re-reads them at every refresh)."""

    errors = (NotFound,)

    user_id: UUID


class ConfirmRegistration(Ask[UserAuthz]):
    """Sent by auth once a self-registered citizen proved their phone with an OTP, or once an account
    created pending by its saga is complete: pending -> active (UserRegistered emitted)."""

    errors = (NotFound, Conflict)

    user_id: UUID


class UserContactChanged(Event):
    """A user was created or changed their contact details; notifications keeps its read model from it."""

    user_id: UUID
    email: str | None = None
    phone: str | None = None
    language: Literal["fr", "en"] = "fr"
    active: bool = True


class UserEmailChanged(Event):
    """A user's email changed (proved by a code sent to the new address, or set by an admin). The
    seeded subscription tells the old address (`old_email`, None when there was none): an owner
    whose account is being taken learns it where the attacker cannot hide it."""

    user_id: UUID
    old_email: str | None = None
    new_email: str
    language: Literal["fr", "en"] = "fr"
    by: str


class UserRegistered(Event, omit_defaults=True):
    """An account became active for the first time: a citizen confirmed their registration with the
    code sent to their phone, or staff created the account. Emitted after the `UserContactChanged` of
    the same transaction; the seeded welcome messages (email, in-app) listen to it, recipient `user_id`.

    Template parameters are the fields; `name` is left out when unknown (the welcome greets without it).
    """

    user_id: UUID
    kind: UserKind
    name: str | None = None


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


# --- who is asking -----------------------------------------------------------------------------------


SYSTEM = Caller(
    sub="system",
    permissions=frozenset({"users:read", "users:write", "users:roles", "users:kyc"}),
)


# --- replies -----------------------------------------------------------------------------------------


class Address(Record):
    line1: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    line2: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    city: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    department: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    country: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")] = "BJ"


class Representative(Record):
    """A person who acts for a company account."""

    user_id: UUID
    title: Annotated[str, msgspec.Meta(max_length=100)] = ""


class User(Record):
    id: UUID
    kind: UserKind
    status: UserStatus
    kyc_status: KycStatus
    email: str | None = None
    phone: str | None = None
    npi: str | None = None
    language: Language = "fr"
    display_name: str = ""
    roles: list[str] = []
    created_at: datetime
    updated_at: datetime


class UserPage(Page[User]):
    """Users, newest first."""

    items: list[User]


class Profile(Record):
    """A user's profile: the person fields, or the company fields and its representatives."""

    user_id: UUID
    kind: UserKind
    kyc_status: KycStatus
    npi: str | None = None
    email: str | None = None
    phone: str | None = None
    last_name: str | None = None
    first_name: str | None = None
    birth_date: date | None = None
    sex: Sex | None = None
    address: Address | None = None
    company_name: str | None = None
    ifu: str | None = None
    rccm: str | None = None
    representatives: list[Representative] = []
    updated_at: datetime | None = None


class RoleInfo(Record):
    code: str
    label_fr: str
    label_en: str
    description: str = ""
    permissions: list[str] = []


class RoleChange(Record):
    at: datetime
    by: str
    old_roles: list[str]
    new_roles: list[str]


class UserRoles(Record):
    user_id: UUID
    roles: list[str]
    permissions: list[str]
    history: list[RoleChange] = []


class Registration(Record):
    """Internal reply to a self-registration; the HTTP answer never shows it (no enumeration).

    `user_id` is set when a pending account now waits for its OTP (new, or the same NPI and phone
    registering again); None when the NPI or phone belongs to another live account.
    """

    user_id: UUID | None = None
    created: bool = False


# --- queries -----------------------------------------------------------------------------------------


class GetUser(Ask[User]):
    """NotFound unless the caller is the user, a representative of it, or holds users:read."""

    errors = (NotFound,)

    user_id: UUID
    caller: Caller


class ListUsers(Ask[UserPage]):
    """Needs users:read. `q` matches names, NPI, email or phone (case-insensitive substring)."""

    errors = (Forbidden,)

    caller: Caller
    cursor: Cursor | None = None
    limit: Limit = PAGE_LIMIT_DEFAULT
    role: str | None = None
    status: UserStatus | None = None
    kind: UserKind | None = None
    kyc_status: KycStatus | None = None
    q: Annotated[str, msgspec.Meta(max_length=100)] | None = None


class GetProfile(Ask[Profile]):
    errors = (NotFound,)

    user_id: UUID
    caller: Caller


class GetUserRoles(Ask[UserRoles]):
    errors = (NotFound,)

    user_id: UUID
    caller: Caller


class ListRoles(Ask[list[RoleInfo]]):
    """Every role with its permissions (the grid of the README, as data)."""


# --- commands ----------------------------------------------------------------------------------------


class RegisterCitizen(Ask[Registration]):
    """Public self-registration: a pending person account with the citizen role, confirmed by OTP."""

    errors = (Invalid,)

    npi: Npi
    phone: Phone
    last_name: Name
    first_name: Name
    birth_date: date | None = None  # given now, the NPI can be verified right after confirmation
    email: Email | None = None
    language: Language = "fr"


class CreateUser(Ask[User]):
    """Created by an admin (users:write): active at once; Conflict when an identifier is taken.

    With `pending`, the account is created pending and becomes active (and is welcomed) at
    `ConfirmRegistration`: auth's account-creation saga does that once the password is set, so an
    account whose creation is then aborted was never active nor welcomed.
    """

    errors = (Forbidden, Conflict, Invalid)

    caller: Caller
    kind: UserKind = "staff"
    roles: list[RoleCode]
    email: Email | None = None
    phone: Phone | None = None
    npi: Npi | None = None
    last_name: Name | None = None
    first_name: Name | None = None
    company_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    ifu: Ifu | None = None
    language: Language = "fr"
    pending: bool = False


class AbortCreation(Ask[None]):
    """Compensation of a failed staff creation (e.g. the password could not be set): the account is
    deactivated and released (its identifiers free again), its history kept."""

    errors = (NotFound,)

    user_id: UUID
    by: str
    reason: str


class UpdateUser(Ask[User]):
    """Contact details; a None field is left unchanged. Self or users:write; the phone (where sign-in
    codes go) only with users:write until a change proved by a code exists; one's own email never
    (Forbidden `email_change_needs_code`: `ChangeEmail`, through auth, proves the new address). An
    admin changing another user's email tells the old address (`UserEmailChanged`)."""

    errors = (Forbidden, NotFound, Conflict)

    user_id: UUID
    caller: Caller
    email: Email | None = None
    phone: Phone | None = None
    language: Language | None = None


class ChangeEmail(Ask[User]):
    """Sent by auth once the user gave their password and the code sent to the new address: the email
    changes, the history keeps old and new, `UserEmailChanged` tells the old address. Conflict
    `email_taken` when another account has it by now; `account_inactive` for a deactivated account."""

    errors = (NotFound, Conflict)

    user_id: UUID
    email: Email
    by: str


class DeactivateUser(Ask[User]):
    """Status inactive, history kept, UserDeactivated emitted. Self (account closure) or users:write."""

    errors = (Forbidden, NotFound, Conflict)

    user_id: UUID
    caller: Caller
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


class ReleaseNpi(Ask[User]):
    """An administrator (users:write) frees the NPI, phone and email an account holds (a squatted NPI):
    the account is deactivated and released, the reason kept in its history."""

    errors = (Forbidden, NotFound, Conflict)

    user_id: UUID
    caller: Caller
    reason: Annotated[str, msgspec.Meta(min_length=3, max_length=500)]


class ProfileFields(Record):
    """A profile change; a None field is left unchanged (representatives: None = unchanged)."""

    last_name: Name | None = None
    first_name: Name | None = None
    birth_date: date | None = None
    sex: Sex | None = None
    address: Address | None = None
    company_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    ifu: Ifu | None = None
    rccm: Annotated[str, msgspec.Meta(min_length=1, max_length=50)] | None = None
    representatives: Annotated[list[Representative], msgspec.Meta(max_length=20)] | None = None


class UpdateProfile(Ask[Profile]):
    """Self, a representative (company), or users:write. Verified identity fields are locked."""

    errors = (Forbidden, NotFound, Conflict, Invalid)

    user_id: UUID
    caller: Caller
    fields: ProfileFields


class SetUserRoles(Ask[UserRoles]):
    """Replace a user's roles (users:roles, never one's own); history kept, UserRolesChanged emitted."""

    errors = (Forbidden, NotFound, Conflict, Invalid)

    user_id: UUID
    caller: Caller
    roles: Annotated[list[RoleCode], msgspec.Meta(min_length=1, max_length=10)]


class VerifyNpi(Ask[User]):
    """Match the profile against ANIP (through integrations): unverified -> npi_verified.

    Conflict `npi_mismatch` naming the differing fields (never the registry's values); Unavailable
    when the registry is down. Self or users:kyc.
    """

    errors = (Forbidden, NotFound, Conflict, Invalid, TooManyRequests)

    user_id: UUID
    caller: Caller


class ValidateKyc(Ask[User]):
    """An agent (users:kyc, not the user themselves) validates the file: npi_verified -> kyc_verified."""

    errors = (Forbidden, NotFound, Conflict)

    user_id: UUID
    caller: Caller
    note: Annotated[str, msgspec.Meta(max_length=500)] = ""
