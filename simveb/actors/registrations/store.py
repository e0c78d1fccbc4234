"""SQL of the registrations service (schema `registrations` only); rows come back as msgspec Structs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from simveb.actors.registrations.messages import (
    CountRow,
    IssuedPlate,
    Request,
    RequestFilter,
    Reservation,
    SeriesPosition,
    Stats,
    Step,
    StepTime,
    Transition,
)
from simveb.db import from_row, from_rows

_REQ = "registrations.requests"
_COLUMNS = (
    "id, number, procedure, status, applicant_id, filed_by, vehicle_id, owner_type, vehicle_category,"
    " fee_total_xof, fee_lines, amount_paid_xof, payment_id, assignee_id, required_documents,"
    " declared_documents, details, plate, status_since, created_at, updated_at, version"
)


class Effects(msgspec.Struct, kw_only=True, frozen=True):
    """What validating a request of a procedure does (registrations.procedure_effects)."""

    plate: str = "keep"
    owners: str = "keep"
    duplicate: bool = False
    replaces: bool = True
    history: str | None = None


class PlateFormat(msgspec.Struct, kw_only=True, frozen=True):
    code: str
    category: str
    registration_type: str
    template: str
    series_length: int
    alphabet: str
    number_digits: int
    max_number: int


# --- requests ----------------------------------------------------------------------------------------


async def next_number(con: asyncpg.Connection, year: int) -> str:
    seq = await con.fetchval("SELECT nextval('registrations.request_number')")
    return f"IMM-{year}-{seq:07d}"


async def insert_request(con: asyncpg.Connection, **values: Any) -> Request:
    names = list(values)
    placeholders = ", ".join(f"${i}" for i in range(1, len(names) + 1))
    row = await con.fetchrow(
        f"INSERT INTO {_REQ} ({', '.join(names)}) VALUES ({placeholders}) RETURNING {_COLUMNS}",
        *values.values(),
    )
    return from_row(Request, row)  # type: ignore[return-value]


async def get_request(con: asyncpg.Connection, request_id: UUID, *, lock: bool = False) -> Request | None:
    row = await con.fetchrow(
        f"SELECT {_COLUMNS} FROM {_REQ} WHERE id = $1" + (" FOR UPDATE" if lock else ""), request_id
    )
    return from_row(Request, row)


async def get_workflow(con: asyncpg.Connection, request_id: UUID) -> list[Transition]:
    """The workflow the request pinned when it was filed."""
    steps = await con.fetchval(f"SELECT workflow FROM {_REQ} WHERE id = $1", request_id) or []
    return msgspec.convert(steps, list[Transition])


async def get_registration_type(con: asyncpg.Connection, request_id: UUID) -> str:
    return await con.fetchval(f"SELECT registration_type FROM {_REQ} WHERE id = $1", request_id)


async def update_request(con: asyncpg.Connection, request_id: UUID, **values: Any) -> Request:
    """Set columns; a status change also restarts the status clock. Bumps the version."""
    sets = [f"{name} = ${i}" for i, name in enumerate(values, start=2)]
    if "status" in values:
        sets.append("status_since = clock_timestamp()")
    sets += ["updated_at = clock_timestamp()", "version = version + 1"]
    row = await con.fetchrow(
        f"UPDATE {_REQ} SET {', '.join(sets)} WHERE id = $1 RETURNING {_COLUMNS}", request_id, *values.values()
    )
    return from_row(Request, row)  # type: ignore[return-value]


async def add_step(
    con: asyncpg.Connection, request_id: UUID, from_status: str, to_status: str, by: str, note: str, visible: bool
) -> None:
    await con.execute(
        "INSERT INTO registrations.steps (request_id, from_status, to_status, by_sub, note, visible_to_applicant)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        request_id,
        from_status,
        to_status,
        by,
        note,
        visible,
    )


async def steps(con: asyncpg.Connection, request_id: UUID, *, visible_only: bool) -> list[Step]:
    rows = await con.fetch(
        "SELECT id, from_status, to_status, by_sub AS by, at, note, visible_to_applicant FROM registrations.steps"
        " WHERE request_id = $1 AND (visible_to_applicant OR NOT $2) ORDER BY id",
        request_id,
        visible_only,
    )
    return from_rows(Step, rows)


async def handled_by(con: asyncpg.Connection, request_id: UUID, sub: str) -> bool:
    return bool(
        await con.fetchval(
            "SELECT EXISTS (SELECT 1 FROM registrations.steps WHERE request_id = $1 AND by_sub = $2)", request_id, sub
        )
    )


async def list_requests(
    con: asyncpg.Connection,
    f: RequestFilter,
    *,
    scope: str,
    sub: str,
    user_id: UUID | None,
    permissions: Sequence[str],
    queue_permission: str,
    due: dict[str, float],
    cursor: tuple[Any, ...] | None,
    limit: int,
) -> list[Request]:
    """One page, newest first. scope: 'all' (supervisors), 'staff' (queue rules), 'own' (applicants)."""
    where: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if scope == "own":
        uid = arg(user_id)
        where.append(f"(r.applicant_id = {uid} OR r.filed_by = {uid})")
    elif scope == "staff":
        uid, s, perms, qp = arg(user_id), arg(sub), arg(list(permissions)), arg(queue_permission)
        # A staff member sees their queue, what they handled, and requests waiting for a step they may
        # take, except the assigned queue work (verification belongs to the assignee).
        where.append(
            f"(r.assignee_id = {uid}"
            f" OR EXISTS (SELECT 1 FROM registrations.steps st WHERE st.request_id = r.id AND st.by_sub = {s})"
            f" OR EXISTS (SELECT 1 FROM jsonb_array_elements(r.workflow) w WHERE w->>'from_status' = r.status"
            f" AND w->>'permission' = ANY({perms}) AND w->>'permission' <> {qp}"
            f" AND w->>'permission' <> 'registrations:submit'))"
        )
    if f.status:
        where.append(f"r.status = {arg(f.status)}")
    if f.procedure:
        where.append(f"r.procedure = {arg(f.procedure)}")
    if f.assignee:
        where.append(f"r.assignee_id = {arg(f.assignee)}")
    if f.applicant:
        where.append(f"r.applicant_id = {arg(f.applicant)}")
    if f.vehicle:
        where.append(f"r.vehicle_id = {arg(f.vehicle)}")
    if f.created_from:
        where.append(f"r.created_at >= {arg(f.created_from)}")
    if f.created_to:
        where.append(f"r.created_at < {arg(f.created_to)}")
    if f.overdue:
        st, hours = arg(list(due)), arg([float(v) for v in due.values()])
        where.append(
            f"EXISTS (SELECT 1 FROM unnest({st}::text[], {hours}::float8[]) d(status, h)"
            " WHERE d.status = r.status AND r.status_since + make_interval(secs => d.h * 3600) < now())"
        )
    if cursor is not None:
        at, rid = arg(cursor[0]), arg(cursor[1])
        where.append(f"(r.created_at, r.id) < ({at}, {rid})")
    sql = f"SELECT {', '.join('r.' + c.strip() for c in _COLUMNS.split(','))} FROM {_REQ} r"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY r.created_at DESC, r.id DESC LIMIT {arg(limit)}"
    return from_rows(Request, await con.fetch(sql, *args))


async def open_requests(con: asyncpg.Connection, vehicle_id: UUID, procedure: str, closed: Sequence[str]) -> int:
    return await con.fetchval(
        f"SELECT count(*) FROM {_REQ} WHERE vehicle_id = $1 AND procedure = $2 AND NOT (status = ANY($3))",
        vehicle_id,
        procedure,
        list(closed),
    )


# --- assignment --------------------------------------------------------------------------------------


async def pick_assignee(con: asyncpg.Connection, candidates: Sequence[UUID], closed: Sequence[str]) -> UUID | None:
    """The candidate with the fewest open requests; ties go to the one idle longest."""
    if not candidates:
        return None
    return await con.fetchval(
        "SELECT c.id FROM unnest($1::uuid[]) c(id)"
        " LEFT JOIN registrations.staff_activity a ON a.user_id = c.id"
        " ORDER BY (SELECT count(*) FROM registrations.requests r"
        "           WHERE r.assignee_id = c.id AND NOT (r.status = ANY($2))),"
        " a.last_assigned_at NULLS FIRST, c.id LIMIT 1",
        list(candidates),
        list(closed),
    )


async def touch_staff(con: asyncpg.Connection, user_id: UUID) -> None:
    await con.execute(
        "INSERT INTO registrations.staff_activity (user_id, last_assigned_at) VALUES ($1, clock_timestamp())"
        " ON CONFLICT (user_id) DO UPDATE SET last_assigned_at = clock_timestamp()",
        user_id,
    )


# --- payments and history ----------------------------------------------------------------------------


async def add_payment(
    con: asyncpg.Connection, request_id: UUID, payment_id: UUID | None, kind: str, amount: int, provider: str
) -> None:
    await con.execute(
        "INSERT INTO registrations.payments (request_id, payment_id, kind, amount_xof, provider)"
        " VALUES ($1, $2, $3, $4, $5)",
        request_id,
        payment_id,
        kind,
        amount,
        provider,
    )


async def last_plate_assigned(con: asyncpg.Connection, vehicle_id: UUID) -> str | None:
    """The plate this service assigned to the vehicle most recently, if any."""
    return await con.fetchval(
        "SELECT plate FROM registrations.plate_assignments WHERE vehicle_id = $1 ORDER BY id DESC LIMIT 1",
        vehicle_id,
    )


async def add_plate_assignment(
    con: asyncpg.Connection, request_id: UUID, vehicle_id: UUID, plate: str, old_plate: str | None
) -> None:
    await con.execute(
        "INSERT INTO registrations.plate_assignments (request_id, vehicle_id, plate, old_plate)"
        " VALUES ($1, $2, $3, $4)",
        request_id,
        vehicle_id,
        plate,
        old_plate,
    )


async def add_renewal(con: asyncpg.Connection, request_id: UUID, vehicle_id: UUID, plate: str | None) -> None:
    await con.execute(
        "INSERT INTO registrations.renewal_history (request_id, vehicle_id, plate) VALUES ($1, $2, $3)",
        request_id,
        vehicle_id,
        plate,
    )


async def add_transfer(
    con: asyncpg.Connection,
    request_id: UUID,
    vehicle_id: UUID,
    old: Sequence[UUID],
    new: Sequence[UUID],
    consent_by: UUID | None,
    consent_at: datetime | None,
) -> None:
    await con.execute(
        "INSERT INTO registrations.transfer_history (request_id, vehicle_id, old_owners, new_owners, consent_by,"
        " consent_at) VALUES ($1, $2, $3, $4, $5, $6)",
        request_id,
        vehicle_id,
        list(old),
        list(new),
        consent_by,
        consent_at,
    )


async def add_duplicate(con: asyncpg.Connection, request_id: UUID, vehicle_id: UUID, of: str, reason: str) -> None:
    await con.execute(
        "INSERT INTO registrations.duplicate_history (request_id, vehicle_id, of_what, reason) VALUES ($1, $2, $3, $4)",
        request_id,
        vehicle_id,
        of,
        reason,
    )


async def effects(con: asyncpg.Connection, procedure: str) -> Effects:
    row = await con.fetchrow(
        "SELECT plate, owners, duplicate, replaces, history FROM registrations.procedure_effects WHERE procedure = $1",
        procedure,
    )
    return from_row(Effects, row) or Effects()


# --- plates ------------------------------------------------------------------------------------------


async def plate_format(con: asyncpg.Connection, category: str, registration_type: str) -> PlateFormat | None:
    row = await con.fetchrow(
        "SELECT code, category, registration_type, template, series_length, alphabet, number_digits, max_number"
        " FROM registrations.plate_formats WHERE category = $1 AND registration_type = $2 AND active",
        category,
        registration_type,
    )
    return from_row(PlateFormat, row)


async def plate_formats(con: asyncpg.Connection) -> list[PlateFormat]:
    rows = await con.fetch(
        "SELECT code, category, registration_type, template, series_length, alphabet, number_digits, max_number"
        " FROM registrations.plate_formats ORDER BY code"
    )
    return from_rows(PlateFormat, rows)


async def allocate_plate(
    con: asyncpg.Connection, format_code: str, request_id: UUID | None, vehicle_id: UUID | None
) -> IssuedPlate:
    row = await con.fetchrow(
        "SELECT plate, format_code, series, number, request_id, vehicle_id, issued_at"
        " FROM registrations.allocate_plate($1, $2, $3)",
        format_code,
        request_id,
        vehicle_id,
    )
    return from_row(IssuedPlate, row)  # type: ignore[return-value]


async def issue_plate(
    con: asyncpg.Connection, plate: str, format_code: str, request_id: UUID, vehicle_id: UUID
) -> IssuedPlate | None:
    """Issue a given plate (prestige); None when it was issued already."""
    row = await con.fetchrow(
        "INSERT INTO registrations.issued_plates (plate, format_code, request_id, vehicle_id)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
        " RETURNING plate, format_code, series, number, request_id, vehicle_id, issued_at",
        plate,
        format_code,
        request_id,
        vehicle_id,
    )
    return from_row(IssuedPlate, row)


async def plate_issued(con: asyncpg.Connection, plate: str) -> bool:
    return bool(
        await con.fetchval(
            "SELECT EXISTS (SELECT 1 FROM registrations.issued_plates WHERE plate_key = replace($1, ' ', ''))", plate
        )
    )


async def plate_of_request(con: asyncpg.Connection, request_id: UUID) -> str | None:
    """The sequential plate already issued to a request (a validation retried after a failure reuses it)."""
    return await con.fetchval(
        "SELECT plate FROM registrations.issued_plates WHERE request_id = $1 AND NOT taken_elsewhere"
        " AND series IS NOT NULL ORDER BY issued_at DESC LIMIT 1",
        request_id,
    )


async def mark_taken_elsewhere(con: asyncpg.Connection, plate: str) -> None:
    """The plate is on another vehicle of the registry: it stays issued (never offered again), to nobody."""
    await con.execute(
        "UPDATE registrations.issued_plates SET taken_elsewhere = true, request_id = NULL, vehicle_id = NULL"
        " WHERE plate = $1",
        plate,
    )


async def set_series(con: asyncpg.Connection, format_code: str, series: str | None, next_number: int) -> None:
    """Move a format's counter (administration and tests of the sequence's edges)."""
    await con.execute(
        "UPDATE registrations.plate_series SET series = $2, next_number = $3 WHERE format_code = $1",
        format_code,
        series,
        next_number,
    )


async def series_positions(con: asyncpg.Connection) -> list[SeriesPosition]:
    rows = await con.fetch(
        "SELECT f.code AS format_code, f.category, f.registration_type, f.template,"
        " coalesce(s.series, '') AS series, s.next_number, s.issued,"
        " (SELECT count(*) FROM registrations.plate_reservations r"
        "   WHERE r.format_code = f.code AND r.released_at IS NULL) AS reserved_rules,"
        " s.series IS NULL AS exhausted"
        " FROM registrations.plate_formats f JOIN registrations.plate_series s ON s.format_code = f.code"
        " ORDER BY f.code"
    )
    return from_rows(SeriesPosition, rows)


_RES = "id, format_code, series, number_from, number_to, plate, request_id, reason, by_sub AS by, at, released_at"


async def add_reservation(
    con: asyncpg.Connection,
    *,
    format_code: str,
    series: str | None,
    number_from: int | None,
    number_to: int | None,
    plate: str | None,
    request_id: UUID | None,
    reason: str,
    by: str,
) -> Reservation:
    row = await con.fetchrow(
        "INSERT INTO registrations.plate_reservations (format_code, series, number_from, number_to, plate,"
        f" request_id, reason, by_sub) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_RES}",
        format_code,
        series,
        number_from,
        number_to,
        plate,
        request_id,
        reason,
        by,
    )
    return from_row(Reservation, row)  # type: ignore[return-value]


async def release_reservation(con: asyncpg.Connection, reservation_id: UUID, by: str) -> Reservation | None:
    row = await con.fetchrow(
        "UPDATE registrations.plate_reservations SET released_at = coalesce(released_at, now()),"
        f" released_by = coalesce(released_by, $2) WHERE id = $1 RETURNING {_RES}",
        reservation_id,
        by,
    )
    return from_row(Reservation, row)


async def release_request_holds(con: asyncpg.Connection, request_id: UUID, by: str) -> None:
    await con.execute(
        "UPDATE registrations.plate_reservations SET released_at = now(), released_by = $2"
        " WHERE request_id = $1 AND released_at IS NULL",
        request_id,
        by,
    )


async def list_reservations(
    con: asyncpg.Connection,
    format_code: str | None,
    include_released: bool,
    after: tuple[Any, ...] | None,
    limit: int,
) -> list[Reservation]:
    """Reservations oldest first, after the keyset `after` (at, id)."""
    at, rid = after or (None, None)
    rows = await con.fetch(
        f"SELECT {_RES} FROM registrations.plate_reservations"
        " WHERE ($1::text IS NULL OR format_code = $1) AND ($2 OR released_at IS NULL)"
        " AND ($3::timestamptz IS NULL OR (at, id) > ($3, $4::uuid)) ORDER BY at, id LIMIT $5",
        format_code,
        include_released,
        at,
        rid,
        limit,
    )
    return from_rows(Reservation, rows)


async def is_reserved(con: asyncpg.Connection, format_code: str, series: str, number: int) -> bool:
    return bool(
        await con.fetchval(
            "SELECT EXISTS (SELECT 1 FROM registrations.plate_reservations WHERE format_code = $1"
            " AND released_at IS NULL AND (series IS NULL OR series = $2)"
            " AND (number_from IS NULL OR $3 BETWEEN number_from AND number_to)"
            " AND (number_from IS NOT NULL OR series IS NOT NULL))",
            format_code,
            series,
            number,
        )
    )


# --- idempotency -------------------------------------------------------------------------------------


async def idem_get(con: asyncpg.Connection, sub: str, key: str) -> tuple[str, Any] | None:
    row = await con.fetchrow(
        "SELECT fingerprint, reply FROM registrations.idempotency WHERE sub = $1 AND key = $2", sub, key
    )
    return None if row is None else (row["fingerprint"], row["reply"])


async def idem_put(con: asyncpg.Connection, sub: str, key: str, fingerprint: str, reply: Any) -> bool:
    """Store the first answer; False when another transaction stored one first."""
    return bool(
        await con.fetchval(
            "INSERT INTO registrations.idempotency (sub, key, fingerprint, reply) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING RETURNING true",
            sub,
            key,
            fingerprint,
            reply,
        )
    )


# --- statistics --------------------------------------------------------------------------------------


async def stats(
    con: asyncpg.Connection, created_from: datetime | None, created_to: datetime | None, due_statuses: Sequence[str]
) -> Stats:
    where = "($1::timestamptz IS NULL OR r.created_at >= $1) AND ($2::timestamptz IS NULL OR r.created_at < $2)"

    async def counts(expr: str) -> list[CountRow]:
        rows = await con.fetch(
            f"SELECT {expr} AS key, count(*) AS count FROM {_REQ} r WHERE {where} GROUP BY 1 ORDER BY 1",
            created_from,
            created_to,
        )
        return from_rows(CountRow, rows)

    money = await con.fetchrow(
        f"SELECT coalesce(sum(r.fee_total_xof) FILTER (WHERE r.status = ANY($3)), 0)::bigint AS due,"
        f" coalesce(sum(r.amount_paid_xof), 0)::bigint AS paid FROM {_REQ} r WHERE {where}",
        created_from,
        created_to,
        list(due_statuses),
    )
    medians = await con.fetch(
        "SELECT s.to_status, percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM s.at - p.at)) AS median_s,"
        " count(*) AS count FROM registrations.steps s"
        " JOIN LATERAL (SELECT at FROM registrations.steps q WHERE q.request_id = s.request_id AND q.id < s.id"
        "               ORDER BY q.id DESC LIMIT 1) p ON true"
        f" JOIN {_REQ} r ON r.id = s.request_id WHERE {where} GROUP BY s.to_status ORDER BY s.to_status",
        created_from,
        created_to,
    )
    return Stats(
        by_status=await counts("r.status"),
        by_procedure=await counts("r.procedure"),
        by_day=await counts("to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"),
        by_assignee=await counts("coalesce(r.assignee_id::text, 'unassigned')"),
        amount_due_xof=money["due"],
        amount_paid_xof=money["paid"],
        median_step_s=from_rows(StepTime, medians),
    )
