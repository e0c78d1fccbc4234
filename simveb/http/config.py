"""HTTP routes of the config service: public reads, admin writes (permission `config:write`)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import msgspec
from litestar import Controller, get, post, put
from litestar.params import Parameter

from simveb.actors.config.messages import (
    KEY_PATTERN,
    Code,
    CreateFee,
    CreateService,
    FeatureFlag,
    Fee,
    FeeFields,
    GetService,
    HistoryPage,
    IsFeatureEnabled,
    ListFeatures,
    ListFees,
    ListHistory,
    ListServices,
    ListSettings,
    PutFeature,
    PutSetting,
    Quote,
    QuoteFee,
    Service,
    ServiceFields,
    Setting,
    UpdateFee,
    UpdateService,
)
from simveb.bus import Bus
from simveb.http.inputs import CursorQuery, LimitQuery, body_of, record_of
from simveb.http.security import requires, requires_any
from simveb.messages import PAGE_LIMIT_DEFAULT, Caller

PUBLIC = {"public": True}
WRITE = [requires("config:write")]
READ_HISTORY = [requires_any("config:read", "config:write")]


SettingIn = body_of(PutSetting, exclude=("key", "by"), name="SettingIn")
FeatureIn = body_of(PutFeature, exclude=("key", "by"), name="FeatureIn")


# A setting's or flag's key in the path obeys the same rule as a key in a body.
KeyPath = Annotated[str, Parameter(pattern=KEY_PATTERN, description="Lowercase letters, digits, _ and .")]


class ServiceUpdate(ServiceFields, forbid_unknown_fields=True):
    """A procedure's labels, documents, workflow and active flag: the message's own struct (see
    simveb.http.inputs)."""


class ServiceIn(ServiceUpdate):
    code: Code


class FeeIn(FeeFields, forbid_unknown_fields=True):
    """A fee line: the message's own struct (see simveb.http.inputs)."""


class FeatureState(msgspec.Struct, kw_only=True):
    key: str
    subject: str | None
    enabled: bool


class ConfigController(Controller):
    path = "/api/config"
    tags = ["config"]

    @get("/settings", opt=PUBLIC)
    async def list_settings(self, bus: Bus, maybe_caller: Caller | None) -> list[Setting]:
        """Settings: the public ones, or all of them for a caller with config:read or config:write."""
        private = bool(maybe_caller and (maybe_caller.can("config:read") or maybe_caller.can("config:write")))
        return await bus.ask(ListSettings(include_private=private))

    @put("/settings/{key:str}", guards=WRITE)
    async def put_setting(self, bus: Bus, caller: Caller, key: KeyPath, data: SettingIn) -> Setting:
        """Create or change a setting (typed value)."""
        return await bus.ask(PutSetting(key=key, by=caller.sub, **msgspec.structs.asdict(data)))

    @get("/services", opt=PUBLIC)
    async def list_services(self, bus: Bus, include_inactive: bool = False) -> list[Service]:
        """The procedure catalogue."""
        return await bus.ask(ListServices(include_inactive=include_inactive))

    @get("/services/{code:str}", opt=PUBLIC)
    async def get_service(self, bus: Bus, code: str) -> Service:
        """One procedure, with its required documents and workflow."""
        return await bus.ask(GetService(code=code))

    @post("/services", guards=WRITE)
    async def create_service(self, bus: Bus, caller: Caller, data: ServiceIn) -> Service:
        """Add a procedure to the catalogue."""
        return await bus.ask(CreateService(code=data.code, fields=record_of(data, ServiceFields), by=caller.sub))

    @put("/services/{code:str}", guards=WRITE)
    async def update_service(self, bus: Bus, caller: Caller, code: str, data: ServiceUpdate) -> Service:
        """Replace a procedure's labels, documents, workflow or active flag."""
        return await bus.ask(UpdateService(code=code, fields=record_of(data, ServiceFields), by=caller.sub))

    @get("/fees", opt=PUBLIC)
    async def list_fees(self, bus: Bus, service: str | None = None) -> list[Fee]:
        """The fee grid (integer XOF), optionally for one service."""
        return await bus.ask(ListFees(service_code=service))

    @get("/fees/quote", opt=PUBLIC)
    async def quote(
        self,
        bus: Bus,
        service: str,
        owner_type: str,
        vehicle_category: str,
        characteristic: Annotated[list[str] | None, Parameter(required=False)] = None,
    ) -> Quote:
        """Price a procedure for an owner type, a vehicle category and characteristics, with the breakdown."""
        return await bus.ask(
            QuoteFee(
                service_code=service,
                owner_type=owner_type,
                vehicle_category=vehicle_category,
                characteristics=characteristic or [],
            )
        )

    @post("/fees", guards=WRITE)
    async def create_fee(self, bus: Bus, caller: Caller, data: FeeIn) -> Fee:
        """Add a base cost or an adjustment."""
        return await bus.ask(CreateFee(fields=record_of(data, FeeFields), by=caller.sub))

    @put("/fees/{fee_id:uuid}", guards=WRITE)
    async def update_fee(self, bus: Bus, caller: Caller, fee_id: UUID, data: FeeIn) -> Fee:
        """Change a fee line."""
        return await bus.ask(UpdateFee(fee_id=fee_id, fields=record_of(data, FeeFields), by=caller.sub))

    @get("/features", opt=PUBLIC)
    async def list_features(self, bus: Bus) -> list[FeatureFlag]:
        """Feature flags and their rollout."""
        return await bus.ask(ListFeatures())

    @get("/features/{key:str}/state", opt=PUBLIC)
    async def feature_state(self, bus: Bus, key: str, subject: str | None = None) -> FeatureState:
        """Whether a flag is on for a subject (stable per subject under a percentage rollout)."""
        enabled = await bus.ask(IsFeatureEnabled(key=key, subject=subject))
        return FeatureState(key=key, subject=subject, enabled=enabled)

    @put("/features/{key:str}", guards=WRITE)
    async def put_feature(self, bus: Bus, caller: Caller, key: KeyPath, data: FeatureIn) -> FeatureFlag:
        """Switch a flag on or off, with an optional rollout percentage."""
        return await bus.ask(PutFeature(key=key, by=caller.sub, **msgspec.structs.asdict(data)))

    @get("/history", guards=READ_HISTORY)
    async def history(
        self,
        bus: Bus,
        entity: Annotated[
            str | None,
            Parameter(max_length=40, description="What changed: setting, service, fee or feature."),
        ] = None,
        key: Annotated[str | None, Parameter(max_length=200, description="The changed item's key.")] = None,
        cursor: CursorQuery = None,
        limit: LimitQuery = PAGE_LIMIT_DEFAULT,
    ) -> HistoryPage:
        """Every change, newest first: who, when, old -> new."""
        return await bus.ask(ListHistory(entity=entity, key=key, cursor=cursor, limit=limit))


CONTROLLERS = [ConfigController]
