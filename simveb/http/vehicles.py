"""HTTP routes of the vehicles service: catalogue, vehicles, standing, search, lookup, import and export.

Permissions (README): the catalogue is public to read and changed with `config:write` (reference data
is the admin's, like the fee grid; agents with vehicles:write must not rename a brand under every
registered car). Vehicles: `vehicles:read` sees all (agents, police), `vehicles:file` sees and edits
what it filed (affiliates), anyone else sees the vehicles they own; `vehicles:write` creates, updates,
transfers and archives, `vehicles:standing` declares and lifts pledges, oppositions, thefts and the
blacklist, `vehicles:lookup` is the roadside plate check, `vehicles:import` bulk import and export.

Updates use optimistic concurrency: GET returns `ETag: "<version>"`, PUT needs `If-Match` (or a
`version` field); a stale one gets 412.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.params import Parameter
from litestar.response import File, Stream

from simveb.actors.vehicles.messages import (
    AddToBlacklist,
    ArchiveVehicle,
    AssignPlate,
    BlacklistEntry,
    BlacklistPage,
    Brand,
    Category,
    ChangeOwners,
    CharacteristicCategory,
    CharacteristicValue,
    CloseExport,
    CreateBrand,
    CreateCharacteristic,
    CreateModel,
    CreateVehicleType,
    DeclareEncumbrance,
    Encumbrance,
    Energy,
    GetImportJob,
    GetVehicle,
    GetVehicleHistory,
    GetVehicleStanding,
    HistoryPage,
    ImportJob,
    LiftBlacklist,
    LiftEncumbrance,
    ListBlacklist,
    ListBrands,
    ListCategories,
    ListCharacteristics,
    ListEnergies,
    ListModels,
    ListVehicleTypes,
    OpenExport,
    PlateText,
    PreconditionRequired,
    ReadExport,
    RegisterVehicle,
    RoadsideCheck,
    RoadsideLookup,
    SearchVehicles,
    SetVehicleStatus,
    StartImport,
    Text1000,
    UpdateVehicle,
    Vehicle,
    VehicleFields,
    VehicleFilter,
    VehicleModel,
    VehiclePage,
    VehicleStanding,
    VehicleStatus,
    VehicleType,
    Viewer,
    VinText,
)
from simveb.bus import Bus
from simveb.config import Settings
from simveb.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge
from simveb.http.inputs import CursorQuery, LimitQuery, body_of, record_of
from simveb.http.security import requires, requires_any
from simveb.messages import PAGE_LIMIT_DEFAULT, Caller

PUBLIC = {"public": True}
CATALOGUE_WRITE = [requires("config:write")]
STANDING = [requires("vehicles:standing")]
IMPORT = [requires("vehicles:import")]


WRITE_OR_FILE = [requires_any("vehicles:write", "vehicles:file")]
WRITE = [requires("vehicles:write")]


BrandIn = body_of(CreateBrand, exclude=("by",), name="BrandIn")


ModelIn = body_of(CreateModel, exclude=("by",), name="ModelIn")


TypeIn = body_of(CreateVehicleType, exclude=("by",), name="TypeIn")


CharacteristicIn = body_of(CreateCharacteristic, exclude=("by",), name="CharacteristicIn")


class FieldsIn(VehicleFields, forbid_unknown_fields=True):
    """The carte grise fields (D.1 make, D.2 type, D.3 commercial name, J category, P.1-P.6, S.1, F/G masses …).

    The message's own struct, refusing unknown fields like every HTTP body (see simveb.http.inputs):
    one list of fields and constraints for the contract and the route.
    """


class VehicleIn(FieldsIn):
    vin: VinText
    owners: list[UUID] = []
    plate: PlateText | None = None


class VehicleUpdate(FieldsIn):
    version: int | None = None  # UpdateVehicle's version, here optional: If-Match may carry it instead
    reason: Text1000 = ""


# `version` is the version the client read, as If-Match carries it (the body's wins when both are sent).
TransferIn = body_of(ChangeOwners, exclude=("vehicle_id", "by"), name="TransferIn")
PlateIn = body_of(AssignPlate, exclude=("vehicle_id", "by"), name="PlateIn")
StatusIn = body_of(SetVehicleStatus, exclude=("vehicle_id", "by"), name="StatusIn")


EncumbranceIn = body_of(DeclareEncumbrance, exclude=("vehicle_id", "kind", "by"), name="EncumbranceIn")


LiftIn = body_of(LiftEncumbrance, exclude=("vehicle_id", "encumbrance_id", "kind", "by"), name="LiftIn")


BlacklistIn = body_of(AddToBlacklist, exclude=("by",), name="BlacklistIn")


# --- helpers -------------------------------------------------------------------------------------------


def viewer_of(caller: Caller, *, writing: bool = False) -> Viewer:
    """The one place a vehicles `Viewer` is built from the caller.

    Reading: staff see every vehicle, affiliates those they filed (and own), anyone else their own.
    A caller holding the roadside lookup without `vehicles:read` (the police role) reads records only
    through the lookup: full records, searches and histories are refused outright. Writing: writers
    change any vehicle, an affiliate without vehicles:write only what it filed.
    """
    if writing:
        return Viewer(sub=caller.sub, scope="all" if caller.can("vehicles:write") else "filed")
    if caller.can("vehicles:read"):
        return Viewer(sub=caller.sub, scope="all")
    if caller.can("vehicles:lookup"):
        raise Forbidden("this role reads vehicles through the roadside lookup only", code="lookup_only")
    if caller.can("vehicles:file"):
        return Viewer(sub=caller.sub, scope="filed")
    return Viewer(sub=caller.sub, scope="own")


def etag(vehicle: Vehicle) -> str:
    return f'"{vehicle.version}"'


def _with_etag(vehicle: Vehicle, status: int = 200, **headers: str) -> Response[Vehicle]:
    return Response(vehicle, status_code=status, headers={"ETag": etag(vehicle), **headers})


def expected_version(request: Request[Any, Any, Any], body_version: int | None, *, required: bool) -> int | None:
    """The version the client based its change on: If-Match ("3" or W/"3") or the body's version."""
    header = request.headers.get("if-match")
    if header:
        value = header.strip().removeprefix("W/").strip('"')
        try:
            return int(value)
        except ValueError:
            raise BadRequest(
                f'If-Match must be an ETag of this API, like "3"; got {header}', code="bad_if_match"
            ) from None
    if body_version is not None:
        return body_version
    if required:
        raise PreconditionRequired("send If-Match with the ETag you read (or a version field)")
    return None


def _filter(**values: Any) -> VehicleFilter:
    try:
        return msgspec.convert({k: v for k, v in values.items() if v is not None}, VehicleFilter)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid search: {exc}", code="validation_error") from None


def import_dir(settings: Settings) -> Path:
    return Path(settings.vehicles.import_dir) if settings.vehicles.import_dir else settings.data_dir / "imports"


# Query parameters shared by search and export.
Q = Annotated[
    str | None,
    Parameter(max_length=100, description="VIN or plate prefix, or make / model / commercial name (fuzzy)"),
]
# The search filters, with VehicleFilter's bounds, checked and documented by the route.
VinQuery = Annotated[str | None, Parameter(max_length=17, description="A VIN, or its first characters")]
PlateQuery = Annotated[str | None, Parameter(max_length=20, description="The current plate (spaces ignored)")]
NameQuery = Annotated[str | None, Parameter(max_length=100, description="Exact, case-insensitive")]
YearQuery = Annotated[int | None, Parameter(ge=1900, le=2100, description="Year of manufacture bound (inclusive)")]


class VehiclesController(Controller):
    path = "/api/vehicles"
    tags = ["vehicles"]

    # --- catalogue ---------------------------------------------------------------------------------

    @get("/brands", opt=PUBLIC)
    async def brands(self, bus: Bus, include_inactive: bool = False) -> list[Brand]:
        """Vehicle brands (makes), cars and motorcycles."""
        return await bus.ask(ListBrands(include_inactive=include_inactive))

    @post("/brands", guards=CATALOGUE_WRITE)
    async def create_brand(self, bus: Bus, caller: Caller, data: BrandIn) -> Brand:
        """Add a brand (config:write)."""
        return await bus.ask(CreateBrand(by=caller.sub, **msgspec.structs.asdict(data)))

    @get("/models", opt=PUBLIC)
    async def models(self, bus: Bus, brand: str | None = None, include_inactive: bool = False) -> list[VehicleModel]:
        """Models, optionally of one brand (code or name)."""
        return await bus.ask(ListModels(brand=brand, include_inactive=include_inactive))

    @post("/models", guards=CATALOGUE_WRITE)
    async def create_model(self, bus: Bus, caller: Caller, data: ModelIn) -> VehicleModel:
        """Add a model to a brand (config:write)."""
        return await bus.ask(CreateModel(by=caller.sub, **msgspec.structs.asdict(data)))

    @get("/types", opt=PUBLIC)
    async def types(self, bus: Bus) -> list[VehicleType]:
        """Vehicle types (motorcycle, passenger car, pick-up …) with their category."""
        return await bus.ask(ListVehicleTypes())

    @post("/types", guards=CATALOGUE_WRITE)
    async def create_type(self, bus: Bus, caller: Caller, data: TypeIn) -> VehicleType:
        """Add a vehicle type (config:write)."""
        return await bus.ask(CreateVehicleType(by=caller.sub, **msgspec.structs.asdict(data)))

    @get("/categories", opt=PUBLIC)
    async def categories(self, bus: Bus) -> list[Category]:
        """Vehicle categories (the codes of the fee grid)."""
        return await bus.ask(ListCategories())

    @get("/energies", opt=PUBLIC)
    async def energies(self, bus: Bus) -> list[Energy]:
        """Energy sources (carte grise P.3)."""
        return await bus.ask(ListEnergies())

    @get("/characteristics", opt=PUBLIC)
    async def characteristics(self, bus: Bus) -> list[CharacteristicCategory]:
        """Characteristic categories and their values."""
        return await bus.ask(ListCharacteristics())

    @post("/characteristics", guards=CATALOGUE_WRITE)
    async def create_characteristic(self, bus: Bus, caller: Caller, data: CharacteristicIn) -> CharacteristicValue:
        """Add a characteristic value (and its category when new) (config:write)."""
        return await bus.ask(CreateCharacteristic(by=caller.sub, **msgspec.structs.asdict(data)))

    # --- vehicles ----------------------------------------------------------------------------------

    @get("/")
    async def search(
        self,
        bus: Bus,
        caller: Caller,
        q: Q = None,
        vin: VinQuery = None,
        plate: PlateQuery = None,
        owner: Annotated[UUID | None, Parameter(description="Vehicles this user owns or co-owns")] = None,
        make: NameQuery = None,
        model: NameQuery = None,
        status: VehicleStatus | None = None,
        year_min: YearQuery = None,
        year_max: YearQuery = None,
        include_archived: bool = False,
        cursor: CursorQuery = None,
        limit: LimitQuery = PAGE_LIMIT_DEFAULT,
    ) -> VehiclePage:
        """Search the vehicles the caller may see, in id order; next_cursor fetches the next page."""
        filt = _filter(
            q=q,
            vin=vin,
            plate=plate,
            owner=owner,
            make=make,
            model=model,
            status=status,
            year_min=year_min,
            year_max=year_max,
            include_archived=include_archived,
        )
        return await bus.ask(
            SearchVehicles(
                filter=filt,
                viewer=viewer_of(caller),
                cursor=cursor,
                limit=limit,
            )
        )

    @post("/", guards=WRITE_OR_FILE)
    async def register(self, bus: Bus, caller: Caller, data: VehicleIn) -> Response[Vehicle]:
        """Register a vehicle (vehicles:write; an affiliate with vehicles:file files it for its customers)."""
        filed_by = None if caller.can("vehicles:write") else caller.sub
        vehicle = await bus.ask(
            RegisterVehicle(
                vin=data.vin,
                fields=record_of(data, VehicleFields),
                owners=data.owners,
                plate=data.plate,
                filed_by=filed_by,
                by=caller.sub,
            )
        )
        return _with_etag(vehicle, 201, Location=f"/api/vehicles/{vehicle.id}")

    @get("/lookup", guards=[requires("vehicles:lookup")])
    async def lookup(
        self, bus: Bus, caller: Caller, plate: Annotated[str, Parameter(min_length=1, max_length=20)]
    ) -> RoadsideCheck:
        """Roadside check by plate: stolen, opposed, pledged, blacklisted, and only what a check needs (recorded)."""
        return await bus.ask(RoadsideLookup(plate=plate, by=caller.sub))

    @get("/export", guards=IMPORT, media_type="text/csv")
    async def export(
        self,
        bus: Bus,
        caller: Caller,
        q: Q = None,
        vin: str | None = None,
        plate: str | None = None,
        owner: UUID | None = None,
        make: str | None = None,
        model: str | None = None,
        status: VehicleStatus | None = None,
        year_min: int | None = None,
        year_max: int | None = None,
        include_archived: bool = False,
    ) -> Stream:
        """Stream the vehicles of a search as CSV (the import format), batch by batch from a server-side cursor."""
        filt = _filter(
            q=q,
            vin=vin,
            plate=plate,
            owner=owner,
            make=make,
            model=model,
            status=status,
            year_min=year_min,
            year_max=year_max,
            include_archived=include_archived,
        )
        export_id = await bus.ask(OpenExport(filter=filt, viewer=viewer_of(caller)))

        async def body() -> AsyncIterator[bytes]:
            done = False
            try:
                while not done:
                    chunk = await bus.ask(ReadExport(export_id=export_id))
                    done = chunk.done
                    yield chunk.data
            finally:
                if not done:  # the client went away: give the cursor's connection back now
                    with contextlib.suppress(Exception):
                        await bus.ask(CloseExport(export_id=export_id))

        return Stream(
            body(),
            media_type="text/csv",  # Litestar adds the charset of a text type itself
            headers={"Content-Disposition": 'attachment; filename="vehicles.csv"'},
        )

    @post(
        "/import",
        guards=IMPORT,
        status_code=202,
        request_max_body_size=None,
        # The handler streams the body itself: its media type is documented here.
        opt={"request_body": {"text/csv": {"type": "string", "description": "UTF-8, the header line first."}}},
    )
    async def start_import(self, bus: Bus, caller: Caller, request: Request[Any, Any, Any]) -> ImportJob:
        """Upload a CSV (request body, UTF-8, header line first) and import it in the background."""
        settings: Settings = request.app.state.settings
        folder = import_dir(settings)
        folder.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        path = folder / f"{name}.csv"
        size = 0
        try:
            with path.open("wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > settings.vehicles.import_max_bytes:
                        raise PayloadTooLarge(f"an import file is at most {settings.vehicles.import_max_bytes} bytes")
                    f.write(chunk)
            if size == 0:
                raise BadRequest("send the CSV file as the request body", code="empty_import")
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return await bus.ask(StartImport(path=str(path), error_path=str(folder / f"{name}.errors.csv"), by=caller.sub))

    @get("/import/{job_id:uuid}", guards=IMPORT)
    async def import_status(self, bus: Bus, job_id: UUID) -> ImportJob:
        """State and counts of an import job."""
        return await bus.ask(GetImportJob(job_id=job_id))

    @get("/import/{job_id:uuid}/errors", guards=IMPORT, media_type="text/csv")
    async def import_errors(self, bus: Bus, job_id: UUID) -> File:
        """The rejected rows of an import, each with its row number and reason (CSV)."""
        job = await bus.ask(GetImportJob(job_id=job_id))
        path = Path(job.error_path)
        if job.rejected == 0 or not path.is_file():
            raise NotFound("this import rejected no row", code="no_rejected_rows")
        return File(path, filename=f"import-{job_id}-errors.csv", media_type="text/csv")

    @get("/blacklist", guards=STANDING)
    async def blacklist(
        self,
        bus: Bus,
        include_lifted: Annotated[bool, Parameter(description="Lifted entries too")] = False,
        cursor: CursorQuery = None,
        limit: LimitQuery = PAGE_LIMIT_DEFAULT,
    ) -> BlacklistPage:
        """Blacklisted vehicles and persons, newest first."""
        return await bus.ask(ListBlacklist(include_lifted=include_lifted, cursor=cursor, limit=limit))

    @post("/blacklist", guards=STANDING)
    async def blacklist_add(self, bus: Bus, caller: Caller, data: BlacklistIn) -> BlacklistEntry:
        """Blacklist a vehicle (by id) or a person (by user id): every procedure is then blocked."""
        return await bus.ask(AddToBlacklist(by=caller.sub, **msgspec.structs.asdict(data)))

    @post("/blacklist/{entry_id:uuid}/lift", guards=STANDING, status_code=200)
    async def blacklist_lift(self, bus: Bus, caller: Caller, entry_id: UUID) -> BlacklistEntry:
        """Lift a blacklist entry (it stays on record)."""
        return await bus.ask(LiftBlacklist(entry_id=entry_id, by=caller.sub))

    @get("/{vehicle_id:uuid}")
    async def get_vehicle(self, bus: Bus, caller: Caller, vehicle_id: UUID) -> Response[Vehicle]:
        """One vehicle, with its ETag (the version to send back in If-Match)."""
        vehicle = await bus.ask(GetVehicle(vehicle_id=vehicle_id, viewer=viewer_of(caller)))
        return _with_etag(vehicle)

    @put("/{vehicle_id:uuid}", guards=WRITE_OR_FILE)
    async def update(
        self, bus: Bus, caller: Caller, request: Request[Any, Any, Any], vehicle_id: UUID, data: VehicleUpdate
    ) -> Response[Vehicle]:
        """Replace the carte grise fields; needs If-Match (412 when the vehicle changed meanwhile)."""
        version = expected_version(request, data.version, required=True)
        assert version is not None
        vehicle = await bus.ask(
            UpdateVehicle(
                vehicle_id=vehicle_id,
                fields=record_of(data, VehicleFields),
                version=version,
                viewer=viewer_of(caller, writing=True),
                reason=data.reason,
                by=caller.sub,
            )
        )
        return _with_etag(vehicle)

    @delete("/{vehicle_id:uuid}", guards=WRITE, status_code=200)
    async def archive(
        self, bus: Bus, caller: Caller, request: Request[Any, Any, Any], vehicle_id: UUID
    ) -> Response[Vehicle]:
        """Archive a vehicle: hidden from searches, never erased (If-Match honoured when sent)."""
        vehicle = await bus.ask(
            ArchiveVehicle(
                vehicle_id=vehicle_id,
                version=expected_version(request, None, required=False),
                by=caller.sub,
            )
        )
        return _with_etag(vehicle)

    @get("/{vehicle_id:uuid}/history")
    async def history(
        self,
        bus: Bus,
        caller: Caller,
        vehicle_id: UUID,
        cursor: CursorQuery = None,
        limit: LimitQuery = PAGE_LIMIT_DEFAULT,
    ) -> HistoryPage:
        """Every change of the vehicle, oldest first: who, when, field, old -> new (ownership, plate, standing included)."""
        return await bus.ask(
            GetVehicleHistory(vehicle_id=vehicle_id, viewer=viewer_of(caller), cursor=cursor, limit=limit)
        )

    @get("/{vehicle_id:uuid}/standing")
    async def standing(self, bus: Bus, caller: Caller, vehicle_id: UUID) -> VehicleStanding:
        """Pledges, oppositions, status and blacklist, and whether a transfer or registration is blocked."""
        return await bus.ask(GetVehicleStanding(vehicle_id=vehicle_id, viewer=viewer_of(caller)))

    @post("/{vehicle_id:uuid}/transfer", guards=WRITE, status_code=200)
    async def transfer(
        self, bus: Bus, caller: Caller, request: Request[Any, Any, Any], vehicle_id: UUID, data: TransferIn
    ) -> Response[Vehicle]:
        """Change the owners; refused (409) while a pledge, opposition, theft or blacklist blocks it."""
        vehicle = await bus.ask(
            ChangeOwners(
                vehicle_id=vehicle_id,
                owners=data.owners,
                version=expected_version(request, data.version, required=False),
                reason=data.reason,
                by=caller.sub,
            )
        )
        return _with_etag(vehicle)

    @put("/{vehicle_id:uuid}/plate", guards=WRITE)
    async def plate(self, bus: Bus, caller: Caller, vehicle_id: UUID, data: PlateIn) -> Response[Vehicle]:
        """Set or clear the current plate (normally done by the registration service)."""
        vehicle = await bus.ask(AssignPlate(vehicle_id=vehicle_id, plate=data.plate, reason=data.reason, by=caller.sub))
        return _with_etag(vehicle)

    @post("/{vehicle_id:uuid}/status", guards=STANDING, status_code=200)
    async def set_status(
        self, bus: Bus, caller: Caller, request: Request[Any, Any, Any], vehicle_id: UUID, data: StatusIn
    ) -> Response[Vehicle]:
        """Report the vehicle stolen, recovered (active), destroyed or exported."""
        vehicle = await bus.ask(
            SetVehicleStatus(
                vehicle_id=vehicle_id,
                status=data.status,
                version=expected_version(request, data.version, required=False),
                reason=data.reason,
                by=caller.sub,
            )
        )
        return _with_etag(vehicle)

    @post("/{vehicle_id:uuid}/pledges", guards=STANDING)
    async def declare_pledge(self, bus: Bus, caller: Caller, vehicle_id: UUID, data: EncumbranceIn) -> Encumbrance:
        """Declare a pledge (gage): the vehicle cannot be transferred until it is lifted."""
        return await _declare(bus, caller, vehicle_id, "pledge", data)

    @post("/{vehicle_id:uuid}/oppositions", guards=STANDING)
    async def declare_opposition(self, bus: Bus, caller: Caller, vehicle_id: UUID, data: EncumbranceIn) -> Encumbrance:
        """Declare an opposition: transfer and registration are blocked until it is lifted."""
        return await _declare(bus, caller, vehicle_id, "opposition", data)

    @post("/{vehicle_id:uuid}/pledges/{encumbrance_id:uuid}/lift", guards=STANDING, status_code=200)
    async def lift_pledge(
        self,
        bus: Bus,
        caller: Caller,
        vehicle_id: UUID,
        encumbrance_id: UUID,
        data: LiftIn | None = None,
    ) -> Encumbrance:
        """Lift a pledge (it stays on record with who lifted it)."""
        return await bus.ask(
            LiftEncumbrance(
                vehicle_id=vehicle_id,
                encumbrance_id=encumbrance_id,
                kind="pledge",
                reason=data.reason if data else "",
                by=caller.sub,
            )
        )

    @post("/{vehicle_id:uuid}/oppositions/{encumbrance_id:uuid}/lift", guards=STANDING, status_code=200)
    async def lift_opposition(
        self,
        bus: Bus,
        caller: Caller,
        vehicle_id: UUID,
        encumbrance_id: UUID,
        data: LiftIn | None = None,
    ) -> Encumbrance:
        """Lift an opposition (it stays on record with who lifted it)."""
        return await bus.ask(
            LiftEncumbrance(
                vehicle_id=vehicle_id,
                encumbrance_id=encumbrance_id,
                kind="opposition",
                reason=data.reason if data else "",
                by=caller.sub,
            )
        )


async def _declare(bus: Bus, caller: Caller, vehicle_id: UUID, kind: Any, data: EncumbranceIn) -> Encumbrance:
    return await bus.ask(
        DeclareEncumbrance(vehicle_id=vehicle_id, kind=kind, by=caller.sub, **msgspec.structs.asdict(data))
    )


CONTROLLERS: list[Any] = [VehiclesController]
