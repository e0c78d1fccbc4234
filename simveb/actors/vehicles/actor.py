"""The vehicles actor: catalogue, the registry of vehicles, their legal standing and history; bulk
import and streamed export are handed to the pipeline in bulk.py.

Every change of a vehicle commits, in one transaction, the row (with its version bumped), one
append-only history entry per changed field and the event for the outbox. Updates carry the version
they were based on: a stale one is refused (412), never applied over someone else's change.
The actor keeps no state that correctness depends on (the database does: unique VIN and plate, row
locks), so it serves several messages at once; in memory it only holds the live progress of running
imports and the open export cursors.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from simveb.actors.registrations.messages import OwnershipTransferred, PlateAssigned, RegistrationValidated
from simveb.actors.vehicles import seed_data, store
from simveb.actors.vehicles.bulk import Exports, Imports
from simveb.actors.vehicles.messages import (
    STATUS_TRANSITIONS,
    AddToBlacklist,
    ArchiveVehicle,
    AssignPlate,
    BlacklistEntry,
    BlacklistPage,
    Block,
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
    ExportChunk,
    GetImportJob,
    GetVehicle,
    GetVehicleHistory,
    GetVehicleStanding,
    HistoryEntry,
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
    OwnerChanged,
    ReadExport,
    RegisterVehicle,
    RoadsideCheck,
    RoadsideLookup,
    SearchVehicles,
    SeedVehicles,
    SetVehicleStatus,
    StartImport,
    UpdateVehicle,
    Vehicle,
    VehicleArchived,
    VehicleFields,
    VehicleModel,
    VehiclePage,
    VehicleRegistered,
    VehicleStanding,
    VehicleStandingChanged,
    VehicleStatusChanged,
    VehicleType,
    VehicleUpdated,
    Viewer,
)
from simveb.audit import Audited
from simveb.bus import Actor, handler, reader
from simveb.errors import Conflict, Invalid, InvalidCursor, NotFound, PreconditionFailed
from simveb.messages import decode_cursor, page

log = logging.getLogger("simveb.vehicles")

# What a roadside answer says for each blocking code (no free text, no person ids).
_ROADSIDE_DETAIL = {
    "archived": "the vehicle is archived",
    "stolen": "the vehicle is declared stolen",
    "pledge": "the vehicle is pledged",
    "opposition": "an opposition is declared",
    "blacklisted": "the owner or the vehicle is blacklisted",
}

_VIN = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
_PLATE = re.compile(r"[A-Z0-9]+( [A-Z0-9]+)*")


def normalize_vin(raw: str) -> str:
    """Upper-case, without spaces or dashes; 17 characters, no I, O or Q. The check digit is never checked:
    it is only mandatory for North-American vehicles and most of Benin's fleet is not."""
    vin = re.sub(r"[\s-]", "", raw).upper()
    if len(vin) != 17:
        raise Invalid(f"a VIN has 17 characters, this one has {len(vin)}", code="invalid_vin")
    if set(vin) & {"I", "O", "Q"}:
        raise Invalid("the letters I, O and Q never appear in a VIN", code="invalid_vin")
    if not _VIN.fullmatch(vin):
        raise Invalid("a VIN has only letters and digits", code="invalid_vin")
    return vin


def normalize_plate(raw: str | None) -> str | None:
    """'ab  1234 rb' -> 'AB 1234 RB'. Spacing is kept for display; lookups ignore it."""
    if raw is None:
        return None
    plate = re.sub(r"\s+", " ", raw.strip()).upper()
    if not plate:
        return None
    if not _PLATE.fullmatch(plate) or not 2 <= len(plate.replace(" ", "")) <= 12:
        raise Invalid("a plate has 2 to 12 letters and digits, separated by single spaces", code="invalid_plate")
    return plate


def visible(vehicle: Vehicle, viewer: Viewer | None) -> bool:
    if viewer is None or viewer.scope == "all":
        return True
    owner = any(str(o) == viewer.sub for o in vehicle.owners)
    return owner if viewer.scope == "own" else owner or vehicle.filed_by == viewer.sub


def _plain(value: Any) -> Any:
    return msgspec.to_builtins(value)


class VehiclesActor(Audited, Actor):
    name = "vehicles"
    # No in-memory state correctness depends on: reads (GET by id, searches) run side by side.
    concurrency = 8

    async def on_start(self) -> None:
        async with self.db.connection() as con:
            self.fuzzy: store.FuzzyMode = await store.fuzzy_mode(con)
        self.imports = Imports(self.db, lambda: self.settings, self.emit)
        self.exports = Exports(self.db, lambda: self.settings)
        log.info("vehicles: fuzzy name search uses %s", "pg_trgm" if self.fuzzy == "trgm" else "full-text (core)")

    async def on_stop(self) -> None:
        await self.imports.stop()
        await self.exports.stop()

    # --- catalogue ---------------------------------------------------------------------------------

    @handler
    async def list_brands(self, msg: ListBrands, con: asyncpg.Connection) -> list[Brand]:
        return await store.list_brands(con, msg.include_inactive)

    @handler
    async def list_models(self, msg: ListModels, con: asyncpg.Connection) -> list[VehicleModel]:
        return await store.list_models(con, msg.brand, msg.include_inactive)

    @handler
    async def list_types(self, msg: ListVehicleTypes, con: asyncpg.Connection) -> list[VehicleType]:
        return await store.list_types(con)

    @handler
    async def list_categories(self, msg: ListCategories, con: asyncpg.Connection) -> list[Category]:
        return await store.list_categories(con)

    @handler
    async def list_energies(self, msg: ListEnergies, con: asyncpg.Connection) -> list[Energy]:
        return await store.list_energies(con)

    @handler
    async def list_characteristics(
        self, msg: ListCharacteristics, con: asyncpg.Connection
    ) -> list[CharacteristicCategory]:
        return await store.list_characteristics(con)

    @handler
    async def create_brand(self, msg: CreateBrand, con: asyncpg.Connection) -> Brand:
        brand = await store.insert_brand(con, msg.code, msg.name.strip(), msg.country.strip())
        if brand is None:
            raise Conflict(f"a brand {msg.code!r} or named {msg.name!r} exists already", code="brand_exists")
        log.info("brand %s added by %s", msg.code, msg.by)
        return brand

    @handler
    async def create_model(self, msg: CreateModel, con: asyncpg.Connection) -> VehicleModel:
        if not await store.exists(con, "brands", msg.brand_code):
            raise NotFound(f"no brand {msg.brand_code!r}", code="unknown_make")
        if not await store.exists(con, "types", msg.vehicle_type):
            raise Invalid(f"no vehicle type {msg.vehicle_type!r}", code="unknown_vehicle_type")
        model = await store.insert_model(con, msg.brand_code, msg.name.strip(), msg.vehicle_type)
        if model is None:
            raise Conflict(f"{msg.brand_code} already has a model {msg.name!r}", code="model_exists")
        return model

    @handler
    async def create_type(self, msg: CreateVehicleType, con: asyncpg.Connection) -> VehicleType:
        if not await store.exists(con, "categories", msg.category):
            raise Invalid(f"no category {msg.category!r}", code="unknown_category")
        created = await store.insert_type(con, msg.code, msg.label, msg.category)
        if created is None:
            raise Conflict(f"vehicle type {msg.code!r} exists already", code="type_exists")
        return created

    @handler
    async def create_characteristic(self, msg: CreateCharacteristic, con: asyncpg.Connection) -> CharacteristicValue:
        if msg.category_label is None and not await store.exists(con, "characteristic_categories", msg.category_code):
            raise Invalid(f"no characteristic category {msg.category_code!r}", code="unknown_category")
        created = await store.insert_characteristic(con, msg.category_code, msg.category_label, msg.code, msg.label)
        if created is None:
            raise Conflict(f"characteristic {msg.code!r} exists already", code="characteristic_exists")
        return created

    @handler
    async def seed(self, msg: SeedVehicles, con: asyncpg.Connection) -> int:
        if msg.only_if_empty and not await store.catalogue_is_empty(con):
            return 0
        return await seed_data.load(con)

    # --- vehicles: reads ---------------------------------------------------------------------------

    @reader  # one SELECT: no transaction round trips
    async def get_vehicle(self, msg: GetVehicle, con: asyncpg.Connection) -> Vehicle:
        vehicle = await store.get_vehicle(con, msg.vehicle_id)
        if vehicle is None or not visible(vehicle, msg.viewer):
            raise NotFound(f"no vehicle {msg.vehicle_id}", code="unknown_vehicle")
        return vehicle

    @handler
    async def search(self, msg: SearchVehicles, con: asyncpg.Connection) -> VehiclePage:
        after = decode_cursor(msg.cursor, UUID)
        rows = await store.search(con, msg.filter, msg.viewer, self.fuzzy, after and after[0], msg.limit + 1)
        return page(VehiclePage, rows, msg.limit, lambda v: (v.id,))

    @handler
    async def history(self, msg: GetVehicleHistory, con: asyncpg.Connection) -> HistoryPage:
        vehicle = await store.get_vehicle(con, msg.vehicle_id)
        if vehicle is None or not visible(vehicle, msg.viewer):
            raise NotFound(f"no vehicle {msg.vehicle_id}", code="unknown_vehicle")
        # The keyset is (vehicle, entry id): a cursor of another vehicle's history, or of another
        # list whose keyset is a bare number (the config history), is refused, not read as a position.
        after = decode_cursor(msg.cursor, UUID, int)
        if after is not None and after[0] != msg.vehicle_id:
            raise InvalidCursor()
        entries = await store.history(con, msg.vehicle_id, after and after[1], msg.limit + 1)
        if after is None and (not entries or entries[0].field != "created"):
            # Imported vehicles get no per-row history entry (a national import would double its
            # cost); their creation is told from the row and its import job. It is a real keyset
            # position, id 0 (below every bigserial id), so it leads the first page only and a
            # cursor after it (0) resumes at the first stored entry.
            origin = await store.import_origin(con, msg.vehicle_id)
            entries.insert(
                0,
                HistoryEntry(
                    id=0,
                    vehicle_id=vehicle.id,
                    at=origin.created_at,
                    actor=origin.created_by,
                    field="created",
                    new_value={
                        "import_job": str(origin.import_job) if origin.import_job else None,
                        "source": origin.source,
                    },
                ),
            )
        return page(HistoryPage, entries, msg.limit, lambda e: (e.vehicle_id, e.id))

    # --- vehicles: writes --------------------------------------------------------------------------

    async def _fields(self, con: asyncpg.Connection, f: VehicleFields) -> dict[str, Any]:
        """Check the fields against the catalogue and return them in catalogue spelling."""
        chars = sorted(set(f.characteristics))
        r = await store.resolve(con, f.make.strip(), f.model.strip(), f.vehicle_type, f.energy.strip(), chars)
        if r.make is None:
            raise Invalid(f"unknown make {f.make!r}", code="unknown_make")
        if r.model is None:
            raise Invalid(f"unknown model {f.model!r} for {r.make}", code="unknown_model")
        if r.type_category is None:
            raise Invalid(f"unknown vehicle type {f.vehicle_type!r}", code="unknown_vehicle_type")
        category = f.category or r.type_category
        if category != r.type_category:
            raise Invalid(
                f"category {category!r} does not match vehicle type {f.vehicle_type or r.model_type!r}",
                code="category_mismatch",
            )
        if r.energy is None:
            raise Invalid(f"unknown energy {f.energy!r}", code="unknown_energy")
        if r.unknown_characteristics:
            raise Invalid(
                f"unknown characteristics: {', '.join(r.unknown_characteristics)}", code="unknown_characteristic"
            )
        if f.year is not None and f.year > datetime.now(UTC).year + 1:
            raise Invalid(f"year {f.year} is in the future", code="invalid_year")
        data = msgspec.structs.asdict(f)
        data.update(
            make=r.make,
            model=r.model,
            vehicle_type=f.vehicle_type or r.model_type,
            category=category,
            energy=r.energy,
            characteristics=chars,
            commercial_name=f.commercial_name.strip(),
            colour=f.colour.strip(),
            customs_ref=f.customs_ref.strip(),
        )
        return data

    async def _locked(
        self, con: asyncpg.Connection, vehicle_id: UUID, expected: int | None, viewer: Viewer | None = None
    ) -> Vehicle:
        """The vehicle, row-locked for this transaction, at the expected version and not archived."""
        vehicle = await store.get_vehicle(con, vehicle_id, lock=True)
        if vehicle is None or not visible(vehicle, viewer):
            raise NotFound(f"no vehicle {vehicle_id}", code="unknown_vehicle")
        if expected is not None and vehicle.version != expected:
            raise PreconditionFailed(
                f"the vehicle changed since version {expected} (now {vehicle.version}): reload and retry",
                code="stale_version",
                current_version=vehicle.version,
            )
        if vehicle.archived_at is not None:
            raise Conflict("the vehicle is archived", code="vehicle_archived")
        return vehicle

    @handler
    async def register(self, msg: RegisterVehicle, con: asyncpg.Connection) -> Vehicle:
        vin = normalize_vin(msg.vin)
        plate = normalize_plate(msg.plate)
        owners = list(dict.fromkeys(msg.owners))
        try:
            async with con.transaction():  # a savepoint: a lost race becomes a Conflict
                fields = await self._fields(con, msg.fields)
                if plate is not None and await store.plate_holder(con, store.plate_key(plate)) is not None:
                    raise Conflict(f"plate {plate} is assigned to another vehicle", code="plate_taken")
                vehicle = await store.insert_vehicle(con, vin, fields, owners, plate, msg.filed_by, msg.by)
                if vehicle is None:
                    raise Conflict(f"a vehicle with VIN {vin} is registered already", code="vin_exists")
                snapshot = {k: v for k, v in _plain(vehicle).items() if k not in _BOOKKEEPING}
                await store.record(con, vehicle.id, msg.by, [("created", None, snapshot)])
                await self.emit(
                    con,
                    VehicleRegistered(
                        vehicle_id=vehicle.id,
                        vin=vin,
                        make=vehicle.make,
                        model=vehicle.model,
                        category=vehicle.category,
                        owners=vehicle.owners,
                        plate=plate,
                        filed_by=msg.filed_by,
                        by=msg.by,
                    ),
                )
        except asyncpg.UniqueViolationError:
            # Lost a race with another writer between our check and the insert.
            raise Conflict("VIN or plate taken by another vehicle", code="vehicle_exists") from None
        return vehicle

    @handler
    async def update(self, msg: UpdateVehicle, con: asyncpg.Connection) -> Vehicle:
        old = await self._locked(con, msg.vehicle_id, msg.version, msg.viewer)
        fields = await self._fields(con, msg.fields)
        changes = [
            (name, _plain(getattr(old, name)), _plain(fields[name]))
            for name in fields
            if _plain(getattr(old, name)) != _plain(fields[name])
        ]
        if not changes:
            return old
        new = await store.update_fields(con, old.id, fields, msg.by)
        await store.record(con, old.id, msg.by, changes, msg.reason)
        await self.emit(
            con, VehicleUpdated(vehicle_id=old.id, version=new.version, fields=[c[0] for c in changes], by=msg.by)
        )
        return new

    @handler
    async def archive(self, msg: ArchiveVehicle, con: asyncpg.Connection) -> Vehicle:
        old = await self._locked(con, msg.vehicle_id, msg.version)
        new = await store.archive(con, old.id, msg.by)
        await store.record(con, old.id, msg.by, [("archived", None, _plain(new.archived_at))], msg.reason)
        await self.audit(con, msg.by, old.id, "vehicle_archived", reason=msg.reason)
        await self.emit(con, VehicleArchived(vehicle_id=old.id, by=msg.by))
        return new

    @handler
    async def assign_plate(self, msg: AssignPlate, con: asyncpg.Connection) -> Vehicle:
        plate = normalize_plate(msg.plate)
        try:
            async with con.transaction():  # a savepoint: a lost race becomes a Conflict
                old = await self._locked(con, msg.vehicle_id, None)
                if old.plate == plate:
                    return old
                if plate is not None:
                    holder = await store.plate_holder(con, store.plate_key(plate))
                    if holder is not None and holder != old.id:
                        raise Conflict(f"plate {plate} is assigned to another vehicle", code="plate_taken")
                new = await store.set_column(con, old.id, "plate", plate, msg.by)
                await store.record(con, old.id, msg.by, [("plate", old.plate, plate)], msg.reason)
                await self.audit(con, msg.by, old.id, "plate_changed", old=old.plate, new=plate, reason=msg.reason)
                await self.emit(
                    con, VehicleUpdated(vehicle_id=old.id, version=new.version, fields=["plate"], by=msg.by)
                )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"plate {plate} is assigned to another vehicle", code="plate_taken") from None
        return new

    @handler
    async def change_owners(self, msg: ChangeOwners, con: asyncpg.Connection) -> Vehicle:
        owners = list(dict.fromkeys(msg.owners))
        if not owners:
            raise Invalid("a vehicle needs at least one owner", code="owners_required")
        old = await self._locked(con, msg.vehicle_id, msg.version)
        if owners == old.owners:
            return old
        standing = await self._standing(con, old, [str(o) for o in owners])
        if standing.transfer_blocked:
            raise Conflict(
                "transfer blocked: " + "; ".join(r.detail for r in standing.reasons),
                code="transfer_blocked",
                reasons=_plain(standing.reasons),
            )
        new = await store.set_column(con, old.id, "owners", owners, msg.by)
        await store.record(con, old.id, msg.by, [("owners", _plain(old.owners), _plain(owners))], msg.reason)
        await self.audit(con, msg.by, old.id, "owners_changed", old=old.owners, new=owners, reason=msg.reason)
        await self.emit(con, OwnerChanged(vehicle_id=old.id, old_owners=old.owners, new_owners=owners, by=msg.by))
        return new

    # --- effects of registrations (events: the plate and the owners a validated request gives) -------

    @handler
    async def on_plate_assigned(self, event: PlateAssigned, con: asyncpg.Connection) -> None:
        """Record the plate a registration issued; the history names the request."""
        plate = normalize_plate(event.plate)
        old = await self._locked(con, event.vehicle_id, None)
        if old.plate == plate:
            return
        holder = await store.plate_holder(con, store.plate_key(plate))
        if holder is not None and holder != old.id:
            # Registrations never issues a plate twice; a plate typed in by hand on another vehicle
            # is a data error for staff to fix. Failing keeps the event for redelivery, visibly.
            raise Conflict(f"plate {plate} is assigned to another vehicle", code="plate_taken")
        by = f"registrations:{event.request_id}"
        new = await store.set_column(con, old.id, "plate", plate, by)
        await store.record(con, old.id, by, [("plate", old.plate, plate)], f"registration request {event.request_id}")
        await self.audit(con, by, old.id, "plate_changed", old=old.plate, new=plate, request_id=event.request_id)
        await self.emit(con, VehicleUpdated(vehicle_id=old.id, version=new.version, fields=["plate"], by=by))

    @handler
    async def on_ownership_transferred(self, event: OwnershipTransferred, con: asyncpg.Connection) -> None:
        """Replace the owners after a validated transfer (its standing was checked at validation)."""
        owners = list(dict.fromkeys(event.new_owners))
        old = await self._locked(con, event.vehicle_id, None)
        if owners == old.owners or not owners:
            return
        by = f"registrations:{event.request_id}"
        await store.set_column(con, old.id, "owners", owners, by)
        await store.record(
            con,
            old.id,
            by,
            [("owners", _plain(old.owners), _plain(owners))],
            f"registration request {event.request_id} ({event.number})",
        )
        await self.audit(con, by, old.id, "owners_changed", old=old.owners, new=owners, number=event.number)
        await self.emit(con, OwnerChanged(vehicle_id=old.id, old_owners=old.owners, new_owners=owners, by=by))

    @handler
    async def on_registration_validated(self, event: RegistrationValidated, con: asyncpg.Connection) -> None:
        """Every validated request leaves a line in the history (a renewal or a duplicate changes no field)."""
        if await store.get_vehicle(con, event.vehicle_id) is None:
            log.error("registration %s validated for unknown vehicle %s", event.number, event.vehicle_id)
            return
        entry = {"procedure": event.procedure, "number": event.number, "plate": event.plate}
        await store.record(
            con,
            event.vehicle_id,
            f"registrations:{event.request_id}",
            [("registration", None, entry)],
            f"registration request {event.request_id} ({event.number})",
        )

    @handler
    async def set_status(self, msg: SetVehicleStatus, con: asyncpg.Connection) -> Vehicle:
        old = await self._locked(con, msg.vehicle_id, msg.version)
        if msg.status == old.status:
            return old
        if msg.status not in STATUS_TRANSITIONS[old.status]:
            raise Conflict(f"a vehicle {old.status} cannot become {msg.status}", code="invalid_transition")
        new = await store.set_column(con, old.id, "status", msg.status, msg.by)
        await store.record(con, old.id, msg.by, [("status", old.status, msg.status)], msg.reason)
        await self.audit(con, msg.by, old.id, "status_changed", old=old.status, new=msg.status, reason=msg.reason)
        await self.emit(
            con,
            VehicleStatusChanged(
                vehicle_id=old.id, old_status=old.status, new_status=msg.status, reason=msg.reason, by=msg.by
            ),
        )
        return new

    # --- legal standing ----------------------------------------------------------------------------

    async def _standing(self, con: asyncpg.Connection, v: Vehicle, persons: list[str]) -> VehicleStanding:
        encumbrances = await store.active_encumbrances(con, v.id)
        people = dict.fromkeys([*(str(o) for o in v.owners), *persons])
        listed = await store.active_blacklist(con, [("vehicle", str(v.id)), *(("person", p) for p in people)])
        reasons: list[Block] = []
        transfer = registration = False
        if v.archived_at is not None:
            transfer = registration = True
            reasons.append(Block(code="archived", detail="the vehicle is archived"))
        if v.status != "active":
            transfer = registration = True
            detail = {"stolen": "reported stolen", "destroyed": "destroyed", "exported": "exported"}[v.status]
            reasons.append(Block(code=v.status, detail=f"the vehicle is {detail}"))
        pledges = [e for e in encumbrances if e.kind == "pledge"]
        oppositions = [e for e in encumbrances if e.kind == "opposition"]
        for p in pledges:
            # A pledge follows the vehicle: it may be re-registered, not sold until the creditor lifts it.
            transfer = True
            reasons.append(
                Block(code="pledge", detail=f"pledged to {p.holder or 'a creditor'} ({p.reference or p.id})")
            )
        for o in oppositions:
            transfer = registration = True
            reasons.append(Block(code="opposition", detail=f"opposition by {o.holder or 'an authority'}: {o.reason}"))
        for b in listed:
            transfer = registration = True
            who = "the vehicle" if b.subject_kind == "vehicle" else f"person {b.subject}"
            reasons.append(Block(code="blacklisted", detail=f"{who} is blacklisted: {b.reason}"))
        return VehicleStanding(
            vehicle_id=v.id,
            vin=v.vin,
            plate=v.plate,
            status=v.status,
            archived=v.archived_at is not None,
            pledges=pledges,
            oppositions=oppositions,
            blacklist=listed,
            transfer_blocked=transfer,
            registration_blocked=registration,
            reasons=reasons,
        )

    async def _find(
        self, con: asyncpg.Connection, vehicle_id: UUID | None, vin: str | None, plate: str | None
    ) -> Vehicle:
        vehicle = None
        if vehicle_id is not None:
            vehicle = await store.get_vehicle(con, vehicle_id)
        elif vin:
            vehicle = await store.find_vehicle(con, vin=re.sub(r"[\s-]", "", vin).upper())
        elif plate:
            vehicle = await store.find_vehicle(con, plate_key=store.plate_key(plate))
        else:
            raise Invalid("give vehicle_id, vin or plate", code="vehicle_required")
        if vehicle is None:
            raise NotFound("no such vehicle", code="unknown_vehicle")
        return vehicle

    @handler
    async def standing(self, msg: GetVehicleStanding, con: asyncpg.Connection) -> VehicleStanding:
        vehicle = await self._find(con, msg.vehicle_id, msg.vin, msg.plate)
        if not visible(vehicle, msg.viewer):
            raise NotFound("no such vehicle", code="unknown_vehicle")
        return await self._standing(con, vehicle, msg.persons)

    @handler
    async def roadside(self, msg: RoadsideLookup) -> RoadsideCheck:
        key = store.plate_key(msg.plate)
        # Its own transaction, committed even when no vehicle carries the plate: a miss is a lookup too.
        async with self.db.transaction() as con:
            vehicle = await store.find_vehicle(con, plate_key=key)
            await store.record_lookup(con, msg.by, key, found=vehicle is not None and vehicle.plate is not None)
            s = await self._standing(con, vehicle, []) if vehicle is not None and vehicle.plate is not None else None
        if vehicle is None or vehicle.plate is None or s is None:
            raise NotFound(f"no vehicle carries plate {msg.plate.upper()}", code="unknown_plate")
        return RoadsideCheck(
            plate=vehicle.plate,
            vin=vehicle.vin,
            make=vehicle.make,
            model=vehicle.model,
            commercial_name=vehicle.commercial_name,
            colour=vehicle.colour,
            category=vehicle.category,
            year=vehicle.year,
            status=vehicle.status,
            stolen=vehicle.status == "stolen",
            pledged=bool(s.pledges),
            opposed=bool(s.oppositions),
            blacklisted=bool(s.blacklist),
            alert=vehicle.status != "active" or bool(s.oppositions or s.blacklist) or s.archived,
            # One fixed phrase per code: the free-text reasons and the ids in `s.reasons` stay here.
            reasons=[
                Block(code=r.code, detail=_ROADSIDE_DETAIL.get(r.code, f"the vehicle is {r.code}")) for r in s.reasons
            ],
        )

    @handler
    async def declare(self, msg: DeclareEncumbrance, con: asyncpg.Connection) -> Encumbrance:
        vehicle = await self._locked(con, msg.vehicle_id, None)
        created = await store.insert_encumbrance(
            con, vehicle.id, msg.kind, msg.holder.strip(), msg.reference.strip(), msg.reason, msg.by
        )
        await store.record(
            con,
            vehicle.id,
            msg.by,
            [(msg.kind, None, {"id": str(created.id), "holder": created.holder, "reference": created.reference})],
            msg.reason,
        )
        await self.audit(
            con, msg.by, vehicle.id, "standing_declared", kind=msg.kind, id=created.id, holder=created.holder,
            reference=created.reference, reason=msg.reason,
        )  # fmt: skip
        await self.emit(con, VehicleStandingChanged(vehicle_id=vehicle.id, kind=msg.kind, action="declared", by=msg.by))
        return created

    @handler
    async def lift(self, msg: LiftEncumbrance, con: asyncpg.Connection) -> Encumbrance:
        found = await store.get_encumbrance(con, msg.encumbrance_id, lock=True)
        if found is None or found.vehicle_id != msg.vehicle_id or msg.kind not in (None, found.kind):
            raise NotFound(f"no pledge or opposition {msg.encumbrance_id} on this vehicle", code="unknown_encumbrance")
        if found.lifted_at is not None:
            raise Conflict(f"this {found.kind} was lifted already", code="already_lifted")
        lifted = await store.lift_encumbrance(con, found.id, msg.reason, msg.by)
        await store.record(
            con,
            found.vehicle_id,
            msg.by,
            [(found.kind, {"id": str(found.id), "holder": found.holder, "reference": found.reference}, None)],
            msg.reason,
        )
        await self.audit(
            con, msg.by, found.vehicle_id, "standing_lifted", kind=found.kind, id=found.id, reason=msg.reason
        )
        await self.emit(
            con, VehicleStandingChanged(vehicle_id=found.vehicle_id, kind=found.kind, action="lifted", by=msg.by)
        )
        return lifted

    @handler
    async def blacklist_add(self, msg: AddToBlacklist, con: asyncpg.Connection) -> BlacklistEntry:
        vehicle_id = None
        subject = msg.subject.strip()
        if msg.subject_kind == "vehicle":
            try:
                vehicle_id = UUID(subject)
            except ValueError:
                raise Invalid("a blacklisted vehicle is given by its id", code="invalid_subject") from None
            if await store.get_vehicle(con, vehicle_id) is None:
                raise NotFound(f"no vehicle {subject}", code="unknown_vehicle")
            subject = str(vehicle_id)
        entry = await store.insert_blacklist(con, msg.subject_kind, subject, msg.reason, msg.by)
        if entry is None:
            raise Conflict(f"{msg.subject_kind} {subject} is blacklisted already", code="already_blacklisted")
        if vehicle_id is not None:
            await store.record(con, vehicle_id, msg.by, [("blacklist", None, {"id": str(entry.id)})], msg.reason)
        await self.audit(
            con, msg.by, subject, "standing_declared", kind="blacklist", subject_kind=msg.subject_kind, id=entry.id,
            reason=msg.reason,
        )  # fmt: skip
        await self.emit(
            con,
            VehicleStandingChanged(
                vehicle_id=vehicle_id, kind="blacklist", action="declared", subject=subject, by=msg.by
            ),
        )
        return entry

    @handler
    async def blacklist_lift(self, msg: LiftBlacklist, con: asyncpg.Connection) -> BlacklistEntry:
        found = await store.get_blacklist(con, msg.entry_id, lock=True)
        if found is None:
            raise NotFound(f"no blacklist entry {msg.entry_id}", code="unknown_blacklist_entry")
        if found.lifted_at is not None:
            raise Conflict("this entry was lifted already", code="already_lifted")
        lifted = await store.lift_blacklist(con, found.id, msg.by)
        vehicle_id = UUID(found.subject) if found.subject_kind == "vehicle" else None
        if vehicle_id is not None:
            await store.record(con, vehicle_id, msg.by, [("blacklist", {"id": str(found.id)}, None)])
        await self.audit(
            con,
            msg.by,
            found.subject,
            "standing_lifted",
            kind="blacklist",
            subject_kind=found.subject_kind,
            id=found.id,
        )
        await self.emit(
            con,
            VehicleStandingChanged(
                vehicle_id=vehicle_id, kind="blacklist", action="lifted", subject=found.subject, by=msg.by
            ),
        )
        return lifted

    @handler
    async def blacklist_list(self, msg: ListBlacklist, con: asyncpg.Connection) -> BlacklistPage:
        after = decode_cursor(msg.cursor, datetime, UUID)
        rows = await store.list_blacklist(con, msg.include_lifted, after, msg.limit + 1)
        return page(BlacklistPage, rows, msg.limit, lambda e: (e.added_at, e.id))

    # --- bulk import and export (the pipeline is in bulk.py) -------------------------------------

    @handler
    async def start_import(self, msg: StartImport) -> ImportJob:
        return await self.imports.start(msg)

    @handler
    async def get_import_job(self, msg: GetImportJob) -> ImportJob:
        return await self.imports.get(msg.job_id)

    @handler
    async def open_export(self, msg: OpenExport) -> UUID:
        return await self.exports.start(msg, self.fuzzy)

    @handler
    async def read_export(self, msg: ReadExport) -> ExportChunk:
        return await self.exports.read(msg.export_id)

    @handler
    async def close_export(self, msg: CloseExport) -> bool:
        return await self.exports.close(msg.export_id)


_BOOKKEEPING = {"id", "version", "created_at", "created_by", "updated_at", "updated_by", "archived_at", "archived_by"}
