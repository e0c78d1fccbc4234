"""The config service's public contract: its queries, commands, replies and events.

Other actors and the HTTP layer import this module only (never the actor or its store).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec

from simveb.errors import Conflict, Invalid, NotFound
from simveb.messages import PAGE_LIMIT_DEFAULT, Ask, Cursor, Event, Limit, Page, Record

Code = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{1,49}$")]
KEY_PATTERN = r"^[a-z][a-z0-9_.]{1,99}$"
Key = Annotated[str, msgspec.Meta(pattern=KEY_PATTERN)]
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Amount = Annotated[int, msgspec.Meta(ge=0, le=100_000_000)]
Percent = Annotated[int, msgspec.Meta(ge=0, le=100)]
SettingType = Literal["string", "integer", "boolean", "json"]
FeeKind = Literal["base", "owner_type", "vehicle_category", "characteristic"]
OwnerType = Literal["person", "company", "government", "diplomatic"]
VehicleCategory = Literal["two_three_wheels", "four_wheels_plus"]


# --- replies -----------------------------------------------------------------------------------------


class Setting(Record):
    key: str
    type: SettingType
    value: Any
    public: bool
    description: str = ""
    updated_at: datetime | None = None
    updated_by: str = "system"


class WorkflowStep(Record):
    """One allowed transition of a request of this procedure, and the permission it needs."""

    from_status: Annotated[str, msgspec.Meta(min_length=1, max_length=50)]
    to_status: Annotated[str, msgspec.Meta(min_length=1, max_length=50)]
    permission: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    visible_to_applicant: bool = True


class Service(Record):
    code: str
    label_fr: str
    label_en: str
    description: str = ""
    required_documents: list[str] = []
    workflow: list[WorkflowStep] = []
    active: bool = True
    updated_at: datetime | None = None


class Fee(Record):
    id: UUID
    service_code: str
    kind: FeeKind
    match: str = ""
    label: str = ""
    amount: int
    active: bool = True
    updated_at: datetime | None = None


class FeatureFlag(Record):
    key: str
    enabled: bool
    rollout_percent: int | None = None
    description: str = ""
    updated_at: datetime | None = None


class QuoteLine(Record):
    kind: FeeKind
    match: str
    label: str
    amount: int


class Quote(Record):
    service_code: str
    currency: Literal["XOF"] = "XOF"
    total: int
    lines: list[QuoteLine]


class HistoryEntry(Record):
    id: int
    entity: str
    key: str
    actor: str
    at: datetime
    old_value: Any = None
    new_value: Any = None


# --- queries -----------------------------------------------------------------------------------------


class ListSettings(Ask[list[Setting]]):
    """Public settings only unless include_private."""

    include_private: bool = False


class GetSetting(Ask[Setting]):
    errors = (NotFound,)

    key: str
    include_private: bool = True


class ListServices(Ask[list[Service]]):
    include_inactive: bool = False


class GetService(Ask[Service]):
    errors = (NotFound,)

    code: str


class ListFees(Ask[list[Fee]]):
    service_code: str | None = None


class ListFeatures(Ask[list[FeatureFlag]]):
    pass


class IsFeatureEnabled(Ask[bool]):
    """Is the flag on for this subject? With a rollout percentage the answer is stable per subject."""

    key: str
    subject: str | None = None


class QuoteFee(Ask[Quote]):
    """Price a procedure: base cost plus the adjustments matching owner, category, characteristics."""

    errors = (NotFound, Conflict, Invalid)

    service_code: str
    owner_type: str
    vehicle_category: str
    characteristics: list[str] = []


class HistoryPage(Page[HistoryEntry]):
    """Changes, newest first."""

    items: list[HistoryEntry]


class ListHistory(Ask[HistoryPage]):
    entity: str | None = None
    key: str | None = None
    cursor: Cursor | None = None
    limit: Limit = PAGE_LIMIT_DEFAULT


# --- commands ----------------------------------------------------------------------------------------


class PutSetting(Ask[Setting]):
    """Create or change a setting; the value must match its type."""

    errors = (Conflict, Invalid)

    key: Key
    value: Any
    type: SettingType | None = None  # required when the setting is new
    public: bool | None = None
    description: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    by: str


class ServiceFields(Record):
    label_fr: Label
    label_en: Label
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    required_documents: list[Code] = []
    workflow: list[WorkflowStep] = []
    active: bool = True


class CreateService(Ask[Service]):
    errors = (Conflict,)

    code: Code
    fields: ServiceFields
    by: str


class UpdateService(Ask[Service]):
    errors = (NotFound,)

    code: str
    fields: ServiceFields
    by: str


class FeeFields(Record):
    service_code: Code
    kind: FeeKind
    match: Annotated[str, msgspec.Meta(max_length=100)] = ""
    label: Annotated[str, msgspec.Meta(max_length=200)] = ""
    amount: Amount
    active: bool = True


class CreateFee(Ask[Fee]):
    errors = (NotFound, Conflict, Invalid)

    fields: FeeFields
    by: str


class UpdateFee(Ask[Fee]):
    errors = (NotFound, Conflict, Invalid)

    fee_id: UUID
    fields: FeeFields
    by: str


class PutFeature(Ask[FeatureFlag]):
    key: Key
    enabled: bool
    rollout_percent: Percent | None = None
    description: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    by: str


class SeedConfig(Ask[int]):
    """Load the placeholder reference data (procedures, fee grid, settings, flags); returns rows added."""

    only_if_empty: bool = False


# --- events ------------------------------------------------------------------------------------------


class ConfigChanged(Event):
    """A setting, service, fee or flag changed; caches of config data drop what they hold."""

    entity: Literal["setting", "service", "fee", "feature"]
    key: str
    by: str
