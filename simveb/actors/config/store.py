"""SQL of the config service: every query on the `config` schema, returning msgspec Structs."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from simveb.actors.config.messages import (
    FeatureFlag,
    Fee,
    FeeFields,
    HistoryEntry,
    Service,
    ServiceFields,
    Setting,
)
from simveb.db import from_row, from_rows


async def all_settings(con: asyncpg.Connection) -> list[Setting]:
    rows = await con.fetch(
        "SELECT key, type, value, public, description, updated_at, updated_by FROM config.settings ORDER BY key"
    )
    return from_rows(Setting, rows)


async def get_setting(con: asyncpg.Connection, key: str, *, lock: bool = False) -> Setting | None:
    row = await con.fetchrow(
        "SELECT key, type, value, public, description, updated_at, updated_by FROM config.settings"
        " WHERE key = $1" + (" FOR UPDATE" if lock else ""),
        key,
    )
    return from_row(Setting, row)


async def upsert_setting(con: asyncpg.Connection, s: Setting, by: str) -> Setting:
    row = await con.fetchrow(
        "INSERT INTO config.settings (key, type, value, public, description, updated_by)"
        " VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, public = EXCLUDED.public,"
        " description = EXCLUDED.description, updated_at = now(), updated_by = EXCLUDED.updated_by"
        " RETURNING key, type, value, public, description, updated_at, updated_by",
        s.key,
        s.type,
        s.value,
        s.public,
        s.description,
        by,
    )
    return from_row(Setting, row)


_SERVICE_COLS = "code, label_fr, label_en, description, required_documents, workflow, active, updated_at"


async def all_services(con: asyncpg.Connection) -> list[Service]:
    rows = await con.fetch(f"SELECT {_SERVICE_COLS} FROM config.services ORDER BY code")
    return from_rows(Service, rows)


async def get_service(con: asyncpg.Connection, code: str, *, lock: bool = False) -> Service | None:
    row = await con.fetchrow(
        f"SELECT {_SERVICE_COLS} FROM config.services WHERE code = $1" + (" FOR UPDATE" if lock else ""), code
    )
    return from_row(Service, row)


def _service_values(code: str, f: ServiceFields, by: str) -> tuple[Any, ...]:
    """The code, fields and author of a service, in the order of its insert and update."""
    return (
        code,
        f.label_fr,
        f.label_en,
        f.description,
        f.required_documents,
        msgspec.to_builtins(f.workflow),
        f.active,
        by,
    )


async def insert_service(con: asyncpg.Connection, code: str, f: ServiceFields, by: str) -> Service | None:
    """Insert a service; None when the code is taken."""
    row = await con.fetchrow(
        "INSERT INTO config.services (code, label_fr, label_en, description, required_documents, workflow,"
        " active, updated_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        f" ON CONFLICT (code) DO NOTHING RETURNING {_SERVICE_COLS}",
        *_service_values(code, f, by),
    )
    return from_row(Service, row)


async def update_service(con: asyncpg.Connection, code: str, f: ServiceFields, by: str) -> Service | None:
    row = await con.fetchrow(
        "UPDATE config.services SET label_fr = $2, label_en = $3, description = $4, required_documents = $5,"
        " workflow = $6, active = $7, updated_at = now(), updated_by = $8"
        f" WHERE code = $1 RETURNING {_SERVICE_COLS}",
        *_service_values(code, f, by),
    )
    return from_row(Service, row)


_FEE_COLS = "id, service_code, kind, match, label, amount, active, updated_at"


async def all_fees(con: asyncpg.Connection) -> list[Fee]:
    rows = await con.fetch(f"SELECT {_FEE_COLS} FROM config.fees ORDER BY service_code, kind, match")
    return from_rows(Fee, rows)


async def get_fee(con: asyncpg.Connection, fee_id: UUID, *, lock: bool = False) -> Fee | None:
    row = await con.fetchrow(
        f"SELECT {_FEE_COLS} FROM config.fees WHERE id = $1" + (" FOR UPDATE" if lock else ""), fee_id
    )
    return from_row(Fee, row)


async def find_fee(con: asyncpg.Connection, service_code: str, kind: str, match: str) -> Fee | None:
    row = await con.fetchrow(
        f"SELECT {_FEE_COLS} FROM config.fees WHERE service_code = $1 AND kind = $2 AND match = $3",
        service_code,
        kind,
        match,
    )
    return from_row(Fee, row)


def _fee_values(f: FeeFields, by: str) -> tuple[Any, ...]:
    """The fields and author of a fee line, in the order of its insert and update."""
    return f.service_code, f.kind, f.match, f.label, f.amount, f.active, by


async def insert_fee(con: asyncpg.Connection, f: FeeFields, by: str) -> Fee | None:
    """Insert a fee line; None when the same (service, kind, match) exists already."""
    row = await con.fetchrow(
        "INSERT INTO config.fees (service_code, kind, match, label, amount, active, updated_by)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)"
        f" ON CONFLICT (service_code, kind, match) DO NOTHING RETURNING {_FEE_COLS}",
        *_fee_values(f, by),
    )
    return from_row(Fee, row)


async def update_fee(con: asyncpg.Connection, fee_id: UUID, f: FeeFields, by: str) -> Fee | None:
    row = await con.fetchrow(
        "UPDATE config.fees SET service_code = $2, kind = $3, match = $4, label = $5, amount = $6,"
        f" active = $7, updated_at = now(), updated_by = $8 WHERE id = $1 RETURNING {_FEE_COLS}",
        fee_id,
        *_fee_values(f, by),
    )
    return from_row(Fee, row)


_FLAG_COLS = "key, enabled, rollout_percent, description, updated_at"


async def all_flags(con: asyncpg.Connection) -> list[FeatureFlag]:
    rows = await con.fetch(f"SELECT {_FLAG_COLS} FROM config.feature_flags ORDER BY key")
    return from_rows(FeatureFlag, rows)


async def get_flag(con: asyncpg.Connection, key: str, *, lock: bool = False) -> FeatureFlag | None:
    row = await con.fetchrow(
        f"SELECT {_FLAG_COLS} FROM config.feature_flags WHERE key = $1" + (" FOR UPDATE" if lock else ""), key
    )
    return from_row(FeatureFlag, row)


async def upsert_flag(con: asyncpg.Connection, flag: FeatureFlag, by: str) -> FeatureFlag:
    row = await con.fetchrow(
        "INSERT INTO config.feature_flags (key, enabled, rollout_percent, description, updated_by)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO UPDATE SET enabled = EXCLUDED.enabled,"
        " rollout_percent = EXCLUDED.rollout_percent, description = EXCLUDED.description,"
        f" updated_at = now(), updated_by = EXCLUDED.updated_by RETURNING {_FLAG_COLS}",
        flag.key,
        flag.enabled,
        flag.rollout_percent,
        flag.description,
        by,
    )
    return from_row(FeatureFlag, row)


async def record(con: asyncpg.Connection, entity: str, key: str, by: str, old: Any, new: Any) -> None:
    """Append one change to config.history (old/new as plain JSON, None for a creation)."""
    await con.execute(
        "INSERT INTO config.history (entity, key, actor, old_value, new_value) VALUES ($1, $2, $3, $4, $5)",
        entity,
        key,
        by,
        None if old is None else msgspec.to_builtins(old),
        None if new is None else msgspec.to_builtins(new),
    )


async def history(
    con: asyncpg.Connection, entity: str | None, key: str | None, before: int | None, limit: int
) -> list[HistoryEntry]:
    """Changes, newest first (the id is a sequence), those older than the id `before` when given."""
    rows = await con.fetch(
        "SELECT id, entity, key, actor, at, old_value, new_value FROM config.history"
        " WHERE ($1::text IS NULL OR entity = $1) AND ($2::text IS NULL OR key = $2)"
        " AND ($4::bigint IS NULL OR id < $4)"
        " ORDER BY id DESC LIMIT $3",
        entity,
        key,
        limit,
        before,
    )
    return from_rows(HistoryEntry, rows)


async def is_empty(con: asyncpg.Connection) -> bool:
    return not await con.fetchval("SELECT EXISTS (SELECT 1 FROM config.services)")
