"""The registrations (immatriculation) service's contract: requests, workflow, plates, and its events.

Requests follow the workflow of their procedure (config's catalogue), pinned on the request when it is
filed. Every command that changes a request carries the `Caller` (object-level rules are this actor's)
and an optional `Idempotency` (the HTTP `Idempotency-Key` and a fingerprint of the body): a retry with
the same key answers the first reply, the same key with another body is refused.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec

from simveb.actors.vehicles.messages import VehicleFields
from simveb.errors import Conflict, Forbidden, Invalid, NotFound
from simveb.messages import PAGE_LIMIT_DEFAULT, Ask, Caller, Cursor, Event, Limit, Page, Record

Status = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{1,49}$")]
DocCode = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{1,49}$")]
Note = Annotated[str, msgspec.Meta(max_length=1000)]
Reason = Annotated[str, msgspec.Meta(min_length=3, max_length=1000)]
PrestigeText = Annotated[str, msgspec.Meta(pattern=r"^[A-Z0-9][A-Z0-9 ]{1,14}[A-Z0-9]$")]
OwnerType = Literal["person", "company", "government", "diplomatic"]
DuplicateReason = Literal["lost", "stolen", "damaged"]
DuplicateOf = Literal["carte_grise", "plate"]


# --- records -----------------------------------------------------------------------------------------


class Idempotency(Record):
    """An HTTP Idempotency-Key and the fingerprint of the request it came with."""

    key: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    fingerprint: str


class FeeLineOut(Record):
    code: str
    label: str
    amount_xof: int


class Step(Record):
    """One transition taken: who, when, from -> to, with a note."""

    id: int
    from_status: str
    to_status: str
    by: str
    at: datetime
    note: str = ""
    visible_to_applicant: bool = True


class Transition(Record):
    """A transition of the pinned workflow: from -> to, the permission it needs, applicant visibility."""

    from_status: str
    to_status: str
    permission: str
    visible_to_applicant: bool = True


class Request(Record):
    id: UUID
    number: str
    procedure: str
    status: str
    applicant_id: UUID
    filed_by: UUID | None = None
    vehicle_id: UUID | None = None
    owner_type: str
    vehicle_category: str
    fee_total_xof: int
    fee_lines: list[FeeLineOut] = []
    amount_paid_xof: int = 0
    payment_id: UUID | None = None
    assignee_id: UUID | None = None
    required_documents: list[str] = []
    declared_documents: list[str] = []
    details: dict[str, Any] = {}
    plate: str | None = None
    status_since: datetime
    created_at: datetime
    updated_at: datetime
    version: int


class RequestPage(Page[Request]):
    """Requests, newest first."""

    items: list[Request]


class Workflow(Record):
    """The story of a request (the steps the caller may see) and what the caller may do next."""

    request_id: UUID
    number: str
    procedure: str
    status: str
    steps: list[Step]
    next: list[Transition]


class RequestFilter(Record):
    status: str | None = None
    procedure: str | None = None
    assignee: UUID | None = None
    applicant: UUID | None = None
    vehicle: UUID | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    overdue: bool = False


class CountRow(Record):
    key: str
    count: int


class StepTime(Record):
    to_status: str
    median_s: float
    count: int


class Stats(Record):
    by_status: list[CountRow]
    by_procedure: list[CountRow]
    by_day: list[CountRow]
    by_assignee: list[CountRow]
    amount_due_xof: int
    amount_paid_xof: int
    median_step_s: list[StepTime]


class SeriesPosition(Record):
    """Where the sequence of one plate format stands, and how much of it is reserved or issued."""

    format_code: str
    category: str
    registration_type: str
    template: str
    series: str
    next_number: int
    issued: int
    reserved_rules: int
    exhausted: bool = False


class Reservation(Record):
    id: UUID
    format_code: str
    series: str | None = None
    number_from: int | None = None
    number_to: int | None = None
    plate: str | None = None  # a prestige plate held by a request
    request_id: UUID | None = None
    reason: str = ""
    by: str
    at: datetime
    released_at: datetime | None = None


class IssuedPlate(Record):
    plate: str
    format_code: str
    series: str | None = None
    number: int | None = None
    request_id: UUID | None = None
    vehicle_id: UUID | None = None
    issued_at: datetime


# --- filing ------------------------------------------------------------------------------------------


class NewVehicle(Record):
    """A vehicle not yet known: its VIN and carte grise fields (first registration)."""

    vin: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    fields: VehicleFields


class FileRequest(Ask[Request]):
    """File a request of any procedure of the catalogue (first registration by default).

    `vehicle_id` names an existing vehicle, `vehicle` describes a new one. An affiliate files on behalf
    of `applicant_id`; anyone else files for themselves. `declared_documents` are the document types
    the applicant says are uploaded (counted only while no documents service answers).
    """

    errors = (Forbidden, NotFound, Conflict, Invalid)

    caller: Caller
    procedure: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{1,49}$")] = "first_registration"
    vehicle_id: UUID | None = None
    vehicle: NewVehicle | None = None
    applicant_id: UUID | None = None
    owner_type: OwnerType = "person"
    registration_type: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{1,49}$")] = "ordinary"
    declared_documents: list[DocCode] = []
    new_owners: Annotated[list[UUID], msgspec.Meta(max_length=20)] = []  # transfer
    seller_consent: bool = False  # transfer: the current owner agrees (recorded)
    duplicate_reason: DuplicateReason | None = None  # duplicate
    prestige_plate: PrestigeText | None = None  # prestige number
    note: Note = ""
    idempotency: Idempotency | None = None


class GetRequest(Ask[Request]):
    errors = (NotFound,)

    request_id: UUID
    caller: Caller


class ListRequests(Ask[RequestPage]):
    errors = (Forbidden,)

    caller: Caller
    filter: RequestFilter = msgspec.field(default_factory=RequestFilter)
    cursor: Cursor | None = None
    limit: Limit = PAGE_LIMIT_DEFAULT


class GetWorkflow(Ask[Workflow]):
    errors = (NotFound,)

    request_id: UUID
    caller: Caller


class ChangeStatus(Ask[Request]):
    """Take one transition of the pinned workflow (409 naming the allowed ones when it is not one)."""

    errors = (Forbidden, NotFound, Conflict, Invalid)

    request_id: UUID
    to_status: Status
    caller: Caller
    note: Note = ""
    declared_documents: list[DocCode] | None = None  # adds to what was declared, before leaving the first status
    idempotency: Idempotency | None = None


class ValidateRequest(Ask[Request]):
    errors = (Forbidden, NotFound, Conflict, Invalid)

    request_id: UUID
    caller: Caller
    note: Note = ""
    idempotency: Idempotency | None = None


class RejectRequest(Ask[Request]):
    errors = (Forbidden, NotFound, Conflict, Invalid)

    request_id: UUID
    caller: Caller
    reason: Reason
    idempotency: Idempotency | None = None


class AssignRequest(Ask[Request]):
    """A supervisor (re)assigns a request to a staff member."""

    errors = (Forbidden, NotFound, Conflict, Invalid)

    request_id: UUID
    assignee_id: UUID
    caller: Caller
    note: Note = ""
    idempotency: Idempotency | None = None


class GetStats(Ask[Stats]):
    errors = (Forbidden,)

    caller: Caller
    created_from: datetime | None = None
    created_to: datetime | None = None


# --- plates ------------------------------------------------------------------------------------------


class ListSeries(Ask[list[SeriesPosition]]):
    pass


class ReservePlates(Ask[Reservation]):
    """Keep numbers out of the sequence: one number, a range, or (no numbers) a whole series."""

    errors = (NotFound, Conflict, Invalid)

    format_code: Annotated[str, msgspec.Meta(min_length=1, max_length=50)]
    series: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{1,3}$")] | None = None
    number_from: Annotated[int, msgspec.Meta(ge=1, le=9999)] | None = None
    number_to: Annotated[int, msgspec.Meta(ge=1, le=9999)] | None = None
    reason: Note = ""
    by: str
    idempotency: Idempotency | None = None


class ReleaseReservation(Ask[Reservation]):
    errors = (NotFound,)

    reservation_id: UUID
    by: str


class ReservationPage(Page[Reservation]):
    """Reservations, oldest first."""

    items: list[Reservation]


class ListReservations(Ask[ReservationPage]):
    format_code: str | None = None
    include_released: bool = False
    cursor: Cursor | None = None
    limit: Limit = PAGE_LIMIT_DEFAULT


class AllocatePlate(Ask[IssuedPlate]):
    """Issue the next plate of a format (used by validation; exposed for tests, benches and the CLI)."""

    errors = (NotFound, Conflict)

    format_code: str
    request_id: UUID | None = None
    vehicle_id: UUID | None = None


class SeedRegistrations(Ask[int]):
    """Load procedure effects and plate formats (idempotent); returns rows added."""

    only_if_empty: bool = False


# --- events ------------------------------------------------------------------------------------------


class RegistrationSubmitted(Event):
    request_id: UUID
    number: str
    procedure: str
    applicant_id: UUID
    vehicle_id: UUID | None


class RegistrationStatusChanged(Event):
    """A request moved; `visible_to_applicant` says whether the applicant is told (notifications)."""

    request_id: UUID
    number: str
    procedure: str
    applicant_id: UUID
    from_status: str
    to_status: str
    by: str
    visible_to_applicant: bool
    note: str = ""


class PlateAssigned(Event):
    """A plate number was allocated to a vehicle by a registration (vehicles records it)."""

    request_id: UUID
    vehicle_id: UUID
    plate: str


class OwnershipTransferred(Event):
    """A transfer was validated: vehicles replaces the owners (recorded with the request id)."""

    request_id: UUID
    number: str
    vehicle_id: UUID
    old_owners: tuple[UUID, ...]
    new_owners: tuple[UUID, ...]
    seller_consent_by: UUID | None = None
    by: str


class RegistrationValidated(Event):
    """A request was validated: the vehicle has its plate and holders; a carte grise is due.

    Documents issues the certificate from it; `replaces_previous` means the vehicle's current
    certificate is replaced (transfer, duplicate, renewal).
    """

    request_id: UUID
    number: str
    procedure: str
    vehicle_id: UUID
    applicant_id: UUID
    holder_ids: tuple[UUID, ...]
    plate: str
    first_registration_date: date | None = None
    duplicate: bool = False
    replaces_previous: bool = False
    validated_at: datetime
