"""The users actor: accounts, profiles, roles and permissions as data, KYC, and their histories.

Every change commits its row, an append-only history entry and its events (UserContactChanged,
UserRegistered when an account becomes active the first time, UserDeactivated, UserRolesChanged)
through the outbox in one transaction: handlers
take the runtime's connection, except `VerifyNpi`, which asks the registry (through integrations)
between a read and a re-checked write and so holds no connection while it waits. Object-level
authorisation is decided here, where the data is: the HTTP layer and the CLI pass the `Caller` the
token describes, and a caller who may not see a user gets NotFound (never a hint that it exists).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from simveb.actors.integrations.messages import Citizen, LookupCitizen
from simveb.actors.users import seed_data, store
from simveb.actors.users.messages import (
    AbortCreation,
    Caller,
    ChangeEmail,
    ConfirmRegistration,
    CreateUser,
    DeactivateUser,
    GetProfile,
    GetUser,
    GetUserAuthz,
    GetUserRoles,
    ListRoles,
    ListUsers,
    Profile,
    ProfileFields,
    RegisterCitizen,
    Registration,
    ReleaseNpi,
    ResolveLogin,
    RoleInfo,
    SeedUsers,
    SetUserRoles,
    UpdateProfile,
    UpdateUser,
    User,
    UserAuthz,
    UserContactChanged,
    UserDeactivated,
    UserEmailChanged,
    UserPage,
    UserRegistered,
    UserRoles,
    UserRolesChanged,
    ValidateKyc,
    VerifyNpi,
)
from simveb.audit import Audited
from simveb.bus import Actor, handler
from simveb.errors import Conflict, Forbidden, Invalid, NotFound, TooManyRequests
from simveb.messages import decode_cursor, page

log = logging.getLogger("simveb.users")

NO_MATCH = "the profile does not match the national registry"

# Profile fields that come from the registry once the NPI is verified: editing them afterwards would
# make the verification a lie, so they are locked (an admin edit resets the KYC status instead).
IDENTITY_FIELDS = ("last_name", "first_name", "birth_date")
PHONE = re.compile(r"^\+22901[0-9]{8}$")
NPI = re.compile(r"^[0-9]{10}$")


def normalise_name(value: str | None) -> str:
    """Case-, accent-, hyphen- and space-insensitive form used to compare a name with the registry."""
    if not value:
        return ""
    decomposed = unicodedata.normalize("NFKD", value)
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(re.sub(r"[-'’.]", " ", bare).casefold().split())


def registry_mismatches(profile: Profile, citizen: Citizen) -> list[str]:
    """The profile fields that differ from ANIP's record (a missing registry birth date is no match)."""
    differ = []
    if normalise_name(profile.last_name) != normalise_name(citizen.last_name):
        differ.append("last_name")
    if normalise_name(profile.first_name) != normalise_name(citizen.first_name):
        differ.append("first_name")
    if profile.birth_date is None or profile.birth_date != citizen.birth_date:
        differ.append("birth_date")
    return differ


def _not_found(user_id: UUID) -> NotFound:
    return NotFound(f"no user {user_id}", code="unknown_user")


def _contact_event(row: store.UserRow | None) -> UserContactChanged:
    assert row is not None  # read back in the transaction that wrote it
    return UserContactChanged(
        user_id=row.id,
        email=row.email,
        phone=row.phone,
        language=row.language,
        active=row.status == "active",
    )


def _email_event(before: store.UserRow, email: str, by: str) -> UserEmailChanged:
    return UserEmailChanged(user_id=before.id, old_email=before.email, new_email=email, language=before.language, by=by)


def _display_name(*parts: str | None) -> str | None:
    return " ".join(p for p in parts if p) or None


def _unique_field(exc: asyncpg.UniqueViolationError) -> str:
    name = exc.constraint_name or ""
    for field in ("email", "phone", "npi", "ifu"):
        if field in name:
            return field
    return "identifier"


class UsersActor(Audited, Actor):
    name = "users"
    # No in-memory state: several messages at once, so a slow registry lookup during one NPI
    # verification never holds up logins. Consistency comes from row locks and unique indexes.
    concurrency = 8

    # --- access ------------------------------------------------------------------------------------

    async def _visible(self, con: asyncpg.Connection, user_id: UUID, caller: Caller) -> store.UserRow:
        """The user's row if the caller may read it; NotFound otherwise (as if it did not exist)."""
        row = await store.get_row(con, user_id)
        if row is None:
            raise _not_found(user_id)
        if caller.sub == str(user_id) or caller.can("users:read"):
            return row
        if await self._represents(con, user_id, caller):
            return row
        raise _not_found(user_id)

    async def _represents(self, con: asyncpg.Connection, company_id: UUID, caller: Caller) -> bool:
        try:
            me = UUID(caller.sub)
        except ValueError:
            return False
        return await store.is_representative(con, company_id, me)

    async def _writable(
        self, con: asyncpg.Connection, user_id: UUID, caller: Caller, *, representatives: bool = False
    ) -> store.UserRow:
        """The locked row if the caller may change it: themselves or users:write (or a representative)."""
        row = await store.get_row(con, user_id, lock=True)
        if row is None:
            raise _not_found(user_id)
        if caller.sub == str(user_id) or caller.can("users:write"):
            return row
        if representatives and await self._represents(con, user_id, caller):
            return row
        if caller.can("users:read"):
            # They can see it anyway: say why they may not change it.
            raise Forbidden("needs permission users:write", code="missing_permission")
        raise _not_found(user_id)

    # --- queries -----------------------------------------------------------------------------------

    @handler
    async def get_user(self, msg: GetUser, con: asyncpg.Connection) -> User:
        await self._visible(con, msg.user_id, msg.caller)
        return await store.get_user(con, msg.user_id)  # type: ignore[return-value]

    @handler
    async def list_users(self, msg: ListUsers, con: asyncpg.Connection) -> UserPage:
        if not msg.caller.can("users:read"):
            raise Forbidden("needs permission users:read", code="missing_permission")
        rows = await store.list_users(
            con,
            limit=msg.limit + 1,
            after=decode_cursor(msg.cursor, datetime, UUID),
            role=msg.role,
            status=msg.status,
            kind=msg.kind,
            kyc_status=msg.kyc_status,
            q=msg.q,
        )
        return page(UserPage, rows, msg.limit, lambda u: (u.created_at, u.id))

    @handler
    async def get_profile(self, msg: GetProfile, con: asyncpg.Connection) -> Profile:
        await self._visible(con, msg.user_id, msg.caller)
        return await store.get_profile(con, msg.user_id)  # type: ignore[return-value]

    @handler
    async def get_user_roles(self, msg: GetUserRoles, con: asyncpg.Connection) -> UserRoles:
        await self._visible(con, msg.user_id, msg.caller)
        # The history names the staff who made each change: shown to staff only.
        return await self._roles_reply(con, msg.user_id, history=msg.caller.can("users:read"))

    async def _roles_reply(self, con: asyncpg.Connection, user_id: UUID, *, history: bool = True) -> UserRoles:
        return UserRoles(
            user_id=user_id,
            roles=await store.roles_of(con, user_id),
            permissions=await store.permissions_of(con, user_id),
            history=await store.role_history(con, user_id) if history else [],
        )

    @handler
    async def list_roles(self, msg: ListRoles, con: asyncpg.Connection) -> list[RoleInfo]:
        return await store.all_roles(con)

    # --- what auth asks ----------------------------------------------------------------------------

    @handler
    async def resolve_login(self, msg: ResolveLogin, con: asyncpg.Connection) -> UserAuthz:
        ident = "".join(msg.identifier.split())
        if "@" in ident:
            column, value = "email", ident.lower()
        elif PHONE.match(ident):
            column, value = "phone", ident
        elif NPI.match(ident):
            column, value = "npi", ident
        else:
            raise NotFound("no account for this identifier", code="unknown_user")
        user_id = await store.find_login(con, column, value)
        found = None if user_id is None else await store.authz(con, user_id)
        if found is None:
            raise NotFound("no account for this identifier", code="unknown_user")
        return found

    @handler
    async def get_user_authz(self, msg: GetUserAuthz, con: asyncpg.Connection) -> UserAuthz:
        found = await store.authz(con, msg.user_id)
        if found is None:
            raise _not_found(msg.user_id)
        return found

    @handler
    async def confirm_registration(self, msg: ConfirmRegistration, con: asyncpg.Connection) -> UserAuthz:
        row = await store.get_row(con, msg.user_id, lock=True)
        if row is None or row.released:
            raise _not_found(msg.user_id)
        if row.status == "inactive":
            raise Conflict("this account is deactivated", code="account_inactive")
        if row.status == "pending":
            await store.set_status(con, msg.user_id, "active", "auth")
            await store.record(con, msg.user_id, "auth", "registration_confirmed", "pending", "active")
            await self.audit(con, str(msg.user_id), msg.user_id, "status_changed", old="pending", new="active")
            profile = await store.get_profile(con, msg.user_id)
            assert profile is not None
            await self.emit(
                con,
                _contact_event(await store.get_row(con, msg.user_id)),
                UserRegistered(
                    user_id=msg.user_id,
                    kind=row.kind,
                    name=profile.company_name or _display_name(profile.first_name, profile.last_name),
                ),
            )
        return await store.authz(con, msg.user_id)  # type: ignore[return-value]

    # --- creation ----------------------------------------------------------------------------------

    @handler
    async def register_citizen(self, msg: RegisterCitizen, con: asyncpg.Connection) -> Registration:
        if msg.birth_date is not None and msg.birth_date > datetime.now(UTC).date():
            raise Invalid("birth_date is in the future", code="invalid_birth_date", fields=["birth_date"])
        ttl = timedelta(hours=self.settings.users.pending_ttl_h)
        # A savepoint: a lost race (unique violation) is answered and the transaction stays usable.
        try:
            async with con.transaction():
                live = await store.live_matches(con, msg.npi, msg.phone)
                now = datetime.now(UTC)
                expired = [r.id for r in live if r.status == "pending" and now - r.created_at > ttl]
                for expired_id in expired:
                    # An abandoned registration must not hold an NPI or a phone forever.
                    await store.set_status(con, expired_id, "inactive", "system", release=True)
                    await store.record(con, expired_id, "system", "registration_expired", "pending", "inactive")

                async def audit_expired() -> None:
                    # Audited once the inserts are done: the chain's head is the last lock taken (held
                    # before the insert, it could wait on a concurrent registration that waits for it).
                    for expired_id in expired:
                        await self.audit(
                            con,
                            "system",
                            expired_id,
                            "status_changed",
                            old="pending",
                            new="inactive",
                            npi_released=True,
                        )

                live = [r for r in live if r.id not in expired]
                if live:
                    await audit_expired()
                    same = live[0]
                    if len(live) == 1 and same.status == "pending" and same.npi == msg.npi and same.phone == msg.phone:
                        return Registration(user_id=same.id, created=False)  # a retry: send a new code
                    return Registration()
                email = msg.email.lower() if msg.email else None
                if email and await store.email_taken(con, email):
                    # Registering still works; the address can be added later by its owner. Refusing
                    # here would tell an anonymous caller that this email has an account.
                    email = None
                user_id = await store.insert_user(
                    con,
                    kind="person",
                    status="pending",
                    email=email,
                    phone=msg.phone,
                    npi=msg.npi,
                    language=msg.language,
                    by="self",
                )
                await store.upsert_profile(
                    con,
                    user_id,
                    ProfileFields(last_name=msg.last_name, first_name=msg.first_name, birth_date=msg.birth_date),
                )
                await store.put_identity(con, user_id, "npi", msg.npi)
                await store.replace_roles(con, user_id, [], ["citizen"], "self")
                await store.record(con, user_id, "self", "registered", None, _public(msg))
                await self.emit(con, _contact_event(await store.get_row(con, user_id)))
                await audit_expired()
                await self.audit(con, "self", user_id, "user_created", kind="person", roles=["citizen"], pending=True)
        except asyncpg.UniqueViolationError:
            # A concurrent registration took the NPI or phone between our check and our insert.
            return Registration()
        return Registration(user_id=user_id, created=True)

    @handler
    async def create_user(self, msg: CreateUser, con: asyncpg.Connection) -> User:
        if not msg.caller.can("users:write"):
            raise Forbidden("needs permission users:write", code="missing_permission")
        roles = sorted(set(msg.roles))
        if not roles:
            raise Invalid("give at least one role", code="roles_required")
        if (msg.kind == "staff" and not msg.email) or (msg.kind != "staff" and not (msg.email or msg.phone)):
            raise Invalid("a staff account needs an email; others an email or a phone", code="contact_required")
        if msg.kind == "company" and not msg.company_name:
            raise Invalid("a company account needs company_name", code="company_name_required")
        if "admin" in roles and not msg.caller.can("users:roles"):
            raise Forbidden("creating an admin needs permission users:roles", code="missing_permission")
        by = msg.caller.sub
        # A savepoint: a unique violation becomes a Conflict.
        try:
            async with con.transaction():
                unknown = set(roles) - await store.known_roles(con, roles)
                if unknown:
                    raise Invalid(f"unknown role(s): {', '.join(sorted(unknown))}", code="unknown_role")
                user_id = await store.insert_user(
                    con,
                    kind=msg.kind,
                    status="pending" if msg.pending else "active",
                    email=msg.email.lower() if msg.email else None,
                    phone=msg.phone,
                    npi=msg.npi,
                    language=msg.language,
                    by=by,
                )
                fields = ProfileFields(
                    last_name=msg.last_name,
                    first_name=msg.first_name,
                    company_name=msg.company_name,
                    ifu=msg.ifu,
                )
                await store.upsert_profile(con, user_id, fields)
                if msg.npi:
                    await store.put_identity(con, user_id, "npi", msg.npi)
                if msg.ifu:
                    await store.put_identity(con, user_id, "ifu", msg.ifu)
                await store.replace_roles(con, user_id, [], roles, by)
                await store.record(con, user_id, by, "created", None, _public(msg))
                await self.audit(con, by, user_id, "user_created", kind=msg.kind, roles=roles, pending=msg.pending)
                await self.emit(con, _contact_event(await store.get_row(con, user_id)))
                if not msg.pending:  # a pending account is welcomed when it is confirmed
                    name = msg.company_name or _display_name(msg.first_name, msg.last_name)
                    await self.emit(con, UserRegistered(user_id=user_id, kind=msg.kind, name=name))
                return await store.get_user(con, user_id)  # type: ignore[return-value]
        except asyncpg.UniqueViolationError as exc:
            field = _unique_field(exc)
            raise Conflict(f"this {field} belongs to another account", code=f"{field}_taken", field=field) from None

    @handler
    async def abort_creation(self, msg: AbortCreation, con: asyncpg.Connection) -> None:
        row = await store.get_row(con, msg.user_id, lock=True)
        if row is None:
            raise _not_found(msg.user_id)
        await store.set_status(con, msg.user_id, "inactive", msg.by, release=True)
        await store.record(con, msg.user_id, msg.by, "creation_aborted", row.status, {"reason": msg.reason})
        await self.audit(con, msg.by, msg.user_id, "status_changed", old=row.status, new="inactive", reason=msg.reason)
        await self.emit(
            con,
            UserDeactivated(user_id=msg.user_id, by=msg.by),
            _contact_event(await store.get_row(con, msg.user_id)),
        )

    # --- changes -----------------------------------------------------------------------------------

    @handler
    async def update_user(self, msg: UpdateUser, con: asyncpg.Connection) -> User:
        # A savepoint: a unique violation becomes a Conflict.
        try:
            async with con.transaction():
                row = await self._writable(con, msg.user_id, msg.caller)
                if row.status == "inactive":
                    raise Conflict("this account is deactivated", code="account_inactive")
                if msg.phone is not None and msg.phone != row.phone and not msg.caller.can("users:write"):
                    # The phone receives the sign-in codes: changing it with nothing but an access token
                    # (perhaps a stolen one) would hand the account over for good. Until the new number is
                    # proved by a code, an agent with users:write changes it.
                    raise Forbidden(
                        "changing the phone number is done by an agent for now", code="phone_change_not_self_service"
                    )
                email = msg.email.lower() if msg.email is not None else row.email
                if email != row.email and msg.caller.sub == str(msg.user_id):
                    # With a stolen access token, a new email and then a password reset to it would
                    # take the account. One's own email changes only through the flow that asks for
                    # the password and proves the new address with a code (auth, then ChangeEmail);
                    # an admin changing it for someone else is told to the old address.
                    raise Forbidden(
                        "change your email with POST /api/users/{id}/email-change: your password, then"
                        " the code sent to the new address",
                        code="email_change_needs_code",
                    )
                old = {"email": row.email, "phone": row.phone, "language": row.language}
                new = {
                    "email": email,
                    "phone": msg.phone if msg.phone is not None else row.phone,
                    "language": msg.language or row.language,
                }
                if new != old:
                    await store.update_contact(
                        con, msg.user_id, new["email"], new["phone"], new["language"], msg.caller.sub
                    )
                    await store.record(con, msg.user_id, msg.caller.sub, "contact_changed", old, new)
                    # Which fields, not their values: the history keeps those, the trail proves the act.
                    fields = sorted(k for k in new if new[k] != old[k])
                    await self.audit(con, msg.caller, msg.user_id, "contact_changed", fields=fields)
                    changed = await store.get_row(con, msg.user_id)
                    await self.emit(con, _contact_event(changed))
                    if email != row.email and email is not None:
                        await self.emit(con, _email_event(row, email, msg.caller.sub))
                return await store.get_user(con, msg.user_id)  # type: ignore[return-value]
        except asyncpg.UniqueViolationError as exc:
            field = _unique_field(exc)
            raise Conflict(f"this {field} belongs to another account", code=f"{field}_taken", field=field) from None

    @handler
    async def change_email(self, msg: ChangeEmail, con: asyncpg.Connection) -> User:
        email = msg.email.lower()
        try:
            async with con.transaction():  # a savepoint: a unique violation becomes a Conflict
                row = await store.get_row(con, msg.user_id, lock=True)
                if row is None:
                    raise _not_found(msg.user_id)
                if row.status != "active":
                    raise Conflict("this account is not active", code="account_inactive")
                if email != row.email:
                    await store.update_contact(con, msg.user_id, email, row.phone, row.language, msg.by)
                    await store.record(
                        con,
                        msg.user_id,
                        msg.by,
                        "email_changed",
                        {"email": row.email},
                        {"email": email, "proved_by": "code sent to the new address"},
                    )
                    await self.emit(
                        con, _contact_event(await store.get_row(con, msg.user_id)), _email_event(row, email, msg.by)
                    )
                    await self.audit(con, msg.by, msg.user_id, "contact_changed", fields=["email"], proved_by="code")
                return await store.get_user(con, msg.user_id)  # type: ignore[return-value]
        except asyncpg.UniqueViolationError as exc:
            field = _unique_field(exc)
            raise Conflict(f"this {field} belongs to another account", code=f"{field}_taken", field=field) from None

    @handler
    async def deactivate_user(self, msg: DeactivateUser, con: asyncpg.Connection) -> User:
        row = await self._writable(con, msg.user_id, msg.caller)
        if row.status != "inactive":
            roles = await store.roles_of(con, msg.user_id)
            if "admin" in roles and row.status == "active" and await store.active_admins(con) <= 1:
                raise Conflict("the last active admin cannot be deactivated", code="last_admin")
            # Released too: a deactivated account must not hold its NPI, phone or email for ever.
            await store.set_status(con, msg.user_id, "inactive", msg.caller.sub, release=True)
            await store.record(con, msg.user_id, msg.caller.sub, "deactivated", row.status, {"reason": msg.reason})
            await self.audit(
                con, msg.caller, msg.user_id, "status_changed", old=row.status, new="inactive", reason=msg.reason
            )
            await self.emit(
                con,
                UserDeactivated(user_id=msg.user_id, by=msg.caller.sub),
                _contact_event(await store.get_row(con, msg.user_id)),
            )
        return await store.get_user(con, msg.user_id)  # type: ignore[return-value]

    @handler
    async def release_npi(self, msg: ReleaseNpi, con: asyncpg.Connection) -> User:
        if not msg.caller.can("users:write"):
            raise Forbidden("needs permission users:write", code="missing_permission")
        row = await store.get_row(con, msg.user_id, lock=True)
        if row is None:
            raise _not_found(msg.user_id)
        if row.status == "active" and "admin" in await store.roles_of(con, msg.user_id):
            if await store.active_admins(con) <= 1:
                raise Conflict("the last active admin cannot be released", code="last_admin")
        await store.set_status(con, msg.user_id, "inactive", msg.caller.sub, release=True)
        await store.record(
            con,
            msg.user_id,
            msg.caller.sub,
            "npi_released",
            {"npi": row.npi, "status": row.status},
            {"reason": msg.reason},
        )
        await self.audit(con, msg.caller, msg.user_id, "npi_released", old_status=row.status, reason=msg.reason)
        events: list[Any] = [_contact_event(await store.get_row(con, msg.user_id))]
        if row.status != "inactive":
            events.insert(0, UserDeactivated(user_id=msg.user_id, by=msg.caller.sub))
        await self.emit(con, *events)
        log.warning("NPI of user %s released by %s", msg.user_id, msg.caller.sub)
        return await store.get_user(con, msg.user_id)  # type: ignore[return-value]

    @handler
    async def update_profile(self, msg: UpdateProfile, con: asyncpg.Connection) -> Profile:
        f = msg.fields
        caller = msg.caller
        # A savepoint: a unique violation becomes a Conflict.
        try:
            async with con.transaction():
                row = await self._writable(con, msg.user_id, caller, representatives=True)
                if row.status == "inactive":
                    raise Conflict("this account is deactivated", code="account_inactive")
                old = await store.get_profile(con, msg.user_id)
                assert old is not None
                person = ("last_name", "first_name", "birth_date", "sex")
                company = ("company_name", "ifu", "rccm", "representatives")
                given = [name for name in (*person, "address", *company) if getattr(f, name) is not None]
                wrong = [n for n in given if n in (company if row.kind != "company" else person)]
                if wrong:
                    raise Invalid(
                        f"not a field of a {row.kind} profile: {', '.join(wrong)}",
                        code="wrong_profile_fields",
                        fields=wrong,
                    )
                if f.birth_date is not None and f.birth_date > datetime.now(UTC).date():
                    raise Invalid("birth_date is in the future", code="invalid_birth_date", fields=["birth_date"])
                if f.representatives is not None and not caller.can("users:write"):
                    # A representative must not be able to add others (or themselves) to a company.
                    raise Forbidden("changing representatives needs users:write", code="missing_permission")
                changed_identity = [
                    n for n in IDENTITY_FIELDS if getattr(f, n) is not None and getattr(f, n) != getattr(old, n)
                ]
                if changed_identity and row.kyc_status != "unverified":
                    if not caller.can("users:write"):
                        raise Conflict(
                            "these fields were verified against the registry and cannot be changed: "
                            + ", ".join(changed_identity),
                            code="identity_locked",
                            fields=changed_identity,
                        )
                    # An admin correction voids the verification: it has to be done again.
                    await store.set_kyc(con, msg.user_id, "unverified", caller.sub)
                    await store.record(con, msg.user_id, caller.sub, "kyc_reset", row.kyc_status, "unverified")
                    await self.audit(
                        con,
                        caller,
                        msg.user_id,
                        "kyc_changed",
                        old=row.kyc_status,
                        new="unverified",
                        fields=changed_identity,
                    )
                if f.ifu is not None and f.ifu != old.ifu and row.kyc_status != "unverified":
                    if not caller.can("users:write"):
                        raise Conflict(
                            "the IFU was verified and cannot be changed", code="identity_locked", fields=["ifu"]
                        )
                await store.upsert_profile(con, msg.user_id, f)
                if f.address is not None:
                    await store.put_address(con, msg.user_id, f.address)
                if f.ifu is not None:
                    await store.put_identity(con, msg.user_id, "ifu", f.ifu)
                if f.rccm is not None:
                    await store.put_identity(con, msg.user_id, "rccm", f.rccm)
                if f.representatives is not None:
                    ids = [r.user_id for r in f.representatives]
                    missing = set(ids) - await store.live_persons(con, ids)
                    if missing:
                        raise Invalid(
                            "representatives must be person accounts: " + ", ".join(sorted(map(str, missing))),
                            code="invalid_representative",
                        )
                    await store.set_representatives(con, msg.user_id, f.representatives, caller.sub)
                new = await store.get_profile(con, msg.user_id)
                await store.record(con, msg.user_id, caller.sub, "profile_changed", _profile(old), _profile(new))
                return new  # type: ignore[return-value]
        except asyncpg.UniqueViolationError as exc:
            field = _unique_field(exc)
            raise Conflict(f"this {field} belongs to another account", code=f"{field}_taken", field=field) from None

    @handler
    async def set_user_roles(self, msg: SetUserRoles, con: asyncpg.Connection) -> UserRoles:
        caller = msg.caller
        if not caller.can("users:roles"):
            raise Forbidden("needs permission users:roles", code="missing_permission")
        if caller.sub == str(msg.user_id):
            # Nobody changes their own roles, not even an admin: another admin has to.
            raise Forbidden("you cannot change your own roles", code="own_roles")
        roles = sorted(set(msg.roles))
        if not roles:
            raise Invalid("give at least one role", code="roles_required")
        row = await store.get_row(con, msg.user_id, lock=True)
        if row is None:
            raise _not_found(msg.user_id)
        unknown = set(roles) - await store.known_roles(con, roles)
        if unknown:
            raise Invalid(f"unknown role(s): {', '.join(sorted(unknown))}", code="unknown_role")
        old = await store.roles_of(con, msg.user_id)
        if old != roles:
            if "admin" in old and "admin" not in roles and row.status == "active":
                if await store.active_admins(con) <= 1:
                    raise Conflict("the last active admin keeps the admin role", code="last_admin")
            await store.replace_roles(con, msg.user_id, old, roles, caller.sub)
            await self.audit(con, caller, msg.user_id, "roles_changed", old=old, new=roles)
            await self.emit(con, UserRolesChanged(user_id=msg.user_id, roles=roles, by=caller.sub))
        return await self._roles_reply(con, msg.user_id)

    # --- KYC ---------------------------------------------------------------------------------------

    @handler
    async def verify_npi(self, msg: VerifyNpi) -> User:
        caller = msg.caller
        async with self.db.connection() as con:
            row = await self._visible(con, msg.user_id, caller)
            if caller.sub != str(msg.user_id) and not caller.can("users:kyc"):
                raise Forbidden("needs permission users:kyc", code="missing_permission")
            profile = await store.get_profile(con, msg.user_id)
        assert profile is not None
        if row.status == "inactive":
            raise Conflict("this account is deactivated", code="account_inactive")
        if row.kind != "person" or not row.npi:
            raise Conflict("only a person account with an NPI can be verified", code="no_npi")
        if row.kyc_status != "unverified":
            async with self.db.connection() as con:
                return await store.get_user(con, msg.user_id)  # type: ignore[return-value]
        # Self-service callers could find a birth date by trying: their attempts are limited, and a
        # mismatch tells them only that it does not match. Staff (users:kyc) see which fields differ.
        staff = caller.can("users:kyc")
        if not staff:
            conf = self.settings.users
            async with self.db.transaction() as con:
                attempts = await store.npi_attempt(con, msg.user_id, caller.sub, conf.npi_verify_window_h)
            if attempts > conf.npi_verify_max_attempts:
                raise TooManyRequests(
                    "too many verification attempts; an agent can verify the account",
                    retry_after=conf.npi_verify_window_h * 3600,
                    code="too_many_attempts",
                )
        # The lookup happens outside any transaction: a slow registry must not hold a row lock.
        try:
            citizen = await self.bus.ask(
                LookupCitizen(npi=row.npi, requested_by=str(msg.user_id)),
                timeout=self.settings.users.registry_timeout_s,
            )
        except NotFound:
            if not staff:
                raise Conflict(NO_MATCH, code="npi_mismatch") from None
            raise Conflict("the registry does not know this NPI", code="npi_mismatch", fields=["npi"]) from None
        differ = registry_mismatches(profile, citizen)
        if differ and not staff:
            raise Conflict(NO_MATCH, code="npi_mismatch")
        if differ:
            # Only the names of the fields: the registry's values are not disclosed to the caller.
            raise Conflict(
                "the profile does not match the national registry: " + ", ".join(differ),
                code="npi_mismatch",
                fields=differ,
            )
        async with self.db.transaction() as con:
            row = await store.get_row(con, msg.user_id, lock=True)
            current = await store.get_profile(con, msg.user_id)
            assert row is not None and current is not None
            if row.npi != citizen.npi or registry_mismatches(current, citizen):
                raise Conflict("the profile changed during the verification; try again", code="profile_changed")
            if row.kyc_status == "unverified":
                await store.set_kyc(con, msg.user_id, "npi_verified", caller.sub)
                await store.put_identity(con, msg.user_id, "npi", citizen.npi, source="anip", verified_by=caller.sub)
                if current.sex is None and citizen.sex in ("M", "F"):
                    await store.upsert_profile(con, msg.user_id, ProfileFields(sex=citizen.sex))  # type: ignore[arg-type]
                await store.record(con, msg.user_id, caller.sub, "npi_verified", "unverified", "npi_verified")
                await self.audit(con, caller, msg.user_id, "kyc_changed", old="unverified", new="npi_verified")
            return await store.get_user(con, msg.user_id)  # type: ignore[return-value]

    @handler
    async def validate_kyc(self, msg: ValidateKyc, con: asyncpg.Connection) -> User:
        caller = msg.caller
        if not caller.can("users:kyc"):
            raise Forbidden("needs permission users:kyc", code="missing_permission")
        if caller.sub == str(msg.user_id):
            raise Forbidden("you cannot validate your own file", code="own_kyc")
        row = await store.get_row(con, msg.user_id, lock=True)
        if row is None:
            raise _not_found(msg.user_id)
        if row.status == "inactive":
            raise Conflict("this account is deactivated", code="account_inactive")
        if row.kyc_status == "unverified":
            raise Conflict("verify the NPI first", code="npi_not_verified")
        if row.kyc_status == "npi_verified":
            await store.set_kyc(con, msg.user_id, "kyc_verified", caller.sub)
            await store.record(con, msg.user_id, caller.sub, "kyc_verified", "npi_verified", {"note": msg.note})
            await self.audit(con, caller, msg.user_id, "kyc_changed", old="npi_verified", new="kyc_verified")
        return await store.get_user(con, msg.user_id)  # type: ignore[return-value]

    # --- seed --------------------------------------------------------------------------------------

    @handler
    async def seed(self, msg: SeedUsers, con: asyncpg.Connection) -> int:
        if msg.only_if_empty and not await store.is_empty(con):
            return 0
        added = await seed_data.load(con)
        if added:
            log.info("seeded %d users rows (roles and permissions)", added)
        return added


def _public(msg: Any) -> dict[str, Any]:
    """A creation message as history: without the caller (recorded as the actor of the entry)."""
    data = msgspec.to_builtins(msg)
    data.pop("caller", None)
    return data


def _profile(p: Profile | None) -> dict[str, Any] | None:
    if p is None:
        return None
    data = msgspec.to_builtins(p)
    data.pop("updated_at", None)
    return data
