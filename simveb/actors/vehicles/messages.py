"""The vehicle service's public contract: catalogue, vehicles, legal standing, history, import/export.

Other actors and the HTTP layer import this module only. Every query that returns vehicles takes a
`Viewer`, so the object-level rule (citizens see their own vehicles, affiliates those they filed,
staff and police all of them) is applied by the actor that owns the data, whoever asks.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec

from simveb.errors import Conflict, DomainError, Invalid, InvalidCursor, NotFound, PreconditionFailed
from simveb.messages import PAGE_LIMIT_DEFAULT, Ask, Cursor, Event, Limit, Page, Record

Code = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{1,49}$")]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Text200 = Annotated[str, msgspec.Meta(max_length=200)]
Text1000 = Annotated[str, msgspec.Meta(max_length=1000)]
VinText = Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
PlateText = Annotated[str, msgspec.Meta(min_length=1, max_length=20)]
Year = Annotated[int, msgspec.Meta(ge=1900, le=2100)]
CylinderCc = Annotated[int, msgspec.Meta(ge=0, le=20000)]
PowerKw = Annotated[int, msgspec.Meta(ge=0, le=2000)]
FiscalHp = Annotated[int, msgspec.Meta(ge=0, le=200)]
Seats = Annotated[int, msgspec.Meta(ge=1, le=100)]
MassKg = Annotated[int, msgspec.Meta(ge=0, le=100000)]

VehicleStatus = Literal["active", "stolen", "destroyed", "exported"]
EncumbranceKind = Literal["pledge", "opposition"]
SubjectKind = Literal["vehicle", "person"]
Scope = Literal["all", "filed", "own"]
ImportState = Literal["queued", "running", "done", "failed"]

# Administrative status transitions: a destroyed vehicle is gone for good; an exported one may return.
STATUS_TRANSITIONS: dict[str, frozenset[str]] = {
    "active": frozenset({"stolen", "destroyed", "exported"}),
    "stolen": frozenset({"active", "destroyed"}),
    "exported": frozenset({"active"}),
    "destroyed": frozenset(),
}

# The CSV columns of import and export, in export order (an export re-imports as is).
CSV_COLUMNS: tuple[str, ...] = (
    "vin",
    "plate",
    "make",
    "model",
    "vehicle_type",
    "category",
    "commercial_name",
    "year",
    "colour",
    "energy",
    "cylinder_cc",
    "power_kw",
    "fiscal_hp",
    "seats",
    "max_mass_kg",
    "service_mass_kg",
    "empty_mass_kg",
    "first_registration_date",
    "customs_ref",
    "characteristics",
    "remarks",
    "owners",
    "status",
)
CSV_REQUIRED: frozenset[str] = frozenset({"vin", "make", "model", "energy"})


class PreconditionRequired(DomainError):
    """An update came without the version it was based on (If-Match or `version`)."""

    status = 428
    code = "precondition_required"
    title = "Precondition required"


# --- catalogue -----------------------------------------------------------------------------------------


class Brand(Record):
    code: str
    name: str
    country: str = ""
    active: bool = True


class VehicleModel(Record):
    id: int
    brand_code: str
    brand: str
    name: str
    vehicle_type: str
    category: str
    active: bool = True


class VehicleType(Record):
    code: str
    label: str
    category: str


class Category(Record):
    code: str
    label: str


class Energy(Record):
    code: str
    label: str


class CharacteristicValue(Record):
    code: str
    label: str


class CharacteristicCategory(Record):
    code: str
    label: str
    values: list[CharacteristicValue] = []


class ListBrands(Ask[list[Brand]]):
    include_inactive: bool = False


class ListModels(Ask[list[VehicleModel]]):
    """Models of one brand (code or name, any case), or all of them."""

    brand: str | None = None
    include_inactive: bool = False


class ListVehicleTypes(Ask[list[VehicleType]]):
    pass


class ListCategories(Ask[list[Category]]):
    pass


class ListEnergies(Ask[list[Energy]]):
    pass


class ListCharacteristics(Ask[list[CharacteristicCategory]]):
    pass


class CreateBrand(Ask[Brand]):
    errors = (Conflict,)

    code: Code
    name: Name
    country: Annotated[str, msgspec.Meta(max_length=100)] = ""
    by: str


class CreateModel(Ask[VehicleModel]):
    errors = (NotFound, Conflict, Invalid)

    brand_code: Code
    name: Name
    vehicle_type: Code
    by: str


class CreateVehicleType(Ask[VehicleType]):
    errors = (Conflict, Invalid)

    code: Code
    label: Name
    category: Code
    by: str


class CreateCharacteristic(Ask[CharacteristicValue]):
    errors = (Conflict, Invalid)

    category_code: Code
    category_label: Name | None = None  # creates the category when it is new
    code: Code
    label: Name
    by: str


class SeedVehicles(Ask[int]):
    """Load the catalogue (brands, models, types, categories, energies, characteristics)."""

    only_if_empty: bool = False


# --- vehicles ------------------------------------------------------------------------------------------


class Viewer(Record):
    """Who asks, and which vehicles they may see: all (staff, police), filed (affiliate), own (citizen)."""

    sub: str
    scope: Scope


class VehicleFields(Record):
    """The carte grise fields an update may change (VIN, owners, plate and status have their own messages).

    vehicle_type defaults to the model's type and category to the type's category.
    """

    make: Name
    model: Name
    vehicle_type: Code | None = None
    category: Code | None = None
    commercial_name: Text200 = ""
    year: Year | None = None
    colour: Annotated[str, msgspec.Meta(max_length=50)] = ""
    energy: Annotated[str, msgspec.Meta(min_length=1, max_length=50)]
    cylinder_cc: CylinderCc | None = None
    power_kw: PowerKw | None = None
    fiscal_hp: FiscalHp | None = None
    seats: Seats | None = None
    max_mass_kg: MassKg | None = None
    service_mass_kg: MassKg | None = None
    empty_mass_kg: MassKg | None = None
    first_registration_date: date | None = None
    customs_ref: Annotated[str, msgspec.Meta(max_length=100)] = ""
    characteristics: list[Code] = []
    remarks: Text1000 = ""


class Vehicle(Record):
    id: UUID
    vin: str
    plate: str | None = None
    make: str
    model: str
    vehicle_type: str
    category: str
    commercial_name: str = ""
    year: int | None = None
    colour: str = ""
    energy: str
    cylinder_cc: int | None = None
    power_kw: int | None = None
    fiscal_hp: int | None = None
    seats: int | None = None
    max_mass_kg: int | None = None
    service_mass_kg: int | None = None
    empty_mass_kg: int | None = None
    first_registration_date: date | None = None
    customs_ref: str = ""
    characteristics: list[str] = []
    remarks: str = ""
    owners: list[UUID] = []
    status: VehicleStatus = "active"
    filed_by: str | None = None
    version: int
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str
    archived_at: datetime | None = None
    archived_by: str | None = None


class VehicleFilter(Record):
    """Search criteria; every given one must hold. `q` matches a VIN or plate prefix, or names (fuzzy)."""

    q: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    vin: Annotated[str, msgspec.Meta(max_length=17)] | None = None  # exact, or a prefix
    plate: Annotated[str, msgspec.Meta(max_length=20)] | None = None
    owner: UUID | None = None
    make: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    model: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    status: VehicleStatus | None = None
    year_min: int | None = None
    year_max: int | None = None
    include_archived: bool = False


class VehiclePage(Page[Vehicle]):
    """Vehicles in id order."""

    items: list[Vehicle]


class HistoryEntry(Record):
    id: int
    vehicle_id: UUID
    at: datetime
    actor: str
    field: str
    old_value: Any = None
    new_value: Any = None
    reason: str = ""


class RegisterVehicle(Ask[Vehicle]):
    """Create a vehicle. filed_by is set when an affiliate files it on behalf of its owners."""

    errors = (Conflict, Invalid)

    vin: VinText
    fields: VehicleFields
    owners: list[UUID] = []
    plate: PlateText | None = None
    filed_by: str | None = None
    by: str


class GetVehicle(Ask[Vehicle]):
    """Answered with Vehicle, or NotFound when it does not exist or the viewer may not see it."""

    errors = (NotFound,)

    vehicle_id: UUID
    viewer: Viewer | None = None  # None: a trusted internal caller


class SearchVehicles(Ask[VehiclePage]):
    filter: VehicleFilter = msgspec.field(default_factory=VehicleFilter)
    viewer: Viewer | None = None
    cursor: Cursor | None = None
    limit: Limit = PAGE_LIMIT_DEFAULT


class HistoryPage(Page[HistoryEntry]):
    """A vehicle's changes, oldest first (an imported vehicle's synthetic `created` entry, id 0, leads)."""

    items: list[HistoryEntry]


class GetVehicleHistory(Ask[HistoryPage]):
    """A vehicle's history, keyset-paged on (vehicle, entry id)."""

    errors = (NotFound, InvalidCursor)

    vehicle_id: UUID
    viewer: Viewer | None = None
    cursor: Cursor | None = None
    limit: Limit = PAGE_LIMIT_DEFAULT


class UpdateVehicle(Ask[Vehicle]):
    """Replace the carte grise fields; refused with 412 when version (the one the client read) is not the current one."""

    errors = (NotFound, Conflict, PreconditionFailed, Invalid)

    vehicle_id: UUID
    fields: VehicleFields
    version: int
    viewer: Viewer | None = None  # an affiliate may update only the vehicles it filed
    reason: Text1000 = ""
    by: str


class ArchiveVehicle(Ask[Vehicle]):
    """Hide a vehicle from searches; nothing is erased and its history stays."""

    errors = (NotFound, Conflict, PreconditionFailed)

    vehicle_id: UUID
    version: int | None = None
    reason: Text1000 = ""
    by: str


class AssignPlate(Ask[Vehicle]):
    """Set (or clear, with None) the current plate; sent by the registration service once it issues one."""

    errors = (NotFound, Conflict, PreconditionFailed, Invalid)

    vehicle_id: UUID
    plate: PlateText | None
    reason: Text1000 = ""
    by: str


class ChangeOwners(Ask[Vehicle]):
    """Replace the owners (transfer). Refused with 409 while the standing blocks a transfer."""

    errors = (NotFound, Conflict, PreconditionFailed, Invalid)

    vehicle_id: UUID
    owners: Annotated[list[UUID], msgspec.Meta(min_length=1, max_length=20)]
    version: int | None = None  # the version the client read (If-Match); None: whatever is current
    reason: Text1000 = ""
    by: str


class SetVehicleStatus(Ask[Vehicle]):
    """Report stolen, recovered, destroyed or exported (see STATUS_TRANSITIONS)."""

    errors = (NotFound, Conflict, PreconditionFailed)

    vehicle_id: UUID
    status: VehicleStatus
    version: int | None = None
    reason: Text1000 = ""
    by: str


# --- legal standing ------------------------------------------------------------------------------------


class Encumbrance(Record):
    """A pledge (gage) or an opposition: active while lifted_at is None."""

    id: UUID
    vehicle_id: UUID
    kind: EncumbranceKind
    holder: str = ""
    reference: str = ""
    reason: str = ""
    declared_by: str
    declared_at: datetime
    lifted_by: str | None = None
    lifted_at: datetime | None = None
    lift_reason: str | None = None


class BlacklistEntry(Record):
    id: UUID
    subject_kind: SubjectKind
    subject: str
    reason: str
    added_by: str
    added_at: datetime
    lifted_by: str | None = None
    lifted_at: datetime | None = None


class Block(Record):
    """One reason a procedure is blocked."""

    code: str
    detail: str


class VehicleStanding(Record):
    vehicle_id: UUID
    vin: str
    plate: str | None = None
    status: VehicleStatus
    archived: bool = False
    pledges: list[Encumbrance] = []
    oppositions: list[Encumbrance] = []
    blacklist: list[BlacklistEntry] = []
    transfer_blocked: bool
    registration_blocked: bool
    reasons: list[Block] = []


class RoadsideCheck(Record):
    """What a roadside check needs and no more: no owners, no masses, no customs data.

    `reasons` carry a code and a fixed phrase per code: never the free text an agent typed
    (opposition reasons, creditors) nor a blacklisted person's id.
    """

    plate: str
    vin: str
    make: str
    model: str
    commercial_name: str = ""
    colour: str = ""
    category: str
    year: int | None = None
    status: VehicleStatus
    stolen: bool
    pledged: bool
    opposed: bool
    blacklisted: bool
    alert: bool
    reasons: list[Block] = []


class GetVehicleStanding(Ask[VehicleStanding]):
    """Is a transfer or a (re-)registration of this vehicle blocked, and why.

    Give vehicle_id, vin or plate. `persons` are user ids (owners, buyer) checked against the blacklist.
    """

    errors = (NotFound, Invalid)

    vehicle_id: UUID | None = None
    vin: str | None = None
    plate: str | None = None
    persons: list[str] = []
    viewer: Viewer | None = None


class RoadsideLookup(Ask[RoadsideCheck]):
    """Recorded (who, when, plate, found) in vehicles.roadside_lookups, found or not."""

    errors = (NotFound,)

    plate: PlateText
    by: str = ""


class DeclareEncumbrance(Ask[Encumbrance]):
    errors = (NotFound, Conflict, PreconditionFailed)

    vehicle_id: UUID
    kind: EncumbranceKind
    holder: Text200 = ""
    reference: Annotated[str, msgspec.Meta(max_length=100)] = ""
    reason: Text1000 = ""
    by: str


class LiftEncumbrance(Ask[Encumbrance]):
    errors = (NotFound, Conflict)

    vehicle_id: UUID
    encumbrance_id: UUID
    kind: EncumbranceKind | None = None  # when given, the entry must be of this kind
    reason: Text1000 = ""
    by: str


class AddToBlacklist(Ask[BlacklistEntry]):
    errors = (NotFound, Conflict, Invalid)

    subject_kind: SubjectKind
    subject: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
    by: str


class LiftBlacklist(Ask[BlacklistEntry]):
    errors = (NotFound, Conflict)

    entry_id: UUID
    by: str


class BlacklistPage(Page[BlacklistEntry]):
    """Blacklist entries, newest first."""

    items: list[BlacklistEntry]


class ListBlacklist(Ask[BlacklistPage]):
    include_lifted: bool = False
    cursor: Cursor | None = None
    limit: Limit = PAGE_LIMIT_DEFAULT


# --- import and export ---------------------------------------------------------------------------------


class ImportJob(Record):
    id: UUID
    source: str
    error_path: str
    state: ImportState
    phase: str = ""
    bytes_total: int = 0
    bytes_read: int = 0
    total_rows: int = 0
    inserted: int = 0
    skipped: int = 0  # VIN already registered: a re-run adds nothing
    rejected: int = 0
    error: str | None = None
    created_by: str
    created_at: datetime
    finished_at: datetime | None = None
    seconds: dict[str, float] = {}  # time spent in each phase (while this process keeps the job)


class StartImport(Ask[ImportJob]):
    """Import a CSV file (CSV_COLUMNS, header line first) in the background; answered at once.

    Rejected rows go to error_path with their row number and reason.
    """

    path: str
    error_path: str
    by: str


class GetImportJob(Ask[ImportJob]):
    job_id: UUID


class OpenExport(Ask[UUID]):
    """Open a server-side cursor over a search; read it with ReadExport, close it with CloseExport."""

    filter: VehicleFilter = msgspec.field(default_factory=VehicleFilter)
    viewer: Viewer | None = None


class ExportChunk(Record):
    data: bytes
    done: bool


class ReadExport(Ask[ExportChunk]):
    """The next rows as CSV bytes (the header comes with the first chunk); done when exhausted."""

    export_id: UUID


class CloseExport(Ask[bool]):
    export_id: UUID


# --- events ------------------------------------------------------------------------------------------


class VehicleRegistered(Event):
    vehicle_id: UUID
    vin: str
    make: str
    model: str
    category: str
    owners: list[UUID] = []
    plate: str | None = None
    filed_by: str | None = None
    by: str


class VehicleUpdated(Event):
    vehicle_id: UUID
    version: int
    fields: list[str]
    by: str


class OwnerChanged(Event):
    vehicle_id: UUID
    old_owners: list[UUID]
    new_owners: list[UUID]
    by: str


class VehicleStatusChanged(Event):
    vehicle_id: UUID
    old_status: VehicleStatus
    new_status: VehicleStatus
    reason: str = ""
    by: str


class VehicleStandingChanged(Event):
    """A pledge, opposition or blacklist entry was declared or lifted."""

    vehicle_id: UUID | None = None
    kind: Literal["pledge", "opposition", "blacklist"]
    action: Literal["declared", "lifted"]
    subject: str = ""
    by: str


class VehicleArchived(Event):
    vehicle_id: UUID
    by: str


class VehiclesImported(Event):
    """One event per committed batch of an import job (not one per row: a national import would flood
    the outbox); `inserted` counts that batch's rows."""

    job_id: UUID
    inserted: int
    by: str
