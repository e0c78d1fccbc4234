"""HTTP routes of the users service: accounts, profiles, roles, NPI verification and KYC.

Only translation and orchestration live here. Object-level checks (is it my account, do I represent
that company) are the users actor's: every message carries the `Caller` built from the token, and
a user the caller may not see answers 404, exactly like one that does not exist.

Two flows span users and auth; this module orchestrates them because users may not ask auth (auth
asks users, and the ask graph must stay acyclic):

- Self-registration (public `POST /api/users`): users creates a pending account, then auth sends a
  code to the phone (`RequestOtp`, purpose "register"); auth's verify-otp confirms it with users.
  The answer is always the same 202, whether the account was created, was already pending, or the
  NPI or phone belongs to another account: an anonymous caller cannot learn who is registered.
  What remains observable is unavoidable: the owner of a phone receives the code only when the
  registration holds that phone. Auth decides whom it sends a code to and returns the same shape
  either way; when auth is not running in this process, the 202 carries no challenge.
- Staff creation (`POST /api/users` with a token holding users:write): one `CreateAccount` to auth,
  which runs the saga (policy, users' CreateUser, password, and `AbortCreation` if the password
  cannot be set).
- Email change (`POST /api/users/{me}/email-change`, then `/email-change/confirm`): auth checks the
  password and sends a code to the new address, then, with the code, asks users to `ChangeEmail`,
  which tells the old address. `PUT /api/users/{me}` refuses one's own email (a stolen access token
  and a password reset to a new address would otherwise take the account).
"""

from __future__ import annotations

import functools
import logging
import operator
import typing
from datetime import datetime
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.exceptions import ValidationException
from litestar.params import Parameter

from simveb.actors.auth.messages import (
    ConfirmEmailChange,
    CreateAccount,
    OtpRequested,
    RequestEmailChange,
    RequestOtp,
)
from simveb.actors.users.messages import (
    Caller,
    CreateUser,
    DeactivateUser,
    Email,
    GetProfile,
    GetUser,
    GetUserRoles,
    Ifu,
    KycStatus,
    Language,
    ListRoles,
    ListUsers,
    Name,
    Npi,
    Phone,
    Profile,
    ProfileFields,
    RegisterCitizen,
    ReleaseNpi,
    RoleCode,
    RoleInfo,
    SetUserRoles,
    UpdateProfile,
    UpdateUser,
    User,
    UserKind,
    UserPage,
    UserRoles,
    UserStatus,
    ValidateKyc,
    VerifyNpi,
)
from simveb.bus import Bus
from simveb.errors import NotFound
from simveb.http.inputs import CursorQuery, Input, LimitQuery, body_of, field_of, record_of
from simveb.http.security import requires
from simveb.messages import PAGE_LIMIT_DEFAULT

log = logging.getLogger("simveb.http.users")
T = TypeVar("T")

PUBLIC = {"public": True}


RegistrationIn = body_of(
    RegisterCitizen,
    name="RegistrationIn",
    doc="A citizen registers with their NPI and phone; the account waits for the OTP.",
)


class UserIn(Input):
    """An admin creates an account (staff by default) with its roles and, optionally, a password."""

    roles: Annotated[list[RoleCode], msgspec.Meta(min_length=1, max_length=10)]
    kind: UserKind = "staff"
    email: Email | None = None
    phone: Phone | None = None
    npi: Npi | None = None
    last_name: Name | None = None
    first_name: Name | None = None
    company_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    ifu: Ifu | None = None
    language: Language = "fr"
    password: Annotated[str, msgspec.Meta(max_length=1024)] | None = None


def either(name: str, doc: str, *variants: type[msgspec.Struct]) -> type[Input]:
    """One body listing every field of the variants, each optional and unset by default: typed (OpenAPI
    shows it), and the route then decodes what was sent strictly into the variant that applies."""
    types: dict[str, Any] = {}
    for variant in variants:
        for f in msgspec.structs.fields(variant):
            known = types.setdefault(f.name, [])
            for t in typing.get_args(f.type) if typing.get_origin(f.type) in (Union, UnionType) else (f.type,):
                if t not in known:
                    known.append(t)
    annotations = {n: functools.reduce(operator.or_, [*ts, msgspec.UnsetType]) for n, ts in types.items()}
    namespace = {"__module__": __name__, "__doc__": doc, "__annotations__": annotations}
    namespace.update(dict.fromkeys(annotations, msgspec.UNSET))
    return type(Input)(name, (Input,), namespace)


AccountIn = either(
    "AccountIn",
    "Without a token: a citizen's registration (npi, phone, last_name, first_name, birth_date, email,"
    " language; anything else is refused). With a token holding users:write: an account created by an"
    " admin (roles, kind, contact details, names, company_name, ifu, language, password).",
    RegistrationIn,
    UserIn,
)


def sent_as(data: msgspec.Struct, variant: type[T]) -> T:
    """The fields the client sent, decoded strictly as `variant`: a field of the other variant is a 400."""
    sent = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
    try:
        return msgspec.convert(sent, variant)
    except msgspec.ValidationError as exc:
        text = str(exc)
        raise ValidationException(
            detail="Validation failed for POST /api/users", extra=[{"key": field_of(text) or "", "message": text}]
        ) from None


UserUpdate = body_of(UpdateUser, exclude=("user_id", "caller"), name="UserUpdate")


class ProfileIn(ProfileFields, forbid_unknown_fields=True):
    """Person fields (names, birth date, sex, address) or company fields; absent = unchanged.

    The message's own struct, refusing unknown fields like every HTTP body (see simveb.http.inputs)."""


RolesIn = body_of(SetUserRoles, exclude=("user_id", "caller"), name="RolesIn")
KycIn = body_of(ValidateKyc, exclude=("user_id", "caller"), name="KycIn")


class EmailChangeIn(Input):
    """The new address and the current password (a stolen access token alone is not enough)."""

    email: Email
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class EmailChangeConfirmIn(Input):
    """The code sent to the new address."""

    challenge_id: UUID
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class ReleaseIn(Input):
    reason: Annotated[str, msgspec.Meta(min_length=3, max_length=500)]


class RegistrationAccepted(msgspec.Struct, kw_only=True):
    """The same answer whatever happened (see the module docstring)."""

    status: Literal["pending_confirmation"] = "pending_confirmation"
    detail: str = (
        "If these details can be registered, a code was sent by SMS to this phone number;"
        " confirm it with POST /api/auth/verify-otp."
    )
    challenge_id: UUID | None = None
    expires_at: datetime | None = None
    resend_after_s: int | None = None


# --- helpers ------------------------------------------------------------------------------------------


def _client_ip(request: Request[Any, Any, Any]) -> str | None:
    return request.client.host if request.client else None


def _only_self(caller: Caller, user_id: UUID) -> None:
    """An email change is the account owner's own act: anyone else's id is a 404, as if it did not exist."""
    if caller.sub != str(user_id):
        raise NotFound(f"no user {user_id}", code="unknown_user")


# --- routes -------------------------------------------------------------------------------------------


class UsersController(Controller):
    path = "/api/users"
    tags = ["users"]

    @get("/", guards=[requires("users:read")])
    async def list_users(
        self,
        bus: Bus,
        caller: Caller,
        cursor: CursorQuery = None,
        limit: LimitQuery = PAGE_LIMIT_DEFAULT,
        role: Annotated[
            str | None, Parameter(max_length=40, pattern=r"^[a-z][a-z0-9_]*$", description="Users holding this role.")
        ] = None,
        status: UserStatus | None = None,
        kind: UserKind | None = None,
        kyc_status: KycStatus | None = None,
        q: Annotated[
            str | None,
            Parameter(max_length=100, description="Contained in the name, NPI, email or phone (case-insensitive)."),
        ] = None,
    ) -> UserPage:
        """Users, newest first, filtered by role, status, kind or KYC status, searched by name, NPI, email or phone."""
        return await bus.ask(
            ListUsers(
                caller=caller,
                cursor=cursor,
                limit=limit,
                role=role,
                status=status,
                kind=kind,
                kyc_status=kyc_status,
                q=q or None,
            )
        )

    @post("/", opt=PUBLIC, status_code=201)
    async def create_user(
        self, bus: Bus, maybe_caller: Caller | None, request: Request[Any, Any, Any], data: AccountIn
    ) -> Response[Any]:
        """Self-registration of a citizen (no token: 202, confirmed by OTP) or creation by an admin (users:write)."""
        if maybe_caller is None:
            return await self._register(bus, request, sent_as(data, RegistrationIn))
        await requires("users:write")(request, request.route_handler)
        fields = msgspec.structs.asdict(sent_as(data, UserIn))
        password = fields.pop("password")
        created = await bus.ask(CreateAccount(user=CreateUser(caller=maybe_caller, **fields), password=password))
        return Response(created.user, status_code=201)

    async def _register(self, bus: Bus, request: Request[Any, Any, Any], data: Any) -> Response[Any]:
        await bus.ask(RegisterCitizen(**msgspec.structs.asdict(data)))
        accepted = RegistrationAccepted()
        if bus.handles(RequestOtp):
            # Asked whatever the registration found: the same work, the same answer, every time.
            otp: OtpRequested = await bus.ask(
                RequestOtp(identifier=data.phone, purpose="register", client_ip=_client_ip(request))
            )
            accepted = RegistrationAccepted(
                challenge_id=otp.challenge_id, expires_at=otp.expires_at, resend_after_s=otp.resend_after_s
            )
        return Response(accepted, status_code=202)

    @get("/{user_id:uuid}")
    async def get_user(self, bus: Bus, caller: Caller, user_id: UUID) -> User:
        """One user: oneself, a company one represents, or anyone with users:read."""
        return await bus.ask(GetUser(user_id=user_id, caller=caller))

    @put("/{user_id:uuid}")
    async def update_user(self, bus: Bus, caller: Caller, user_id: UUID, data: UserUpdate) -> User:
        """Change contact details: language (oneself), email and phone (users:write, for others; one's
        own email goes through /email-change)."""
        return await bus.ask(
            UpdateUser(user_id=user_id, caller=caller, email=data.email, phone=data.phone, language=data.language)
        )

    @post("/{user_id:uuid}/email-change", status_code=202)
    async def request_email_change(
        self, bus: Bus, caller: Caller, request: Request[Any, Any, Any], user_id: UUID, data: EmailChangeIn
    ) -> OtpRequested:
        """Ask to change one's email: the password, then a code is sent to the new address (confirm it next)."""
        _only_self(caller, user_id)
        return await bus.ask(
            RequestEmailChange(
                user_id=user_id, new_email=data.email, password=data.password, client_ip=_client_ip(request)
            )
        )

    @post("/{user_id:uuid}/email-change/confirm", status_code=200)
    async def confirm_email_change(
        self, bus: Bus, caller: Caller, request: Request[Any, Any, Any], user_id: UUID, data: EmailChangeConfirmIn
    ) -> User:
        """Confirm an email change with the code sent to the new address; the old address is told."""
        _only_self(caller, user_id)
        return await bus.ask(
            ConfirmEmailChange(
                user_id=user_id, challenge_id=data.challenge_id, code=data.code, client_ip=_client_ip(request)
            )
        )

    @delete("/{user_id:uuid}", status_code=200)
    async def deactivate_user(self, bus: Bus, caller: Caller, user_id: UUID) -> User:
        """Deactivate (nothing is erased; sessions are revoked): oneself or users:write."""
        return await bus.ask(DeactivateUser(user_id=user_id, caller=caller))

    @get("/{user_id:uuid}/profile")
    async def get_profile(self, bus: Bus, caller: Caller, user_id: UUID) -> Profile:
        """The person or company profile, with address and representatives."""
        return await bus.ask(GetProfile(user_id=user_id, caller=caller))

    @put("/{user_id:uuid}/profile")
    async def update_profile(self, bus: Bus, caller: Caller, user_id: UUID, data: ProfileIn) -> Profile:
        """Change the profile; names and birth date are locked once verified against the registry."""
        fields = record_of(data, ProfileFields)
        return await bus.ask(UpdateProfile(user_id=user_id, caller=caller, fields=fields))

    @get("/{user_id:uuid}/roles")
    async def get_roles(self, bus: Bus, caller: Caller, user_id: UUID) -> UserRoles:
        """The user's roles, the permissions they give, and the history of role changes."""
        return await bus.ask(GetUserRoles(user_id=user_id, caller=caller))

    @put("/{user_id:uuid}/roles", guards=[requires("users:roles")])
    async def set_roles(self, bus: Bus, caller: Caller, user_id: UUID, data: RolesIn) -> UserRoles:
        """Replace the user's roles (users:roles; never one's own). Their sessions are revoked."""
        return await bus.ask(SetUserRoles(user_id=user_id, caller=caller, roles=data.roles))

    @post("/{user_id:uuid}/verify-npi", status_code=200)
    async def verify_npi(self, bus: Bus, caller: Caller, user_id: UUID) -> User:
        """Match the profile against ANIP: 409 naming the fields that differ, 503 when the registry is down."""
        return await bus.ask(VerifyNpi(user_id=user_id, caller=caller))

    @post("/{user_id:uuid}/release-npi", status_code=200, guards=[requires("users:write")])
    async def release_npi(self, caller: Caller, bus: Bus, user_id: UUID, data: ReleaseIn) -> User:
        """Free the NPI (and phone, email) an account holds, e.g. a squatted NPI: the account is
        deactivated and released; the reason is kept in its history (users:write)."""
        return await bus.ask(ReleaseNpi(user_id=user_id, caller=caller, reason=data.reason))

    @post("/{user_id:uuid}/kyc", status_code=200, guards=[requires("users:kyc")])
    async def validate_kyc(self, bus: Bus, caller: Caller, user_id: UUID, data: KycIn | None = None) -> User:
        """An agent validates the file of an NPI-verified user: kyc_verified (users:kyc)."""
        return await bus.ask(ValidateKyc(user_id=user_id, caller=caller, note=data.note if data else ""))


class RolesController(Controller):
    path = "/api/roles"
    tags = ["users"]

    @get("/")
    async def list_roles(self, bus: Bus) -> list[RoleInfo]:
        """Every role and the permissions it gives."""
        return await bus.ask(ListRoles())


CONTROLLERS: list[Any] = [UsersController, RolesController]
