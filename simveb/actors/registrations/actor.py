"""The registrations actor: filing, the workflow of each request (as data), the payment saga, assignment,
validation with its cross-domain effects (plate, owners, certificate) and the plate sequence.

Asks (declared in simveb/actors/__init__.py): config (procedure, fee quote), vehicles (vehicle,
standing, creation of a new vehicle), users (new owners exist, staff who verify), documents (required
documents, when a documents actor runs in this process). Everything that changes another domain goes
by event through the outbox, in the transaction of the step: `PaymentRequested` (payments),
`PlateAssigned` and `OwnershipTransferred` (vehicles), `RegistrationValidated` (documents),
`RegistrationSubmitted` / `RegistrationStatusChanged` (notifications). Payments answer by events
(`PaymentSucceeded`, `PaymentFailed`, `PaymentRefunded`) consumed here.

Handlers that ask read first, ask with no connection held, then open the transaction, lock the
request and re-check: a concurrent step wins cleanly (409), never half-applied.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, date, datetime
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import msgspec

from simveb.actors.config.messages import GetService, QuoteFee
from simveb.actors.documents.messages import CheckRequiredDocuments
from simveb.actors.payments.messages import (
    ConfirmPayment,
    FeeLine,
    PaymentFailed,
    PaymentRefunded,
    PaymentRequested,
    PaymentSucceeded,
)
from simveb.actors.registrations import seed_data, store
from simveb.actors.registrations.messages import (
    AllocatePlate,
    AssignRequest,
    ChangeStatus,
    FeeLineOut,
    FileRequest,
    GetRequest,
    GetStats,
    GetWorkflow,
    Idempotency,
    IssuedPlate,
    ListRequests,
    ListReservations,
    ListSeries,
    OwnershipTransferred,
    PlateAssigned,
    RegistrationStatusChanged,
    RegistrationSubmitted,
    RegistrationValidated,
    RejectRequest,
    ReleaseReservation,
    Request,
    RequestPage,
    Reservation,
    ReservationPage,
    ReservePlates,
    SeedRegistrations,
    SeriesPosition,
    Stats,
    Transition,
    ValidateRequest,
    Workflow,
)
from simveb.actors.users.messages import GetUserAuthz, ListRoles, ListUsers
from simveb.actors.vehicles.messages import (
    GetVehicle,
    GetVehicleStanding,
    RegisterVehicle,
    Vehicle,
    VehicleStanding,
)
from simveb.audit import Audited
from simveb.bus import Actor, handler
from simveb.errors import Conflict, Forbidden, Invalid, NotFound
from simveb.messages import PAGE_LIMIT_MAX, Caller, decode_cursor, page

log = logging.getLogger("simveb.registrations")

R = TypeVar("R")

# Statuses after which a request holds no work (workload counts, duplicate-filing check).
TERMINAL = frozenset({"closed", "canceled", "rejected", "failed"})
# The permission of the assigned queue: a request in a step that needs it belongs to its assignee.
QUEUE_PERMISSION = "registrations:verify"
# Transitions that need this permission are taken by the system when it assigns work.
ASSIGN_PERMISSION = "registrations:assign"
SUBMIT_PERMISSION = "registrations:submit"
READ_ALL_PERMISSION = "registrations:read"
STAFF_PERMISSIONS = frozenset(
    {
        "registrations:verify",
        "registrations:validate",
        "registrations:assign",
        "registrations:print",
        "registrations:deliver",
        "payments:confirm",
        READ_ALL_PERMISSION,
    }
)
VALIDATED = "validated"
WAITING = "waiting_for_payment"
PAID = "paid"
# Asking users who may verify (to assign work) needs this much of their API.
_USERS_READER = Caller(sub="system:registrations", permissions=frozenset({"users:read"}))


def _transitions(req_workflow: list[dict[str, Any]]) -> list[Transition]:
    return [msgspec.convert(s, Transition) for s in req_workflow]


def _is_applicant(caller: Caller, req: Request) -> bool:
    uid = caller.user_id
    return uid is not None and uid in (req.applicant_id, req.filed_by)


def _plain(value: Any) -> Any:
    return msgspec.to_builtins(value)


class Prefetched(msgspec.Struct, kw_only=True):
    """What a step may need from other actors, read before its transaction opens."""

    verifiers: list[UUID] | None = None
    vehicle: Vehicle | None = None
    standing: VehicleStanding | None = None
    documents_missing: tuple[str, ...] | None = None
    plate: str | None = None  # the sequential plate issued to the request before validation


class RegistrationsActor(Audited, Actor):
    name = "registrations"
    # No in-memory state that matters (the staff cache is a hint): requests are serialised by row
    # locks, plates by the series row lock and the issued_plates primary key.
    concurrency = 8

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._verifiers: tuple[float, list[UUID]] | None = None

    # --- idempotency --------------------------------------------------------------------------------

    async def _replay(self, caller: Caller, idem: Idempotency | None, reply_type: type[R]) -> R | None:
        if idem is None:
            return None
        async with self.db.connection() as con:
            return await self._stored_reply(con, caller, idem, reply_type)

    @staticmethod
    async def _stored_reply(
        con: asyncpg.Connection, caller: Caller, idem: Idempotency | None, reply_type: type[R]
    ) -> R | None:
        """The answer stored for this Idempotency-Key, read on `con` (inside the transaction that would
        otherwise repeat the effect); None without a key or an answer."""
        if idem is None:
            return None
        found = await store.idem_get(con, caller.sub, idem.key)
        if found is None:
            return None
        fingerprint, reply = found
        if fingerprint != idem.fingerprint:
            raise Invalid("this Idempotency-Key was used with another request body", code="idempotency_key_reused")
        return msgspec.convert(reply, reply_type)

    async def _remember(
        self, con: asyncpg.Connection, caller: Caller | str, idem: Idempotency | None, reply: Any
    ) -> None:
        if idem is None:
            return
        sub = caller if isinstance(caller, str) else caller.sub
        if not await store.idem_put(con, sub, idem.key, idem.fingerprint, _plain(reply)):
            # A concurrent retry with the same key committed first: this one must not commit a second
            # effect. Rolling back with a Conflict makes the client retry and get the first answer.
            raise Conflict("a request with this Idempotency-Key is in progress", code="idempotency_in_progress")

    # --- reads --------------------------------------------------------------------------------------

    async def _visible(self, con: asyncpg.Connection, caller: Caller, request_id: UUID) -> Request:
        req = await store.get_request(con, request_id)
        if req is None or not await self._sees(con, caller, req):
            raise NotFound(f"no request {request_id}", code="request_not_found")
        return req

    async def _sees(self, con: asyncpg.Connection, caller: Caller, req: Request) -> bool:
        if caller.can(READ_ALL_PERMISSION) or _is_applicant(caller, req):
            return True
        if not (set(caller.permissions) & STAFF_PERMISSIONS):
            return False
        if caller.user_id is not None and req.assignee_id == caller.user_id:
            return True
        if await store.handled_by(con, req.id, caller.sub):
            return True
        workflow = await store.get_workflow(con, req.id)
        return any(
            t.from_status == req.status
            and caller.can(t.permission)
            and t.permission not in (QUEUE_PERMISSION, SUBMIT_PERMISSION)
            for t in workflow
        )

    def _may_take(self, caller: Caller, req: Request, t: Transition) -> bool:
        if not caller.can(t.permission):
            return False
        if t.permission == SUBMIT_PERMISSION and not _is_applicant(caller, req):
            return False
        if t.permission == ASSIGN_PERMISSION and t.to_status == "assigned_to_staff":
            return False  # assignment is the system's (or a supervisor's through AssignRequest)
        if t.permission == QUEUE_PERMISSION and req.assignee_id is not None:
            return req.assignee_id == caller.user_id or caller.can(ASSIGN_PERMISSION)
        return True

    @handler
    async def get(self, msg: GetRequest) -> Request:
        async with self.db.connection() as con:
            return await self._visible(con, msg.caller, msg.request_id)

    @handler
    async def workflow(self, msg: GetWorkflow) -> Workflow:
        async with self.db.connection() as con:
            req = await self._visible(con, msg.caller, msg.request_id)
            staff = bool(set(msg.caller.permissions) & STAFF_PERMISSIONS)
            steps = await store.steps(con, req.id, visible_only=not staff)
            workflow = await store.get_workflow(con, req.id)
        nxt = [t for t in workflow if t.from_status == req.status and self._may_take(msg.caller, req, t)]
        return Workflow(
            request_id=req.id, number=req.number, procedure=req.procedure, status=req.status, steps=steps, next=nxt
        )

    @handler
    async def list_requests(self, msg: ListRequests) -> RequestPage:
        caller = msg.caller
        if caller.can(READ_ALL_PERMISSION):
            scope = "all"
        elif set(caller.permissions) & STAFF_PERMISSIONS:
            scope = "staff"
        else:
            scope = "own"
        if msg.filter.overdue and scope != "all":
            raise Forbidden("the overdue list is for supervisors", code="missing_permission")
        cursor = decode_cursor(msg.cursor, datetime, UUID)
        async with self.db.connection() as con:
            items = await store.list_requests(
                con,
                msg.filter,
                scope=scope,
                sub=caller.sub,
                user_id=caller.user_id,
                permissions=sorted(caller.permissions),
                queue_permission=QUEUE_PERMISSION,
                due={k: float(v) for k, v in self.settings.registrations.due_hours.items()},
                cursor=cursor,
                limit=msg.limit + 1,
            )
        return page(RequestPage, items, msg.limit, lambda r: (r.created_at, r.id))

    @handler
    async def stats(self, msg: GetStats) -> Stats:
        if not msg.caller.can(READ_ALL_PERMISSION):
            raise Forbidden("needs permission registrations:read", code="missing_permission")
        async with self.db.connection() as con:
            return await store.stats(con, msg.created_from, msg.created_to, [WAITING])

    # --- filing -------------------------------------------------------------------------------------

    @handler
    async def file(self, msg: FileRequest) -> Request:
        caller = msg.caller
        replay = await self._replay(caller, msg.idempotency, Request)
        if replay is not None:
            return replay
        if not caller.can(SUBMIT_PERMISSION):
            raise Forbidden("needs permission registrations:submit", code="missing_permission")
        if caller.user_id is None:
            raise Forbidden("requests are filed by a signed-in user", code="user_required")
        applicant, filed_by = caller.user_id, None
        if msg.applicant_id is not None and msg.applicant_id != caller.user_id:
            if not caller.can("vehicles:file"):
                raise Forbidden("only an affiliate files on behalf of someone else", code="not_affiliate")
            applicant, filed_by = msg.applicant_id, caller.user_id
            await self._user_exists(applicant, "applicant_id")

        try:
            service = await self.bus.ask(GetService(code=msg.procedure))
        except NotFound:
            raise Invalid(f"unknown procedure {msg.procedure!r}", code="unknown_procedure") from None
        if not service.active:
            raise Conflict(f"procedure {msg.procedure!r} is not offered at the moment", code="service_inactive")
        if not service.workflow:
            raise Conflict(f"procedure {msg.procedure!r} has no workflow", code="no_workflow")
        async with self.db.connection() as con:
            effects = await store.effects(con, service.code)
        details: dict[str, Any] = {}

        # The vehicle: a new one (first registration) or an existing one the applicant may act on.
        if (msg.vehicle is None) == (msg.vehicle_id is None):
            raise Invalid("give either vehicle_id or vehicle", code="vehicle_required")
        if msg.vehicle is not None:
            if effects.plate != "new":
                raise Invalid(f"a {service.code} request is for a registered vehicle", code="vehicle_id_required")
            try:
                vehicle = await self.bus.ask(
                    RegisterVehicle(
                        vin=msg.vehicle.vin,
                        fields=msg.vehicle.fields,
                        owners=[applicant],
                        filed_by=str(filed_by) if filed_by else None,
                        by=caller.sub,
                    )
                )
            except Conflict as exc:
                if exc.code not in ("vin_exists", "vehicle_exists"):
                    raise
                # A filing that failed after the vehicle was created (a refusal, a crash) is filed
                # again: the applicant's own unplated vehicle is taken up, anyone else's is a 409.
                vehicle = await self._unplated_vehicle_of(msg.vehicle.vin, applicant, exc)
        else:
            assert msg.vehicle_id is not None
            try:
                vehicle = await self.bus.ask(GetVehicle(vehicle_id=msg.vehicle_id))
            except NotFound:
                raise NotFound(f"no vehicle {msg.vehicle_id}", code="vehicle_not_found") from None
        if effects.plate == "new" and not effects.replaces and vehicle.plate is not None:
            raise Conflict(f"the vehicle is registered already (plate {vehicle.plate})", code="already_registered")
        details["vehicle_plate"] = vehicle.plate
        details["old_owners"] = [str(o) for o in vehicle.owners]

        new_owners: list[UUID] = []
        if effects.owners == "transfer":
            new_owners = list(dict.fromkeys(msg.new_owners))
            if not new_owners:
                raise Invalid("a transfer names its new owner(s)", code="new_owners_required")
            if set(new_owners) == set(vehicle.owners):
                raise Invalid("the new owners are the current ones", code="same_owners")
            if not msg.seller_consent:
                raise Invalid("a transfer needs the current owner's consent", code="consent_required")
            for owner in new_owners:
                await self._user_exists(owner, "new_owners")
            details["new_owners"] = [str(o) for o in new_owners]
            details["seller_consent_by"] = str(caller.user_id)
            details["seller_consent_at"] = datetime.now(UTC).isoformat()
        if msg.vehicle_id is not None:
            allowed = applicant in vehicle.owners or (filed_by is not None and vehicle.filed_by == str(filed_by))
            if effects.owners == "transfer":
                allowed = allowed or applicant in new_owners
            if not allowed and vehicle.owners:
                raise Forbidden("the applicant does not own this vehicle", code="not_owner")
        if effects.duplicate or effects.history == "duplicate":
            if msg.duplicate_reason is None:
                raise Invalid("a duplicate needs a reason: lost, stolen or damaged", code="reason_required")
            details["duplicate_reason"] = msg.duplicate_reason
        prestige = None
        if effects.plate == "prestige":
            if msg.prestige_plate is None:
                raise Invalid("a prestige number request names the plate wanted", code="prestige_plate_required")
            async with self.db.connection() as con:
                fmt = await store.plate_format(con, vehicle.category, msg.registration_type)
            if fmt is None:
                raise Invalid("no plate format for this vehicle category and registration type", code="no_plate_format")
            _, _, prestige = _parse_plate(fmt, " ".join(msg.prestige_plate.split()))
            details["prestige_plate"] = prestige

        standing = await self.bus.ask(
            GetVehicleStanding(vehicle_id=vehicle.id, persons=[str(applicant), *(str(o) for o in new_owners)])
        )
        self._check_standing(standing, transfer=effects.owners == "transfer")

        if vehicle.category not in ("two_three_wheels", "four_wheels_plus"):
            raise Invalid(f"vehicle category {vehicle.category!r} has no fee", code="invalid_vehicle_category")
        quote = await self.bus.ask(
            QuoteFee(
                service_code=service.code,
                owner_type=msg.owner_type,
                vehicle_category=vehicle.category,
                characteristics=list(vehicle.characteristics),
            )
        )
        lines = [
            FeeLineOut(
                code=f"{line.kind}:{line.match}" if line.match else line.kind, label=line.label, amount_xof=line.amount
            )
            for line in quote.lines
        ]
        declared = sorted(set(msg.declared_documents))
        missing = await self._documents_missing(None, service.required_documents, declared)
        verifiers = await self._staff() if quote.total == 0 else None

        async with self.db.transaction() as con:
            replay = await self._stored_reply(con, caller, msg.idempotency, Request)
            if replay is not None:
                return replay
            if await store.open_requests(con, vehicle.id, service.code, sorted(TERMINAL)):
                raise Conflict(f"this vehicle already has an open {service.code} request", code="request_already_open")
            first = service.workflow[0].from_status
            req = await store.insert_request(
                con,
                number=await store.next_number(con, datetime.now(UTC).year),
                procedure=service.code,
                status=first,
                workflow=_plain(service.workflow),
                applicant_id=applicant,
                filed_by=filed_by,
                vehicle_id=vehicle.id,
                owner_type=msg.owner_type,
                vehicle_category=vehicle.category,
                registration_type=msg.registration_type,
                fee_total_xof=quote.total,
                fee_lines=_plain(lines),
                required_documents=list(service.required_documents),
                declared_documents=declared,
                details=details,
            )
            if prestige is not None:
                await self._hold_prestige(con, req, prestige, caller.sub)
            await store.add_step(con, req.id, "new", first, caller.sub, msg.note, True)
            await self.emit(
                con,
                RegistrationSubmitted(
                    request_id=req.id,
                    number=req.number,
                    procedure=req.procedure,
                    applicant_id=req.applicant_id,
                    vehicle_id=req.vehicle_id,
                ),
            )
            # Documents complete: the applicant's submission is part of filing.
            if not missing:
                submit = [
                    t
                    for t in _transitions(_plain(service.workflow))
                    if t.from_status == first and t.permission == SUBMIT_PERMISSION and t.to_status not in TERMINAL
                ]
                if submit:
                    req = await self._move(con, req, submit[0], caller.sub, "", Prefetched(verifiers=verifiers))
            await self._remember(con, caller, msg.idempotency, req)
        return req

    async def _unplated_vehicle_of(self, vin: str, applicant: UUID, refusal: Conflict) -> Vehicle:
        try:
            found = await self.bus.ask(GetVehicleStanding(vin=vin))
        except NotFound:
            raise refusal from None
        vehicle = await self.bus.ask(GetVehicle(vehicle_id=found.vehicle_id))
        if vehicle.plate is not None or applicant not in vehicle.owners:
            raise refusal
        return vehicle

    def _check_standing(self, standing: VehicleStanding, *, transfer: bool) -> None:
        reasons = [{"code": r.code, "detail": r.detail} for r in standing.reasons]
        if standing.registration_blocked:
            raise Conflict(
                "blocked: " + "; ".join(r["detail"] for r in reasons), code="registration_blocked", reasons=reasons
            )
        if transfer and standing.transfer_blocked:
            raise Conflict(
                "transfer blocked: " + "; ".join(r["detail"] for r in reasons), code="transfer_blocked", reasons=reasons
            )

    async def _user_exists(self, user_id: UUID, field: str) -> None:
        try:
            user = await self.bus.ask(GetUserAuthz(user_id=user_id))
        except NotFound:
            raise Invalid(f"{field}: no user {user_id}", code="unknown_user") from None
        if user.status != "active":
            raise Invalid(f"{field}: user {user_id} is not active", code="inactive_user")

    async def _hold_prestige(self, con: asyncpg.Connection, req: Request, plate: str, by: str) -> None:
        """Hold a prestige plate for this request: the sequence skips it, nobody else can ask for it."""
        fmt = await store.plate_format(con, req.vehicle_category, await store.get_registration_type(con, req.id))
        if fmt is None:
            raise Invalid("no plate format for this vehicle category and registration type", code="no_plate_format")
        series, number, plate = _parse_plate(fmt, plate)
        if await store.plate_issued(con, plate):
            raise Conflict(f"plate {plate} is already issued", code="plate_taken")
        try:
            async with con.transaction():
                await store.add_reservation(
                    con,
                    format_code=fmt.code,
                    series=series,
                    number_from=number,
                    number_to=number,
                    plate=plate,
                    request_id=req.id,
                    reason=f"prestige number of {req.number}",
                    by=by,
                )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"plate {plate} is held by another request", code="plate_held") from None

    async def _documents_missing(
        self, request_id: UUID | None, required: list[str], declared: list[str]
    ) -> tuple[str, ...]:
        """Required document types not yet there: the documents service decides when it runs here;
        until then (and for a request not yet created) the types the applicant declared count."""
        if request_id is not None and self.bus.handles(CheckRequiredDocuments):
            answer = await self.bus.ask(CheckRequiredDocuments(request_id=request_id, required=tuple(required)))
            return () if answer.complete else (*answer.missing, *answer.pending, *answer.rejected)
        if request_id is None and self.bus.handles(CheckRequiredDocuments):
            return tuple(required)  # nothing can be uploaded for a request that does not exist yet
        return tuple(d for d in required if d not in declared)

    async def _staff(self) -> list[UUID]:
        """Active users holding the queue permission (cached briefly: roles change rarely)."""
        ttl = self.settings.registrations.staff_cache_s
        now = time.monotonic()
        if self._verifiers is not None and now - self._verifiers[0] < ttl:
            return self._verifiers[1]
        roles = [r.code for r in await self.bus.ask(ListRoles()) if QUEUE_PERMISSION in r.permissions]
        found: dict[UUID, None] = {}
        for role in roles:
            cursor: str | None = None
            while True:
                batch = await self.bus.ask(
                    ListUsers(caller=_USERS_READER, role=role, status="active", limit=PAGE_LIMIT_MAX, cursor=cursor)
                )
                found.update(dict.fromkeys(u.id for u in batch.items))
                cursor = batch.next_cursor
                if cursor is None:
                    break
        staff = list(found)
        self._verifiers = (now, staff)
        return staff

    # --- the workflow engine ------------------------------------------------------------------------

    async def _move(
        self,
        con: asyncpg.Connection,
        req: Request,
        t: Transition,
        by: str,
        note: str,
        pre: Prefetched,
        *,
        trail: list[tuple[str, UUID, dict[str, Any]]] | None = None,
        **extra: Any,
    ) -> Request:
        """Take one transition inside the caller's transaction, then what follows automatically.

        The audit entries of the whole chain of moves are appended last, in order: the chain's head
        is then the last lock the transaction takes (taking it before a staff row, as a move followed
        by an automatic assignment would, could deadlock with an assignment taking them the other way).
        """
        top = trail is None
        trail = [] if trail is None else trail
        updates: dict[str, Any] = {"status": t.to_status, **extra}
        if t.to_status == VALIDATED:
            updates.update(await self._on_validated(con, req, pre, by))
        req = await store.update_request(con, req.id, **updates)
        await store.add_step(con, req.id, t.from_status, t.to_status, by, note, t.visible_to_applicant)
        # Every decision (verify, validate, reject, assign, the system's own moves) is on the trail.
        detail = {"number": req.number, "old": t.from_status, "new": t.to_status, "note": note}
        trail.append((by, req.id, {**detail, **({"plate": req.plate} if t.to_status == VALIDATED else {})}))
        await self.emit(
            con,
            RegistrationStatusChanged(
                request_id=req.id,
                number=req.number,
                procedure=req.procedure,
                applicant_id=req.applicant_id,
                from_status=t.from_status,
                to_status=t.to_status,
                by=by,
                visible_to_applicant=t.visible_to_applicant,
                note=note,
            ),
        )
        if t.to_status == WAITING:
            await self.emit(
                con,
                PaymentRequested(
                    payable_id=req.id,
                    payable_kind="registration",
                    reference=req.number,
                    payer_id=req.applicant_id,
                    amount_xof=req.fee_total_xof,
                    lines=tuple(FeeLine(code=x.code, label=x.label, amount_xof=x.amount_xof) for x in req.fee_lines),
                    description=f"{req.procedure} {req.number}",
                ),
            )
        if t.to_status in TERMINAL and t.to_status != "rejected":
            await store.release_request_holds(con, req.id, by)
        req = await self._auto(con, req, pre, trail)
        if top:
            for who, subject, entry in trail:
                await self.audit(con, who, subject, "status_changed", **entry)
        return req

    async def _auto(
        self, con: asyncpg.Connection, req: Request, pre: Prefetched, trail: list[tuple[str, UUID, dict[str, Any]]]
    ) -> Request:
        """Transitions the system takes by itself: submitted -> payment, free -> paid, paid -> assigned."""
        workflow = await store.get_workflow(con, req.id)
        out = [t for t in workflow if t.from_status == req.status]
        for t in out:
            if t.to_status == WAITING and t.permission == SUBMIT_PERMISSION:
                return await self._move(con, req, t, "system", "", pre, trail=trail)
            if t.from_status == WAITING and t.to_status == PAID and req.fee_total_xof == 0:
                return await self._move(con, req, t, "system", "nothing to pay", pre, trail=trail)
            if t.permission == ASSIGN_PERMISSION and t.to_status == "assigned_to_staff":
                assignee = req.assignee_id  # a resubmitted request goes back to its agent
                if assignee is None and pre.verifiers:
                    assignee = await store.pick_assignee(con, pre.verifiers, sorted(TERMINAL))
                if assignee is None:
                    return req  # nobody to assign to: it waits for a supervisor
                await store.touch_staff(con, assignee)
                return await self._move(
                    con, req, t, "system", "", pre, trail=trail, assignee_id=assignee, assigned_at=datetime.now(UTC)
                )
        return req

    async def _on_validated(self, con: asyncpg.Connection, req: Request, pre: Prefetched, by: str) -> dict[str, Any]:
        """The effects of validation, in the validating transaction: plate, owners, certificate."""
        vehicle = pre.vehicle
        if vehicle is None or req.vehicle_id is None:
            raise Conflict("the request has no vehicle to validate", code="no_vehicle")
        effects = await store.effects(con, req.procedure)
        plate = vehicle.plate
        details = dict(req.details)
        if effects.plate == "new":
            plate = pre.plate
            if plate is None or await store.plate_of_request(con, req.id) != plate:
                raise Conflict("the plate issued for this request changed meanwhile: retry", code="plate_changed")
        elif effects.plate == "prestige":
            wanted = details.get("prestige_plate")
            fmt = await store.plate_format(con, req.vehicle_category, await store.get_registration_type(con, req.id))
            if not wanted or fmt is None:
                raise Conflict("the request holds no prestige plate", code="no_prestige_plate")
            if await store.issue_plate(con, wanted, fmt.code, req.id, vehicle.id) is None:
                raise Conflict(f"plate {wanted} was issued meanwhile", code="plate_taken")
            await store.release_request_holds(con, req.id, by)
            plate = wanted
        known = vehicle.plate
        if plate is None:
            # The vehicle's read of its plate may lag behind the PlateAssigned event this service
            # emitted at its last validation: the plate we assigned last is the vehicle's plate.
            plate = known = await store.last_plate_assigned(con, vehicle.id)
        if plate is None:
            raise Conflict("the vehicle has no plate: this procedure needs a registered vehicle", code="no_plate")
        if plate != known:
            await store.add_plate_assignment(con, req.id, vehicle.id, plate, vehicle.plate)
            await self.emit(con, PlateAssigned(request_id=req.id, vehicle_id=vehicle.id, plate=plate))
        holders = tuple(vehicle.owners) or (req.applicant_id,)
        if effects.owners == "transfer":
            new_owners = tuple(UUID(o) for o in details.get("new_owners", []))
            consent = details.get("seller_consent_by")
            await store.add_transfer(
                con,
                req.id,
                vehicle.id,
                vehicle.owners,
                new_owners,
                UUID(consent) if consent else None,
                datetime.fromisoformat(details["seller_consent_at"]) if details.get("seller_consent_at") else None,
            )
            await self.emit(
                con,
                OwnershipTransferred(
                    request_id=req.id,
                    number=req.number,
                    vehicle_id=vehicle.id,
                    old_owners=tuple(vehicle.owners),
                    new_owners=new_owners,
                    seller_consent_by=UUID(consent) if consent else None,
                    by=by,
                ),
            )
            holders = new_owners
        if effects.history == "renewal":
            await store.add_renewal(con, req.id, vehicle.id, plate)
        elif effects.history == "duplicate":
            of = "plate" if req.procedure == "plate_duplicate" else "carte_grise"
            await store.add_duplicate(con, req.id, vehicle.id, of, details.get("duplicate_reason") or "lost")
        await self.emit(
            con,
            RegistrationValidated(
                request_id=req.id,
                number=req.number,
                procedure=req.procedure,
                vehicle_id=vehicle.id,
                applicant_id=req.applicant_id,
                holder_ids=holders,
                plate=plate,
                first_registration_date=vehicle.first_registration_date
                or (date.today() if effects.plate == "new" else None),
                duplicate=effects.duplicate,
                replaces_previous=effects.replaces,
                validated_at=datetime.now(UTC),
            ),
        )
        return {"plate": plate}

    async def _plate_for(self, req: Request, vehicle: Vehicle) -> str:
        """The next plate of the sequence for a request, issued (committed) before its validation.

        The allocation commits on its own, so the series lock is held one statement, not for the
        whole validating transaction. A plate the registry already shows on another vehicle (typed in
        by hand, imported) is a collision: it is kept out of the sequence and the next one is tried.
        A validation retried after a failure reuses the plate issued to the request.
        """
        async with self.db.connection() as con:
            fmt = await store.plate_format(con, req.vehicle_category, await store.get_registration_type(con, req.id))
        if fmt is None:
            raise Conflict("no plate format for this vehicle category and registration type", code="no_plate_format")
        for _ in range(self.settings.registrations.plate_collision_retries + 1):
            async with self.db.connection() as con:
                plate = await store.plate_of_request(con, req.id)
                if plate is None:
                    plate = (await self._allocate(con, fmt.code, req.id, vehicle.id)).plate
            try:
                holder = (await self.bus.ask(GetVehicleStanding(plate=plate))).vehicle_id
            except NotFound:
                return plate
            if holder == vehicle.id:
                return plate
            log.warning("plate %s is already on vehicle %s in the registry: skipped", plate, holder)
            async with self.db.connection() as con:
                await store.mark_taken_elsewhere(con, plate)
        raise Conflict("too many plates of the sequence are already on other vehicles", code="plate_collisions")

    async def _allocate(
        self, con: asyncpg.Connection, format_code: str, request_id: UUID | None, vehicle_id: UUID | None
    ) -> IssuedPlate:
        try:
            return await store.allocate_plate(con, format_code, request_id, vehicle_id)
        except asyncpg.PostgresError as exc:
            # Our own SQLSTATEs (class RG) raised by registrations.allocate_plate().
            if exc.sqlstate == "RG001":
                raise NotFound(f"no plate format {format_code!r}", code="unknown_plate_format") from None
            if exc.sqlstate == "RG002":
                raise Conflict(f"plate format {format_code} has no series left", code="plates_exhausted") from None
            raise

    async def _prefetch(self, req: Request, to_status: str) -> Prefetched:
        pre = Prefetched()
        if to_status == VALIDATED and req.vehicle_id is not None:
            pre.vehicle = await self.bus.ask(GetVehicle(vehicle_id=req.vehicle_id))
            pre.standing = await self.bus.ask(GetVehicleStanding(vehicle_id=req.vehicle_id))
            async with self.db.connection() as con:
                effects = await store.effects(con, req.procedure)
            if effects.plate == "new":
                pre.plate = await self._plate_for(req, pre.vehicle)
        if to_status in (PAID, "resubmitted") or (to_status == "submitted" and req.fee_total_xof == 0):
            pre.verifiers = await self._staff()
        return pre

    async def _step(
        self,
        caller: Caller,
        request_id: UUID,
        to_status: str,
        note: str,
        idem: Idempotency | None,
        declared: list[str] | None = None,
    ) -> Request:
        """Take a transition for a caller: visibility, legality, permission, documents, then effects."""
        replay = await self._replay(caller, idem, Request)
        if replay is not None:
            return replay
        async with self.db.connection() as con:
            req = await self._visible(con, caller, request_id)
            workflow = await store.get_workflow(con, req.id)
        t = self._transition(caller, req, workflow, to_status)
        if t.to_status == PAID and self.bus.handles(ConfirmPayment):
            # With payments in the process a person's "paid" would bypass it: no invoice, the payable
            # left open and payable again by mobile money. The counter payment is recorded there, and
            # its PaymentSucceeded moves the request (on_payment_succeeded).
            raise Conflict(
                "a request is paid through the payments service: record the counter payment with "
                f"POST /api/payments/{req.id}/confirm {{method, receipt_reference}}",
                code="pay_through_payments",
                route=f"/api/payments/{req.id}/confirm",
            )
        first = workflow[0].from_status if workflow else req.status
        declared_now = sorted(set(req.declared_documents) | set(declared or ()))
        if req.status == first and t.to_status not in TERMINAL:
            missing = await self._documents_missing(req.id, req.required_documents, declared_now)
            if missing:
                raise Conflict(
                    "required documents are missing: " + ", ".join(missing),
                    code="documents_missing",
                    missing=list(missing),
                )
        pre = await self._prefetch(req, t.to_status)
        if pre.standing is not None:
            effects_transfer = "new_owners" in req.details
            self._check_standing(pre.standing, transfer=effects_transfer)
        async with self.db.transaction() as con:
            replay = await self._stored_reply(con, caller, idem, Request)
            if replay is not None:
                return replay
            locked = await store.get_request(con, request_id, lock=True)
            assert locked is not None
            if locked.status != req.status:
                raise Conflict(
                    f"the request moved to {locked.status} meanwhile",
                    code="stale_status",
                    current=locked.status,
                )
            extra: dict[str, Any] = {}
            if declared is not None:
                extra["declared_documents"] = declared_now
            if t.to_status == PAID:
                # Only without a payments service in the process (refused above otherwise): the counter
                # confirmation (an agent with payments:confirm) stands for the payment.
                extra["amount_paid_xof"] = locked.fee_total_xof
                await store.add_payment(con, locked.id, None, "counter", locked.fee_total_xof, "counter")
            req = await self._move(con, locked, t, caller.sub, note, pre, **extra)
            await self._remember(con, caller, idem, req)
        return req

    def _transition(self, caller: Caller, req: Request, workflow: list[Transition], to_status: str) -> Transition:
        allowed = [t for t in workflow if t.from_status == req.status]
        match = [t for t in allowed if t.to_status == to_status]
        if not match:
            names = sorted({t.to_status for t in allowed})
            raise Conflict(
                f"a request in status {req.status} cannot move to {to_status}; allowed: {', '.join(names) or 'none'}",
                code="illegal_transition",
                current=req.status,
                allowed=names,
            )
        t = match[0]
        if not caller.can(t.permission):
            raise Forbidden(f"moving to {to_status} needs permission {t.permission}", code="missing_permission")
        if not self._may_take(caller, req, t):
            raise Forbidden(f"you may not move this request to {to_status}", code="not_yours")
        return t

    @handler
    async def change_status(self, msg: ChangeStatus) -> Request:
        return await self._step(
            msg.caller, msg.request_id, msg.to_status, msg.note, msg.idempotency, msg.declared_documents
        )

    @handler
    async def validate(self, msg: ValidateRequest) -> Request:
        return await self._step(msg.caller, msg.request_id, VALIDATED, msg.note, msg.idempotency)

    @handler
    async def reject(self, msg: RejectRequest) -> Request:
        return await self._step(msg.caller, msg.request_id, "rejected", msg.reason, msg.idempotency)

    @handler
    async def assign(self, msg: AssignRequest) -> Request:
        caller = msg.caller
        replay = await self._replay(caller, msg.idempotency, Request)
        if replay is not None:
            return replay
        if not caller.can(ASSIGN_PERMISSION):
            raise Forbidden("needs permission registrations:assign", code="missing_permission")
        if msg.assignee_id not in await self._staff():
            self._verifiers = None  # the staff list may be stale: look again once
            if msg.assignee_id not in await self._staff():
                raise Invalid("the assignee does not hold registrations:verify", code="not_a_verifier")
        async with self.db.transaction() as con:
            req = await store.get_request(con, msg.request_id, lock=True)
            if req is None:
                raise NotFound(f"no request {msg.request_id}", code="request_not_found")
            if req.status in TERMINAL:
                raise Conflict(f"a {req.status} request is not assigned", code="request_closed")
            workflow = await store.get_workflow(con, req.id)
            pending = [t for t in workflow if t.from_status == req.status and t.to_status == "assigned_to_staff"]
            await store.touch_staff(con, msg.assignee_id)
            if pending:
                req = await self._move(
                    con,
                    req,
                    pending[0],
                    caller.sub,
                    msg.note,
                    Prefetched(),
                    assignee_id=msg.assignee_id,
                    assigned_at=datetime.now(UTC),
                )
            else:
                old = req.assignee_id
                req = await store.update_request(
                    con, req.id, assignee_id=msg.assignee_id, assigned_at=datetime.now(UTC)
                )
                await store.add_step(
                    con, req.id, req.status, req.status, caller.sub, msg.note or f"reassigned from {old}", False
                )
                await self.audit(
                    con, caller, req.id, "reassigned", number=req.number, old=old, new=msg.assignee_id, note=msg.note
                )
            await self._remember(con, caller, msg.idempotency, req)
        return req

    # --- the payment saga ---------------------------------------------------------------------------

    @handler
    async def on_payment_succeeded(self, event: PaymentSucceeded) -> None:
        if event.payable_kind != "registration":
            return
        async with self.db.connection() as con:
            req = await store.get_request(con, event.payable_id)
        if req is None:
            log.error("payment %s for unknown request %s", event.payment_id, event.payable_id)
            return
        pre = Prefetched(verifiers=await self._staff()) if req.status == WAITING else Prefetched()
        async with self.db.transaction() as con:
            req = await store.get_request(con, event.payable_id, lock=True)
            assert req is not None
            await store.add_payment(con, req.id, event.payment_id, "succeeded", event.amount_xof, event.provider)
            paid = req.amount_paid_xof + event.amount_xof
            if req.status != WAITING:
                # Paid twice, or paid after a counter confirmation: keep the record, the refund is payments'.
                await store.update_request(con, req.id, amount_paid_xof=paid)
                log.warning("payment %s for request %s in status %s", event.payment_id, req.number, req.status)
                return
            if paid < req.fee_total_xof:
                await store.update_request(con, req.id, amount_paid_xof=paid)
                log.warning("request %s: paid %d of %d", req.number, paid, req.fee_total_xof)
                return
            workflow = await store.get_workflow(con, req.id)
            t = next((t for t in workflow if t.from_status == WAITING and t.to_status == PAID), None)
            if t is None:
                log.error("request %s: its workflow has no %s -> %s", req.number, WAITING, PAID)
                return
            await self._move(
                con, req, t, f"payments:{event.provider}", "", pre, amount_paid_xof=paid, payment_id=event.payment_id
            )

    @handler
    async def on_payment_failed(self, event: PaymentFailed, con: asyncpg.Connection) -> None:
        if event.payable_kind != "registration":
            return
        if await store.get_request(con, event.payable_id) is not None:
            await store.add_payment(con, event.payable_id, event.payment_id, "failed", 0, event.reason[:200])

    @handler
    async def on_payment_refunded(self, event: PaymentRefunded, con: asyncpg.Connection) -> None:
        if event.payable_kind != "registration":
            return
        req = await store.get_request(con, event.payable_id, lock=True)
        if req is None:
            return
        await store.add_payment(con, req.id, event.payment_id, "refunded", event.amount_xof, "")
        req = await store.update_request(con, req.id, amount_paid_xof=max(0, req.amount_paid_xof - event.amount_xof))
        # A full refund before validation ends the request: nothing was delivered for it.
        if event.full and req.status not in TERMINAL and req.plate is None:
            t = Transition(from_status=req.status, to_status="canceled", permission="payments:refund")
            await self._move(con, req, t, "payments", "payment refunded", Prefetched())

    @handler
    async def seed(self, msg: SeedRegistrations, con: asyncpg.Connection) -> int:
        if msg.only_if_empty and not await seed_data.is_empty(con):
            return 0
        return await seed_data.load(con)

    # --- plates -------------------------------------------------------------------------------------

    @handler
    async def allocate(self, msg: AllocatePlate) -> IssuedPlate:
        # One statement in autocommit: the series row lock is held only while the function runs
        # (validation calls the same function inside its own transaction).
        async with self.db.connection() as con:
            return await self._allocate(con, msg.format_code, msg.request_id, msg.vehicle_id)

    @handler
    async def list_series(self, msg: ListSeries, con: asyncpg.Connection) -> list[SeriesPosition]:
        return await store.series_positions(con)

    @handler
    async def reserve(self, msg: ReservePlates) -> Reservation:
        replay = await self._replay(Caller(sub=msg.by), msg.idempotency, Reservation)
        if replay is not None:
            return replay
        if (msg.number_from is None) != (msg.number_to is None):
            raise Invalid("give number_from and number_to together (equal for one number)", code="invalid_range")
        if msg.number_from is not None and msg.number_to is not None and msg.number_from > msg.number_to:
            raise Invalid("number_from is after number_to", code="invalid_range")
        if msg.number_from is None and msg.series is None:
            raise Invalid("reserve numbers, a range, or a whole series", code="nothing_reserved")
        async with self.db.transaction() as con:
            formats = {f.code: f for f in await store.plate_formats(con)}
            fmt = formats.get(msg.format_code)
            if fmt is None:
                raise NotFound(f"no plate format {msg.format_code!r}", code="unknown_plate_format")
            if msg.series is not None and (
                len(msg.series) != fmt.series_length or any(c not in fmt.alphabet for c in msg.series)
            ):
                raise Invalid(f"series {msg.series} is not a series of format {fmt.code}", code="invalid_series")
            if msg.number_to is not None and msg.number_to > fmt.max_number:
                raise Invalid(f"numbers of format {fmt.code} stop at {fmt.max_number}", code="invalid_range")
            res = await store.add_reservation(
                con,
                format_code=fmt.code,
                series=msg.series,
                number_from=msg.number_from,
                number_to=msg.number_to,
                plate=None,
                request_id=None,
                reason=msg.reason,
                by=msg.by,
            )
            await self._remember(con, msg.by, msg.idempotency, res)
        return res

    @handler
    async def release(self, msg: ReleaseReservation, con: asyncpg.Connection) -> Reservation:
        res = await store.release_reservation(con, msg.reservation_id, msg.by)
        if res is None:
            raise NotFound(f"no reservation {msg.reservation_id}", code="reservation_not_found")
        return res

    @handler
    async def reservations(self, msg: ListReservations, con: asyncpg.Connection) -> ReservationPage:
        after = decode_cursor(msg.cursor, datetime, UUID)
        rows = await store.list_reservations(con, msg.format_code, msg.include_released, after, msg.limit + 1)
        return page(ReservationPage, rows, msg.limit, lambda r: (r.at, r.id))


def _parse_plate(fmt: store.PlateFormat, plate: str) -> tuple[str | None, int | None, str]:
    """(series, number, plate as the format writes it) when a plate fits the format's template
    (spaces ignored), so the sequence skips it; (None, None, plate) for a free text."""
    pattern = re.escape(fmt.template.replace(" ", ""))
    pattern = pattern.replace(re.escape("{series}"), f"(?P<s>[{fmt.alphabet}]{{{fmt.series_length}}})")
    pattern = pattern.replace(re.escape("{number}"), f"(?P<n>[0-9]{{{fmt.number_digits}}})")
    m = re.fullmatch(pattern, plate.replace(" ", ""))
    if m is None:
        return None, None, plate
    number = int(m["n"])
    canonical = fmt.template.replace("{series}", m["s"]).replace("{number}", f"{number:0{fmt.number_digits}d}")
    return m["s"], number, canonical
