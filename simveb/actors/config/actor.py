"""The config actor: serves settings, procedures, fees and flags from a cache; writes with history.

Reads never touch the database while the cache is fresh. A write (a handler in the runtime's
transaction) commits the row, its history entry and a `ConfigChanged` event together; the event (and
a NOTIFY for other processes of the same deployment, heard on the listener's own connection) marks
every cache stale, so the next read reloads. The actor takes one message at a time, so a write's
`self._cache = None` cannot be undone by a read reloading before the write commits.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, get_args

import asyncpg
import msgspec

from simveb.actors.config import seed_data, store
from simveb.actors.config.messages import (
    ConfigChanged,
    CreateFee,
    CreateService,
    FeatureFlag,
    Fee,
    GetService,
    GetSetting,
    HistoryPage,
    IsFeatureEnabled,
    ListFeatures,
    ListFees,
    ListHistory,
    ListServices,
    ListSettings,
    OwnerType,
    PutFeature,
    PutSetting,
    Quote,
    QuoteFee,
    QuoteLine,
    SeedConfig,
    Service,
    Setting,
    UpdateFee,
    UpdateService,
    VehicleCategory,
)
from simveb.audit import Audited
from simveb.bus import Actor, handler
from simveb.db import Listener
from simveb.errors import Conflict, Invalid, NotFound
from simveb.messages import decode_cursor, page

log = logging.getLogger("simveb.config")
NOTIFY_CHANNEL = "simveb_config"


class Snapshot(msgspec.Struct, kw_only=True):
    settings: dict[str, Setting]
    services: dict[str, Service]
    fees: list[Fee]
    flags: dict[str, FeatureFlag]


def _check_value(type_: str, value: Any) -> Any:
    ok = {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "json": True,
    }[type_]
    if not ok:
        raise Invalid(f"value must be of type {type_}", code="invalid_setting_value")
    return value


def rollout_bucket(key: str, subject: str) -> int:
    """0..99, the same for a (flag, subject) pair everywhere and forever."""
    digest = hashlib.sha256(f"{key}:{subject}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100


class ConfigActor(Audited, Actor):
    name = "config"

    async def on_start(self) -> None:
        self._cache: Snapshot | None = None
        # Its own connection, re-established after a loss (then the cache is dropped: a change may
        # have been missed while deaf).
        self._listener: Listener | None = self.db.listener(NOTIFY_CHANNEL, self._invalidate)
        await self._listener.start()

    async def on_stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None

    def _invalidate(self, *_: object) -> None:
        self._cache = None

    async def _snapshot(self) -> Snapshot:
        if self._cache is None:
            async with self.db.connection() as con:
                self._cache = Snapshot(
                    settings={s.key: s for s in await store.all_settings(con)},
                    services={s.code: s for s in await store.all_services(con)},
                    fees=await store.all_fees(con),
                    flags={f.key: f for f in await store.all_flags(con)},
                )
        return self._cache

    async def _changed(self, con: asyncpg.Connection, entity: str, key: str, by: str, old: Any, new: Any) -> None:
        """History row, audit entry, outbox event and cross-process NOTIFY, all in the caller's transaction."""
        await store.record(con, entity, key, by, old, new)
        await self.audit(con, by, f"{entity}:{key}", "config_changed", entity=entity, key=key, old=old, new=new)
        await self.emit(con, ConfigChanged(entity=entity, key=key, by=by))  # type: ignore[arg-type]
        await con.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{entity}:{key}")

    # --- reads -------------------------------------------------------------------------------------

    @handler
    async def list_settings(self, msg: ListSettings) -> list[Setting]:
        snap = await self._snapshot()
        return [s for s in snap.settings.values() if msg.include_private or s.public]

    @handler
    async def get_setting(self, msg: GetSetting) -> Setting:
        setting = (await self._snapshot()).settings.get(msg.key)
        if setting is None or not (setting.public or msg.include_private):
            raise NotFound(f"no setting {msg.key!r}")
        return setting

    @handler
    async def list_services(self, msg: ListServices) -> list[Service]:
        snap = await self._snapshot()
        return [s for s in snap.services.values() if msg.include_inactive or s.active]

    @handler
    async def get_service(self, msg: GetService) -> Service:
        service = (await self._snapshot()).services.get(msg.code)
        if service is None:
            raise NotFound(f"no service {msg.code!r}", code="unknown_service")
        return service

    @handler
    async def list_fees(self, msg: ListFees) -> list[Fee]:
        fees = (await self._snapshot()).fees
        return [f for f in fees if msg.service_code is None or f.service_code == msg.service_code]

    @handler
    async def list_features(self, msg: ListFeatures) -> list[FeatureFlag]:
        return list((await self._snapshot()).flags.values())

    @handler
    async def is_feature_enabled(self, msg: IsFeatureEnabled) -> bool:
        flag = (await self._snapshot()).flags.get(msg.key)
        if flag is None or not flag.enabled:
            return False
        if flag.rollout_percent is None or flag.rollout_percent >= 100:
            return True
        if msg.subject is None:
            return False
        return rollout_bucket(flag.key, msg.subject) < flag.rollout_percent

    @handler
    async def quote_fee(self, msg: QuoteFee) -> Quote:
        if msg.owner_type not in get_args(OwnerType):
            raise Invalid(f"owner_type must be one of {', '.join(get_args(OwnerType))}", code="invalid_owner_type")
        if msg.vehicle_category not in get_args(VehicleCategory):
            raise Invalid(
                f"vehicle_category must be one of {', '.join(get_args(VehicleCategory))}",
                code="invalid_vehicle_category",
            )
        snap = await self._snapshot()
        service = snap.services.get(msg.service_code)
        if service is None:
            raise NotFound(f"no service {msg.service_code!r}", code="unknown_service")
        if not service.active:
            raise Conflict(f"service {msg.service_code!r} is not offered at the moment", code="service_inactive")
        wanted = {
            ("base", ""),
            ("owner_type", msg.owner_type),
            ("vehicle_category", msg.vehicle_category),
            *(("characteristic", c) for c in msg.characteristics),
        }
        lines = [
            QuoteLine(kind=f.kind, match=f.match, label=f.label, amount=f.amount)
            for f in snap.fees
            if f.service_code == service.code and f.active and (f.kind, f.match) in wanted
        ]
        if not any(line.kind == "base" for line in lines):
            raise Conflict(f"service {service.code!r} has no base fee", code="no_base_fee")
        lines.sort(key=lambda line: (line.kind != "base", line.kind, line.match))
        return Quote(service_code=service.code, total=sum(line.amount for line in lines), lines=lines)

    @handler
    async def list_history(self, msg: ListHistory, con: asyncpg.Connection) -> HistoryPage:
        after = decode_cursor(msg.cursor, int)
        rows = await store.history(con, msg.entity, msg.key, after and after[0], msg.limit + 1)
        return page(HistoryPage, rows, msg.limit, lambda h: (h.id,))

    # --- writes ------------------------------------------------------------------------------------

    @handler
    async def put_setting(self, msg: PutSetting, con: asyncpg.Connection) -> Setting:
        old = await store.get_setting(con, msg.key, lock=True)
        if old is None and msg.type is None:
            raise Invalid("a new setting needs a type", code="setting_type_required")
        if old is not None and msg.type is not None and msg.type != old.type:
            raise Conflict(f"setting {msg.key!r} is of type {old.type}", code="setting_type_mismatch")
        type_ = msg.type or old.type  # type: ignore[union-attr]
        new = Setting(
            key=msg.key,
            type=type_,
            value=_check_value(type_, msg.value),
            public=msg.public if msg.public is not None else (old.public if old else False),
            description=msg.description if msg.description is not None else (old.description if old else ""),
        )
        saved = await store.upsert_setting(con, new, msg.by)
        await self._changed(con, "setting", msg.key, msg.by, _plain(old), _plain(saved))
        self._cache = None
        return saved

    @handler
    async def create_service(self, msg: CreateService, con: asyncpg.Connection) -> Service:
        saved = await store.insert_service(con, msg.code, msg.fields, msg.by)
        if saved is None:
            raise Conflict(f"service {msg.code!r} exists already", code="service_exists")
        await self._changed(con, "service", msg.code, msg.by, None, _plain(saved))
        self._cache = None
        return saved

    @handler
    async def update_service(self, msg: UpdateService, con: asyncpg.Connection) -> Service:
        old = await store.get_service(con, msg.code, lock=True)
        if old is None:
            raise NotFound(f"no service {msg.code!r}", code="unknown_service")
        saved = await store.update_service(con, msg.code, msg.fields, msg.by)
        await self._changed(con, "service", msg.code, msg.by, _plain(old), _plain(saved))
        self._cache = None
        return saved  # type: ignore[return-value]

    @handler
    async def create_fee(self, msg: CreateFee, con: asyncpg.Connection) -> Fee:
        _check_fee_match(msg.fields.kind, msg.fields.match)
        await self._require_service(con, msg.fields.service_code)
        saved = await store.insert_fee(con, msg.fields, msg.by)
        if saved is None:
            raise Conflict("this service already has a fee line for that kind and match", code="fee_exists")
        await self._changed(con, "fee", str(saved.id), msg.by, None, _plain(saved))
        self._cache = None
        return saved

    @handler
    async def update_fee(self, msg: UpdateFee, con: asyncpg.Connection) -> Fee:
        _check_fee_match(msg.fields.kind, msg.fields.match)
        old = await store.get_fee(con, msg.fee_id, lock=True)
        if old is None:
            raise NotFound(f"no fee {msg.fee_id}", code="unknown_fee")
        await self._require_service(con, msg.fields.service_code)
        clash = await store.find_fee(con, msg.fields.service_code, msg.fields.kind, msg.fields.match)
        if clash is not None and clash.id != msg.fee_id:
            raise Conflict("this service already has a fee line for that kind and match", code="fee_exists")
        saved = await store.update_fee(con, msg.fee_id, msg.fields, msg.by)
        await self._changed(con, "fee", str(msg.fee_id), msg.by, _plain(old), _plain(saved))
        self._cache = None
        return saved  # type: ignore[return-value]

    @handler
    async def put_feature(self, msg: PutFeature, con: asyncpg.Connection) -> FeatureFlag:
        old = await store.get_flag(con, msg.key, lock=True)
        new = FeatureFlag(
            key=msg.key,
            enabled=msg.enabled,
            rollout_percent=msg.rollout_percent,
            description=msg.description if msg.description is not None else (old.description if old else ""),
        )
        saved = await store.upsert_flag(con, new, msg.by)
        await self._changed(con, "feature", msg.key, msg.by, _plain(old), _plain(saved))
        self._cache = None
        return saved

    async def _require_service(self, con: asyncpg.Connection, code: str) -> None:
        if await store.get_service(con, code) is None:
            raise NotFound(f"no service {code!r}", code="unknown_service")

    # --- events and seed ---------------------------------------------------------------------------

    @handler
    async def on_config_changed(self, event: ConfigChanged) -> None:
        self._cache = None

    @handler
    async def seed(self, msg: SeedConfig, con: asyncpg.Connection) -> int:
        if msg.only_if_empty and not await store.is_empty(con):
            return 0
        added = await seed_data.load(con)
        self._cache = None
        if added:
            log.info("seeded %d config rows", added)
        return added


def _plain(value: Any) -> Any:
    """The history form of a row: its fields without the bookkeeping timestamps."""
    if value is None:
        return None
    data = msgspec.to_builtins(value)
    data.pop("updated_at", None)
    data.pop("updated_by", None)
    return data


def _check_fee_match(kind: str, match: str) -> None:
    if (kind == "base") != (match == ""):
        raise Invalid("a base fee has no match; an adjustment needs one", code="invalid_fee_match")
