"""HTTP routes of the registrations (immatriculation) service, at the seed's paths `/api/immatriculations`,
and the administration of plate numbers under `/api/immatriculations/plates`.

Every POST honours an `Idempotency-Key` header: a retry with the same key returns the first answer
(never a second request); the same key with another body is a 422. Object-level rules (your own
request, your queue) are the actor's: this layer passes the caller.
"""

from __future__ import annotations

import hashlib
import io
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter

from simveb.actors.registrations.messages import (
    AssignRequest,
    ChangeStatus,
    DuplicateOf,
    DuplicateReason,
    FileRequest,
    GetRequest,
    GetStats,
    GetWorkflow,
    Idempotency,
    ListRequests,
    ListReservations,
    ListSeries,
    NewVehicle,
    RejectRequest,
    ReleaseReservation,
    RequestFilter,
    RequestPage,
    Reservation,
    ReservationPage,
    ReservePlates,
    SeriesPosition,
    Stats,
    Status,
    ValidateRequest,
    Workflow,
)
from simveb.actors.registrations.messages import Request as RegistrationRequest
from simveb.bus import Bus
from simveb.csvcells import safe_writer
from simveb.errors import BadRequest
from simveb.http.inputs import CursorQuery, LimitQuery, body_of
from simveb.http.security import requires
from simveb.http.vehicles import FieldsIn
from simveb.messages import PAGE_LIMIT_DEFAULT, Caller

SUBMIT = [requires("registrations:submit")]
READ_ALL = [requires("registrations:read")]
ASSIGN = [requires("registrations:assign")]
PLATES = [requires("registrations:plates")]

CODE = r"^[a-z][a-z0-9_]{0,49}$"
StatusQuery = Annotated[str | None, Parameter(pattern=CODE, max_length=50, description="A status of the workflow")]
AssigneeQuery = Annotated[
    str | None,
    Parameter(
        pattern=r"^(me|[0-9a-fA-F-]{36})$", description="A staff member's user id, or `me` (an agent's own queue)"
    ),
]


class NewVehicleIn(NewVehicle, forbid_unknown_fields=True):
    """NewVehicle (the VIN and the carte grise fields), refusing unknown fields like every body."""

    fields: FieldsIn


# Every filing body is FileRequest's own fields (one list of fields and bounds), less what the route
# sets: the caller, the idempotency key and, on the procedure routes, the procedure itself.
_FILED = ("vehicle_id", "applicant_id", "owner_type", "declared_documents", "note")


class FileIn(body_of(FileRequest, exclude=("caller", "idempotency", "vehicle"), name="FileBase")):  # type: ignore[misc]
    """A request of any procedure of the catalogue; first registration by default."""

    vehicle: NewVehicleIn | None = None  # NewVehicle, refusing unknown carte grise fields


RenewalIn = body_of(FileRequest, only=_FILED, required=("vehicle_id",), name="RenewalIn")


class TransferIn(  # type: ignore[misc]
    body_of(
        FileRequest, only=(*_FILED, "seller_consent"), required=("vehicle_id", "seller_consent"), name="TransferBase"
    )
):
    """An ownership transfer: FileRequest's fields, at least one new owner and the seller's consent."""

    new_owners: Annotated[list[UUID], msgspec.Meta(min_length=1, max_length=20)]


class DuplicateIn(body_of(FileRequest, only=_FILED, required=("vehicle_id",), name="DuplicateBase")):  # type: ignore[misc]
    """FileRequest's fields; `reason` is its duplicate_reason, `of` chooses the procedure."""

    reason: DuplicateReason
    of: DuplicateOf = "carte_grise"


class StatusIn(body_of(ChangeStatus, only=("note", "declared_documents"), name="StatusBase")):  # type: ignore[misc]
    """ChangeStatus's fields; `status` is its to_status."""

    status: Status


ValidateIn = body_of(ValidateRequest, exclude=("request_id", "caller", "idempotency"), name="ValidateIn")


RejectIn = body_of(RejectRequest, exclude=("request_id", "caller", "idempotency"), name="RejectIn")


AssignIn = body_of(AssignRequest, exclude=("request_id", "caller", "idempotency"), name="AssignIn")


ReserveIn = body_of(ReservePlates, exclude=("by", "idempotency"), name="ReserveIn")


def _idem(request: Request[Any, Any, Any], data: Any) -> Idempotency | None:
    """The Idempotency-Key header and a fingerprint of what was asked (route and decoded body)."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not key.strip() or len(key) > 200:
        raise BadRequest("Idempotency-Key must be 1 to 200 characters", code="invalid_idempotency_key")
    digest = hashlib.sha256(request.method.encode() + b" " + request.url.path.encode() + b"\n")
    digest.update(msgspec.json.encode(data))
    return Idempotency(key=key.strip(), fingerprint=digest.hexdigest())


def _file(caller: Caller, body: FileIn | None = None, idem: Idempotency | None = None, **fields: Any) -> FileRequest:
    if body is not None:
        values = msgspec.structs.asdict(body)
        vehicle = body.vehicle
        values["vehicle"] = None if vehicle is None else NewVehicle(vin=vehicle.vin, fields=vehicle.fields)
        fields = {**values, **fields}
    return FileRequest(caller=caller, idempotency=idem, **fields)


class RegistrationsController(Controller):
    path = "/api/immatriculations"
    tags = ["registrations"]

    @post("/", guards=SUBMIT)
    async def file(
        self, request: Request[Any, Any, Any], data: FileIn, caller: Caller, bus: Bus
    ) -> RegistrationRequest:
        """File a request (first registration by default; any procedure of the catalogue)."""
        return await bus.ask(_file(caller, data, _idem(request, data)))

    @post("/renewal", guards=SUBMIT)
    async def renewal(
        self,
        request: Request[Any, Any, Any],
        data: RenewalIn,
        caller: Caller,
        bus: Bus,
    ) -> RegistrationRequest:
        """File a carte grise renewal for a registered vehicle."""
        return await bus.ask(
            _file(caller, idem=_idem(request, data), procedure="renewal", **msgspec.structs.asdict(data))
        )

    @post("/transfer", guards=SUBMIT)
    async def transfer(
        self,
        request: Request[Any, Any, Any],
        data: TransferIn,
        caller: Caller,
        bus: Bus,
    ) -> RegistrationRequest:
        """File an ownership transfer (new owners must be users; the seller's consent is recorded)."""
        return await bus.ask(
            _file(caller, idem=_idem(request, data), procedure="transfer", **msgspec.structs.asdict(data))
        )

    @post("/duplicate", guards=SUBMIT)
    async def duplicate(
        self,
        request: Request[Any, Any, Any],
        data: DuplicateIn,
        caller: Caller,
        bus: Bus,
    ) -> RegistrationRequest:
        """File a duplicate of the carte grise (or of the plate, `of: plate`): lost, stolen or damaged."""
        values = msgspec.structs.asdict(data)
        of, reason = values.pop("of"), values.pop("reason")
        return await bus.ask(
            _file(
                caller,
                idem=_idem(request, data),
                procedure="plate_duplicate" if of == "plate" else "duplicate",
                duplicate_reason=reason,
                **values,
            )
        )

    @get("/")
    async def list_requests(
        self,
        caller: Caller,
        bus: Bus,
        status: StatusQuery = None,
        procedure: Annotated[
            str | None, Parameter(pattern=CODE, max_length=50, description="A procedure code of the catalogue")
        ] = None,
        assignee: AssigneeQuery = None,
        applicant: Annotated[UUID | None, Parameter(description="Requests filed for this user")] = None,
        vehicle: Annotated[UUID | None, Parameter(description="Requests about this vehicle")] = None,
        created_from: Annotated[datetime | None, Parameter(description="Filed at or after (ISO 8601)")] = None,
        created_to: Annotated[datetime | None, Parameter(description="Filed before (ISO 8601)")] = None,
        cursor: CursorQuery = None,
        limit: LimitQuery = PAGE_LIMIT_DEFAULT,
    ) -> RequestPage:
        """Requests the caller may see, newest first; `assignee=me` is an agent's queue."""
        return await bus.ask(
            ListRequests(
                caller=caller,
                filter=RequestFilter(
                    status=status,
                    procedure=procedure,
                    assignee=_assignee(caller, assignee),
                    applicant=applicant,
                    vehicle=vehicle,
                    created_from=created_from,
                    created_to=created_to,
                ),
                cursor=cursor,
                limit=limit,
            )
        )

    @get("/overdue", guards=READ_ALL)
    async def overdue(
        self,
        caller: Caller,
        bus: Bus,
        status: StatusQuery = None,
        assignee: AssigneeQuery = None,
        cursor: CursorQuery = None,
        limit: LimitQuery = PAGE_LIMIT_DEFAULT,
    ) -> RequestPage:
        """Requests past the due time of their status (setting registrations.due_hours)."""
        return await bus.ask(
            ListRequests(
                caller=caller,
                filter=RequestFilter(status=status, assignee=_assignee(caller, assignee), overdue=True),
                cursor=cursor,
                limit=limit,
            )
        )

    @get(
        "/stats",
        guards=READ_ALL,
        opt={"media_types": {"text/csv": {"type": "string"}}},
        responses={
            200: ResponseSpec(
                Stats, description="The statistics (JSON, or CSV with `format=csv`).", generate_examples=False
            )
        },
    )
    async def stats(
        self,
        caller: Caller,
        bus: Bus,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        format: str = "json",
    ) -> Response[Any]:
        """Counts by status, procedure, day, assignee; amounts due and paid; median time per step (`format=csv`)."""
        stats = await bus.ask(GetStats(caller=caller, created_from=created_from, created_to=created_to))
        if format == "csv":
            return Response(
                _stats_csv(stats),
                media_type="text/csv",  # Litestar adds the charset of a text type itself
                headers={"Content-Disposition": 'attachment; filename="immatriculations-stats.csv"'},
            )
        if format != "json":
            raise BadRequest("format is json or csv", code="invalid_format")
        return Response(msgspec.to_builtins(stats))

    @get("/stats.csv", guards=READ_ALL, media_type="text/csv")
    async def stats_csv(
        self,
        caller: Caller,
        bus: Bus,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
    ) -> Response[str]:
        """The statistics as CSV (section, key, value, count)."""
        stats = await bus.ask(GetStats(caller=caller, created_from=created_from, created_to=created_to))
        return Response(_stats_csv(stats), media_type="text/csv")

    @get("/{request_id:uuid}")
    async def get_request(self, request_id: UUID, caller: Caller, bus: Bus) -> RegistrationRequest:
        """One request (applicants: their own; staff: their queue and what they handled; supervisors: all)."""
        return await bus.ask(GetRequest(request_id=request_id, caller=caller))

    @get("/{request_id:uuid}/workflow")
    async def workflow(self, request_id: UUID, caller: Caller, bus: Bus) -> Workflow:
        """The steps taken (who, when, note; applicants see theirs) and the transitions the caller may take next."""
        return await bus.ask(GetWorkflow(request_id=request_id, caller=caller))

    @put("/{request_id:uuid}/status")
    async def change_status(self, request_id: UUID, data: StatusIn, caller: Caller, bus: Bus) -> RegistrationRequest:
        """Take one transition of the request's workflow (409 names the current status and the allowed ones).

        With the payments service running, `paid` is refused (409 pay_through_payments): a counter payment
        is recorded with POST /api/payments/{request_id}/confirm, whose PaymentSucceeded moves the request."""
        return await bus.ask(
            ChangeStatus(
                request_id=request_id,
                to_status=data.status,
                caller=caller,
                note=data.note,
                declared_documents=data.declared_documents,
            )
        )

    @post("/{request_id:uuid}/validate", status_code=200)
    async def validate(
        self,
        request: Request[Any, Any, Any],
        request_id: UUID,
        caller: Caller,
        bus: Bus,
        data: ValidateIn | None = None,
    ) -> RegistrationRequest:
        """Validate: the plate is issued, owners change (transfer), the carte grise is ordered."""
        body = data or ValidateIn()
        return await bus.ask(
            ValidateRequest(request_id=request_id, caller=caller, note=body.note, idempotency=_idem(request, body))
        )

    @post("/{request_id:uuid}/reject", status_code=200)
    async def reject(
        self,
        request: Request[Any, Any, Any],
        request_id: UUID,
        data: RejectIn,
        caller: Caller,
        bus: Bus,
    ) -> RegistrationRequest:
        """Reject with a reason (required)."""
        return await bus.ask(
            RejectRequest(
                request_id=request_id,
                caller=caller,
                reason=data.reason,
                idempotency=_idem(request, data),
            )
        )

    @put("/{request_id:uuid}/assignee", guards=ASSIGN)
    async def assign(self, request_id: UUID, data: AssignIn, caller: Caller, bus: Bus) -> RegistrationRequest:
        """A supervisor assigns or reassigns a request to a staff member who verifies."""
        return await bus.ask(
            AssignRequest(request_id=request_id, assignee_id=data.assignee_id, caller=caller, note=data.note)
        )

    # --- plates -------------------------------------------------------------------------------------

    @get("/plates/series", guards=PLATES)
    async def series(self, bus: Bus) -> list[SeriesPosition]:
        """Each plate format's position in its sequence."""
        return await bus.ask(ListSeries())

    @get("/plates/reservations", guards=PLATES)
    async def reservations(
        self,
        bus: Bus,
        format_code: Annotated[str | None, Parameter(max_length=50, description="One plate format")] = None,
        include_released: Annotated[bool, Parameter(description="Released ones too")] = False,
        cursor: CursorQuery = None,
        limit: LimitQuery = PAGE_LIMIT_DEFAULT,
    ) -> ReservationPage:
        """Reserved numbers, ranges, series and prestige holds, oldest first."""
        return await bus.ask(
            ListReservations(format_code=format_code, include_released=include_released, cursor=cursor, limit=limit)
        )

    @post("/plates/reservations", guards=PLATES)
    async def reserve(
        self,
        request: Request[Any, Any, Any],
        data: ReserveIn,
        caller: Caller,
        bus: Bus,
    ) -> Reservation:
        """Keep a number, a range or a whole series out of the sequence."""
        return await bus.ask(
            ReservePlates(**msgspec.structs.asdict(data), by=caller.sub, idempotency=_idem(request, data))
        )

    @delete("/plates/reservations/{reservation_id:uuid}", guards=PLATES, status_code=200)
    async def release(self, reservation_id: UUID, caller: Caller, bus: Bus) -> Reservation:
        """Give reserved numbers back to the sequence."""
        return await bus.ask(ReleaseReservation(reservation_id=reservation_id, by=caller.sub))


def _assignee(caller: Caller, value: str | None) -> UUID | None:
    if value is None:
        return None
    if value == "me":
        if caller.user_id is None:
            raise BadRequest("assignee=me needs a user token", code="invalid_assignee")
        return caller.user_id
    try:
        return UUID(value)
    except ValueError:
        raise BadRequest("assignee is a user id or 'me'", code="invalid_assignee") from None


def _stats_csv(stats: Stats) -> str:
    out = io.StringIO()
    w = safe_writer(out)
    w.writerow(["section", "key", "value"])
    for section in ("by_status", "by_procedure", "by_day", "by_assignee"):
        for row in getattr(stats, section):
            w.writerow([section, row.key, row.count])
    w.writerow(["amount", "due_xof", stats.amount_due_xof])
    w.writerow(["amount", "paid_xof", stats.amount_paid_xof])
    for st in stats.median_step_s:
        w.writerow(["median_step_s", st.to_status, f"{st.median_s:.3f}"])
    return out.getvalue()


CONTROLLERS: list[Any] = [RegistrationsController]
