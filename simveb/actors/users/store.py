"""SQL of the user service: every query on the `users` schema, returning msgspec Structs."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from simveb.actors.users.messages import (
    Address,
    KycStatus,
    Language,
    Profile,
    ProfileFields,
    Representative,
    RoleChange,
    RoleInfo,
    User,
    UserAuthz,
    UserKind,
    UserStatus,
)
from simveb.db import from_row, from_rows

# --- users -------------------------------------------------------------------------------------------

_USER_SELECT = (
    "SELECT u.id, u.kind, u.status, u.kyc_status, u.email, u.phone, u.npi, u.language,"
    " coalesce(p.company_name, nullif(concat_ws(' ', p.first_name, p.last_name), ''), '') AS display_name,"
    " coalesce((SELECT array_agg(r.role ORDER BY r.role) FROM users.user_roles r WHERE r.user_id = u.id),"
    " '{}') AS roles, u.created_at, u.updated_at"
    " FROM users.users u LEFT JOIN users.profiles p ON p.user_id = u.id"
)


async def get_user(con: asyncpg.Connection, user_id: UUID) -> User | None:
    return from_row(User, await con.fetchrow(_USER_SELECT + " WHERE u.id = $1", user_id))


class UserRow(msgspec.Struct, frozen=True, kw_only=True):
    """The bare users row, as this actor decides on it (with `released` and its bookkeeping)."""

    id: UUID
    kind: UserKind
    status: UserStatus
    kyc_status: KycStatus
    email: str | None
    phone: str | None
    npi: str | None
    language: Language
    released: bool
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str
    deactivated_at: datetime | None


_ROW_COLS = ", ".join(UserRow.__struct_fields__)


async def get_row(con: asyncpg.Connection, user_id: UUID, *, lock: bool = False) -> UserRow | None:
    """The bare users row, optionally locked for a change."""
    row = await con.fetchrow(
        f"SELECT {_ROW_COLS} FROM users.users WHERE id = $1" + (" FOR UPDATE" if lock else ""),
        user_id,
    )
    return from_row(UserRow, row)


async def live_matches(con: asyncpg.Connection, npi: str, phone: str) -> list[UserRow]:
    """Live accounts holding this NPI or this phone, locked (a registration is deciding about them)."""
    rows = await con.fetch(
        f"SELECT {_ROW_COLS} FROM users.users WHERE NOT released AND (npi = $1 OR phone = $2)"
        " ORDER BY created_at FOR UPDATE",
        npi,
        phone,
    )
    return from_rows(UserRow, rows)


async def email_taken(con: asyncpg.Connection, email: str, *, other_than: UUID | None = None) -> bool:
    return bool(
        await con.fetchval(
            "SELECT EXISTS (SELECT 1 FROM users.users WHERE NOT released AND email = $1"
            " AND ($2::uuid IS NULL OR id <> $2))",
            email,
            other_than,
        )
    )


async def insert_user(
    con: asyncpg.Connection,
    *,
    kind: str,
    status: str,
    email: str | None,
    phone: str | None,
    npi: str | None,
    language: str,
    by: str,
) -> UUID:
    return await con.fetchval(
        "INSERT INTO users.users (kind, status, email, phone, npi, language, created_by, updated_by)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING id",
        kind,
        status,
        email,
        phone,
        npi,
        language,
        by,
    )


async def update_contact(
    con: asyncpg.Connection, user_id: UUID, email: str | None, phone: str | None, language: str, by: str
) -> None:
    await con.execute(
        "UPDATE users.users SET email = $2, phone = $3, language = $4, updated_at = now(), updated_by = $5"
        " WHERE id = $1",
        user_id,
        email,
        phone,
        language,
        by,
    )


async def set_status(con: asyncpg.Connection, user_id: UUID, status: str, by: str, *, release: bool = False) -> None:
    await con.execute(
        "UPDATE users.users SET status = $2, updated_at = now(), updated_by = $3,"
        " deactivated_at = CASE WHEN $2 = 'inactive' THEN coalesce(deactivated_at, now()) END,"
        " released = released OR $4"
        " WHERE id = $1",
        user_id,
        status,
        by,
        release,
    )


async def set_kyc(con: asyncpg.Connection, user_id: UUID, kyc_status: str, by: str) -> None:
    await con.execute(
        "UPDATE users.users SET kyc_status = $2, updated_at = now(), updated_by = $3 WHERE id = $1",
        user_id,
        kyc_status,
        by,
    )


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def list_users(
    con: asyncpg.Connection,
    *,
    limit: int,
    after: tuple[Any, ...] | None,
    role: str | None,
    status: str | None,
    kind: str | None,
    kyc_status: str | None,
    q: str | None,
) -> list[User]:
    """Users matching the filters, newest first, after the keyset `after` (created_at, id)."""
    pattern = None
    if q and q.strip():
        pattern = "%" + _escape_like(q.strip().lower()) + "%"
    where = (
        " WHERE ($1::text IS NULL OR EXISTS (SELECT 1 FROM users.user_roles ur WHERE ur.user_id = u.id AND ur.role = $1))"
        " AND ($2::text IS NULL OR u.status = $2)"
        " AND ($3::text IS NULL OR u.kind = $3)"
        " AND ($4::text IS NULL OR u.kyc_status = $4)"
        " AND ($5::text IS NULL OR u.email LIKE $5 OR u.phone LIKE $5 OR u.npi LIKE $5"
        " OR users.fold(concat_ws(' ', p.first_name, p.last_name)) LIKE users.fold($5)"
        " OR users.fold(concat_ws(' ', p.last_name, p.first_name)) LIKE users.fold($5)"
        " OR users.fold(p.company_name) LIKE users.fold($5))"
        " AND ($6::timestamptz IS NULL OR (u.created_at, u.id) < ($6, $7::uuid))"
    )
    at, uid = after or (None, None)
    rows = await con.fetch(
        _USER_SELECT + where + " ORDER BY u.created_at DESC, u.id DESC LIMIT $8",
        *(role, status, kind, kyc_status, pattern, at, uid),
        limit,
    )
    return from_rows(User, rows)


# --- profiles, identities, addresses, representatives -------------------------------------------------


async def get_profile(con: asyncpg.Connection, user_id: UUID) -> Profile | None:
    row = await con.fetchrow(
        "SELECT u.id AS user_id, u.kind, u.kyc_status, u.npi, u.email, u.phone, p.last_name, p.first_name,"
        " p.birth_date, p.sex, p.company_name, p.ifu, p.rccm, p.updated_at"
        " FROM users.users u LEFT JOIN users.profiles p ON p.user_id = u.id WHERE u.id = $1",
        user_id,
    )
    if row is None:
        return None
    data = dict(row)
    addr = await con.fetchrow(
        "SELECT line1, line2, city, department, country FROM users.addresses WHERE user_id = $1 AND kind = 'main'",
        user_id,
    )
    data["address"] = None if addr is None else dict(addr)
    data["representatives"] = [
        dict(r)
        for r in await con.fetch(
            "SELECT user_id, title FROM users.representatives WHERE company_id = $1 ORDER BY added_at, user_id",
            user_id,
        )
    ]
    return msgspec.convert(data, Profile)


async def upsert_profile(con: asyncpg.Connection, user_id: UUID, f: ProfileFields) -> None:
    """Write the fields that are set (None leaves a column as it is)."""
    await con.execute(
        "INSERT INTO users.profiles (user_id, last_name, first_name, birth_date, sex, company_name, ifu, rccm)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (user_id) DO UPDATE SET"
        " last_name = coalesce(EXCLUDED.last_name, users.profiles.last_name),"
        " first_name = coalesce(EXCLUDED.first_name, users.profiles.first_name),"
        " birth_date = coalesce(EXCLUDED.birth_date, users.profiles.birth_date),"
        " sex = coalesce(EXCLUDED.sex, users.profiles.sex),"
        " company_name = coalesce(EXCLUDED.company_name, users.profiles.company_name),"
        " ifu = coalesce(EXCLUDED.ifu, users.profiles.ifu),"
        " rccm = coalesce(EXCLUDED.rccm, users.profiles.rccm),"
        " updated_at = now()",
        user_id,
        f.last_name,
        f.first_name,
        f.birth_date,
        f.sex,
        f.company_name,
        f.ifu,
        f.rccm,
    )


async def put_address(con: asyncpg.Connection, user_id: UUID, a: Address) -> None:
    await con.execute(
        "INSERT INTO users.addresses (user_id, kind, line1, line2, city, department, country)"
        " VALUES ($1, 'main', $2, $3, $4, $5, $6) ON CONFLICT (user_id, kind) DO UPDATE SET"
        " line1 = EXCLUDED.line1, line2 = EXCLUDED.line2, city = EXCLUDED.city,"
        " department = EXCLUDED.department, country = EXCLUDED.country, updated_at = now()",
        user_id,
        a.line1,
        a.line2,
        a.city,
        a.department,
        a.country,
    )


async def put_identity(
    con: asyncpg.Connection,
    user_id: UUID,
    kind: str,
    value: str,
    *,
    source: str = "declared",
    verified_by: str | None = None,
) -> None:
    """Record an identity document; a verification stamps it with the registry and the time."""
    await con.execute(
        "INSERT INTO users.identities (user_id, kind, value, source, verified_at, verified_by)"
        " VALUES ($1, $2, $3, $4, CASE WHEN $5::text IS NULL THEN NULL ELSE now() END, $5)"
        " ON CONFLICT (user_id, kind) DO UPDATE SET value = EXCLUDED.value, source = EXCLUDED.source,"
        " verified_at = EXCLUDED.verified_at, verified_by = EXCLUDED.verified_by",
        user_id,
        kind,
        value,
        source,
        verified_by,
    )


async def set_representatives(con: asyncpg.Connection, company_id: UUID, reps: list[Representative], by: str) -> None:
    await con.execute("DELETE FROM users.representatives WHERE company_id = $1", company_id)
    await con.executemany(
        "INSERT INTO users.representatives (company_id, user_id, title, added_by) VALUES ($1, $2, $3, $4)",
        [(company_id, r.user_id, r.title, by) for r in reps],
    )


async def is_representative(con: asyncpg.Connection, company_id: UUID, user_id: UUID) -> bool:
    return bool(
        await con.fetchval(
            "SELECT EXISTS (SELECT 1 FROM users.representatives WHERE company_id = $1 AND user_id = $2)",
            company_id,
            user_id,
        )
    )


async def live_persons(con: asyncpg.Connection, ids: list[UUID]) -> set[UUID]:
    rows = await con.fetch(
        "SELECT id FROM users.users WHERE id = ANY($1) AND kind = 'person' AND status <> 'inactive'", ids
    )
    return {r["id"] for r in rows}


# --- roles and permissions ---------------------------------------------------------------------------


async def roles_of(con: asyncpg.Connection, user_id: UUID) -> list[str]:
    rows = await con.fetch("SELECT role FROM users.user_roles WHERE user_id = $1 ORDER BY role", user_id)
    return [r["role"] for r in rows]


async def permissions_of(con: asyncpg.Connection, user_id: UUID) -> list[str]:
    rows = await con.fetch(
        "SELECT DISTINCT rp.permission FROM users.user_roles ur"
        " JOIN users.role_permissions rp ON rp.role = ur.role WHERE ur.user_id = $1 ORDER BY 1",
        user_id,
    )
    return [r["permission"] for r in rows]


async def known_roles(con: asyncpg.Connection, codes: list[str]) -> set[str]:
    rows = await con.fetch("SELECT code FROM users.roles WHERE code = ANY($1)", codes)
    return {r["code"] for r in rows}


async def replace_roles(con: asyncpg.Connection, user_id: UUID, old: list[str], new: list[str], by: str) -> None:
    """Set the user's roles and append the change to role_history (in the caller's transaction)."""
    await con.execute("DELETE FROM users.user_roles WHERE user_id = $1 AND NOT (role = ANY($2))", user_id, new)
    await con.executemany(
        "INSERT INTO users.user_roles (user_id, role, granted_by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        [(user_id, role, by) for role in new],
    )
    await con.execute(
        "INSERT INTO users.role_history (user_id, actor, old_roles, new_roles) VALUES ($1, $2, $3, $4)",
        user_id,
        by,
        old,
        new,
    )


async def role_history(con: asyncpg.Connection, user_id: UUID, limit: int = 50) -> list[RoleChange]:
    rows = await con.fetch(
        "SELECT at, actor AS by, old_roles, new_roles FROM users.role_history WHERE user_id = $1"
        " ORDER BY id DESC LIMIT $2",
        user_id,
        limit,
    )
    return from_rows(RoleChange, rows)


async def all_roles(con: asyncpg.Connection) -> list[RoleInfo]:
    rows = await con.fetch(
        "SELECT r.code, r.label_fr, r.label_en, r.description,"
        " coalesce(array_agg(rp.permission ORDER BY rp.permission) FILTER (WHERE rp.permission IS NOT NULL),"
        " '{}') AS permissions"
        " FROM users.roles r LEFT JOIN users.role_permissions rp ON rp.role = r.code"
        " GROUP BY r.code ORDER BY r.code"
    )
    return from_rows(RoleInfo, rows)


async def active_admins(con: asyncpg.Connection) -> int:
    """Active admins, counted under a transaction lock every admin removal takes first: two removals
    at once (each seeing two admins under READ COMMITTED) would otherwise leave none. After the lock
    this statement's snapshot sees what the other removal committed."""
    await con.execute("SELECT pg_advisory_xact_lock(hashtextextended('users:last_admin', 0))")
    return await con.fetchval(
        "SELECT count(*) FROM users.users u JOIN users.user_roles ur ON ur.user_id = u.id"
        " WHERE ur.role = 'admin' AND u.status = 'active'"
    )


async def is_empty(con: asyncpg.Connection) -> bool:
    return not await con.fetchval("SELECT EXISTS (SELECT 1 FROM users.roles)")


# --- login resolution --------------------------------------------------------------------------------


async def find_login(con: asyncpg.Connection, column: str, value: str) -> UUID | None:
    """The live account whose email, phone or npi is `value` (column chosen by the caller, not the user)."""
    assert column in ("email", "phone", "npi")
    return await con.fetchval(f"SELECT id FROM users.users WHERE NOT released AND {column} = $1", value)


async def authz(con: asyncpg.Connection, user_id: UUID) -> UserAuthz | None:
    row = await get_row(con, user_id)
    if row is None or row.released:
        return None
    return UserAuthz(
        user_id=row.id,
        status=row.status,
        kind=row.kind,
        roles=await roles_of(con, user_id),
        permissions=await permissions_of(con, user_id),
        email=row.email,
        phone=row.phone,
        npi=row.npi,
        language=row.language,
        kyc_status=row.kyc_status,
    )


# --- history -----------------------------------------------------------------------------------------


async def npi_attempt(con: asyncpg.Connection, user_id: UUID, by: str, window_h: int) -> int:
    """Record a self-service NPI verification attempt (history) and return how many the window holds,
    this one included. Serialised per user, so attempts sent at once cannot all pass the limit."""
    await con.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('users:npi_attempt:' || $1::uuid::text, 0))", user_id
    )
    await record(con, user_id, by, "npi_verify_attempt", None, None)
    return await con.fetchval(
        "SELECT count(*) FROM users.user_history WHERE user_id = $1 AND action = 'npi_verify_attempt'"
        " AND at > now() - make_interval(hours => $2)",
        user_id,
        window_h,
    )


async def record(con: asyncpg.Connection, user_id: UUID, by: str, action: str, old: Any, new: Any) -> None:
    """Append one change to users.user_history (old/new as plain JSON, None when not applicable)."""
    await con.execute(
        "INSERT INTO users.user_history (user_id, actor, action, old_value, new_value) VALUES ($1, $2, $3, $4, $5)",
        user_id,
        by,
        action,
        None if old is None else msgspec.to_builtins(old),
        None if new is None else msgspec.to_builtins(new),
    )
