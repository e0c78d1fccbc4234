"""The integrations actor: ANIP and DGI lookups over X-Road, behind one circuit breaker per registry.

It validates identifiers before any call, logs every HTTP attempt (hashed identifier, no personal
data) in `integrations.integration_logs`, queues non-urgent lookups that failed because a registry
was unavailable, and runs the background worker that retries them (see messages.py for what
"non-urgent" means). It asks no other actor. Lookups wait on the network, so they take no
connection from the runtime: they write (the queue, the call log) in short blocks of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import socket
import time
import unicodedata
from datetime import date
from typing import Any

import asyncpg
import httpx
import msgspec

from simveb.actors.integrations import store
from simveb.actors.integrations.client import Registry, new_http_client
from simveb.actors.integrations.messages import (
    BreakerChange,
    CheckTax,
    Citizen,
    CitizenLookupCompleted,
    CitizenVerification,
    Company,
    CompanyLookupCompleted,
    GetIntegrationsStatus,
    IntegrationsStatus,
    LookupCitizen,
    LookupCompany,
    ProcessRetryQueue,
    ServiceName,
    ServiceStatus,
    TaxCheck,
    VerifyCitizen,
)
from simveb.bus import Actor, handler
from simveb.errors import Invalid, NotFound, Unavailable

log = logging.getLogger("simveb.integrations")

NPI = re.compile(r"[0-9]{10}")
IFU = re.compile(r"[0-9]{13}")
# DGI's taxpayer states (French) as our tax_status values.
TAX_STATUS = {"ACTIF": "active", "SUSPENDU": "suspended", "RADIE": "closed", "CESSATION": "closed"}
PRUNE_EVERY_S = 3600.0


def check_npi(npi: str) -> None:
    if not NPI.fullmatch(npi):
        raise Invalid("an NPI is exactly 10 digits", code="invalid_npi", field="npi")


def check_ifu(ifu: str) -> None:
    if not IFU.fullmatch(ifu):
        raise Invalid("an IFU is exactly 13 digits", code="invalid_ifu", field="ifu")


class IntegrationsActor(Actor):
    name = "integrations"
    # Lookups wait on the network, so one slow registry must not queue every other lookup behind it.
    # The only in-memory state is the breakers, touched between awaits on one event loop (no torn
    # updates); everything else is in the database.
    concurrency = 8

    async def on_start(self) -> None:
        s = self.settings.integrations
        if self.settings.is_production and not s.hash_key:
            log.warning("integrations.hash_key is empty: logged identifier hashes are unkeyed SHA-256")
        self.http: httpx.AsyncClient = new_http_client(s)
        self.process = f"{socket.gethostname()}:{os.getpid()}"
        self.registries: dict[str, Registry] = {
            name: Registry(
                name,
                s,
                self.http,
                record=self._log_call,
                on_transition=self._log_transition,
                hash_identifier=lambda value: store.hash_identifier(value, s.hash_key),
            )
            for name in ("anip", "dgi")
        }
        self._wake = asyncio.Event()
        self._drain_lock = asyncio.Lock()
        self._worker = asyncio.create_task(self._queue_worker(), name="integrations:retry-queue")

    async def on_stop(self) -> None:
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        await self.http.aclose()

    # --- lookups -----------------------------------------------------------------------------------

    @handler
    async def lookup_citizen(self, msg: LookupCitizen) -> Citizen:
        check_npi(msg.npi)
        return await self._citizen(msg.npi, msg.requested_by, urgent=msg.urgent)

    @handler
    async def lookup_company(self, msg: LookupCompany) -> Company:
        check_ifu(msg.ifu)
        return await self._company(msg.ifu, msg.requested_by, urgent=msg.urgent)

    @handler
    async def verify_citizen(self, msg: VerifyCitizen) -> CitizenVerification:
        check_npi(msg.npi)
        citizen = await self._citizen(msg.npi, msg.requested_by, urgent=True)
        matches: dict[str, bool] = {}
        if msg.last_name is not None:
            matches["last_name"] = _names_match(msg.last_name, citizen.last_name)
        if msg.first_name is not None:
            matches["first_name"] = _names_match(msg.first_name, citizen.first_name)
        if msg.birth_date is not None:
            matches["birth_date"] = msg.birth_date == citizen.birth_date
        return CitizenVerification(citizen=citizen, matches=matches, verified=all(matches.values()))

    @handler
    async def check_tax(self, msg: CheckTax) -> TaxCheck:
        check_ifu(msg.ifu)
        company = await self._company(msg.ifu, msg.requested_by, urgent=True)
        return TaxCheck(company=company, active=company.tax_status == "active")

    async def _citizen(self, npi: str, requested_by: str | None, *, urgent: bool) -> Citizen:
        body = await self._lookup("anip", npi, requested_by, urgent)
        if body is None:
            raise NotFound("ANIP knows no person with this NPI", code="npi_not_found")
        return citizen_from(body)

    async def _company(self, ifu: str, requested_by: str | None, *, urgent: bool) -> Company:
        body = await self._lookup("dgi", ifu, requested_by, urgent)
        if body is None:
            raise NotFound("DGI knows no taxpayer with this IFU", code="ifu_not_found")
        return company_from(body)

    async def _lookup(
        self, service: ServiceName, identifier: str, requested_by: str | None, urgent: bool
    ) -> dict[str, Any] | None:
        try:
            return await self.registries[service].lookup(identifier, requested_by=requested_by)
        except Unavailable as exc:
            if urgent:
                raise
            s = self.settings.integrations
            async with self.db.connection() as con:
                await store.enqueue(con, service, identifier, requested_by, s.queue_base_delay_s)
            self._wake.set()
            queued = Unavailable(
                f"{exc.detail}; the lookup was queued and will be tried again",
                code="lookup_queued",
                service=service,
                reason=exc.code,
            )
            queued.headers.update(exc.headers)
            raise queued from exc

    # --- status ------------------------------------------------------------------------------------

    @handler
    async def status(self, msg: GetIntegrationsStatus, con: asyncpg.Connection) -> IntegrationsStatus:
        window = self.settings.integrations.status_window_s
        figures = await store.figures(con, window)
        changes = await store.last_transitions(con)
        services = []
        for name, registry in self.registries.items():
            f = figures.get(name) or store.Figures()
            change = changes.get(name)
            services.append(
                ServiceStatus(
                    service=registry.service,
                    breaker=registry.breaker.status(),
                    last_change=None if change is None else BreakerChange(**msgspec.structs.asdict(change)),
                    window_s=window,
                    calls=f.calls,
                    errors=f.errors,
                    error_rate=round(f.errors / f.calls, 4) if f.calls else 0.0,
                    p50_ms=f.p50_ms,
                    p95_ms=f.p95_ms,
                    queued=f.queued,
                    abandoned=f.abandoned,
                )
            )
        return IntegrationsStatus(services=services)

    # --- retry queue -------------------------------------------------------------------------------

    @handler
    async def process_retry_queue(self, msg: ProcessRetryQueue) -> int:
        return await self._drain()

    async def _queue_worker(self) -> None:
        s = self.settings.integrations
        last_prune = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), s.queue_poll_s)
            self._wake.clear()
            try:
                while await self._drain():
                    pass
                if time.monotonic() - last_prune > PRUNE_EVERY_S:
                    last_prune = time.monotonic()
                    async with self.db.connection() as con:
                        await store.prune_logs(con, s.log_retention_days)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("integrations retry queue failed; trying again later")
                await asyncio.sleep(min(s.queue_poll_s, 5.0))

    async def _drain(self) -> int:
        """Try each due queued lookup once (the queue is the retry: no in-call retries here)."""
        s = self.settings.integrations
        async with self._drain_lock:
            # Registries whose breaker is open are skipped whole: their rows wait, no attempt is spent.
            ready = [
                name for name, r in self.registries.items() if r.breaker.state != "open" or not r.breaker.retry_after()
            ]
            if not ready:
                return 0
            lease = s.lookup_budget_s * 2
            async with self.db.connection() as con:
                rows = await store.claim_due(con, ready, s.queue_batch, lease)
            for row in rows:
                await self._retry(row)
            return len(rows)

    async def _retry(self, row: store.QueuedLookup) -> None:
        s = self.settings.integrations
        registry = self.registries[row.service]
        try:
            body = await registry.lookup(row.identifier, requested_by=row.requested_by, retries=0, origin="queue")
            # Built before the transaction: a record we cannot read counts as a failed try.
            event = _completed(row, "found" if body is not None else "not_found", body)
        except Unavailable as exc:
            async with self.db.transaction() as con:
                if exc.code == "breaker_open":
                    # Not an attempt: the breaker refused before any call.
                    delay = max(registry.breaker.retry_after(), s.queue_poll_s)
                    await store.reschedule(con, row.id, delay, exc.code, consumed=False)
                elif row.attempts + 1 >= s.queue_max_attempts:
                    await store.abandon(con, row.id, exc.code)
                    await self.emit(con, _completed(row, "abandoned", None))
                    log.warning("queued %s lookup %d abandoned after %d tries", row.service, row.id, row.attempts + 1)
                else:
                    step = min(s.queue_max_delay_s, s.queue_base_delay_s * 2 ** (row.attempts + 1))
                    delay = step / 2 + random.uniform(0, step / 2)  # jitter: queued rows do not return together
                    await store.reschedule(con, row.id, delay, exc.code, consumed=True)
            return
        async with self.db.transaction() as con:
            await store.delete_queued(con, row.id)
            await self.emit(con, event)

    # --- logging -----------------------------------------------------------------------------------

    async def _log_call(self, entry: store.CallLog) -> None:
        async with self.db.connection() as con:
            await store.log_call(con, entry)

    async def _log_transition(self, service: str, old: str, new: str) -> None:
        async with self.db.connection() as con:
            await store.record_transition(con, service, old, new, self.process)


# --- registry records --------------------------------------------------------------------------------


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    return str(value).strip() or None if value is not None else None


def citizen_from(body: dict[str, Any]) -> Citizen:
    """ANIP's CITIZEN_BY_NPI_LITE record (French keys) as a Citizen; a missing name is a bad response."""
    last, first = _text(body, "nom"), _text(body, "prenoms")
    if not last or not first:
        raise Unavailable("ANIP answered without a name", code="registry_bad_response", service="anip")
    birth = None
    if raw := _text(body, "date_naissance"):
        try:
            birth = date.fromisoformat(raw)
        except ValueError:
            raise Unavailable(
                "ANIP answered with a malformed birth date", code="registry_bad_response", service="anip"
            ) from None
    return Citizen(
        npi=str(body["npi"]),
        last_name=last,
        first_name=first,
        birth_date=birth,
        sex=_text(body, "sexe"),
        phone=_text(body, "telephone"),
        residence=_text(body, "residence"),
        nationality=_text(body, "nationalite"),
    )


def company_from(body: dict[str, Any]) -> Company:
    """DGI's DETAIL-IFU record (French keys) as a Company."""
    name = _text(body, "raison_sociale")
    if not name:
        raise Unavailable("DGI answered without a name", code="registry_bad_response", service="dgi")
    state = _text(body, "etat")
    return Company(
        ifu=str(body["ifu"]),
        name=name,
        rccm=_text(body, "rccm"),
        address=_text(body, "adresse"),
        tax_status=TAX_STATUS.get(state.upper(), state.lower()) if state else None,
    )


def _completed(
    row: store.QueuedLookup, outcome: Any, body: dict[str, Any] | None
) -> CitizenLookupCompleted | CompanyLookupCompleted:
    if row.service == "anip":
        citizen = citizen_from(body) if body is not None else None
        return CitizenLookupCompleted(
            npi=row.identifier, outcome=outcome, citizen=citizen, requested_by=row.requested_by
        )
    company = company_from(body) if body is not None else None
    return CompanyLookupCompleted(ifu=row.identifier, outcome=outcome, company=company, requested_by=row.requested_by)


def _normalise(name: str) -> list[str]:
    """Case, accents, hyphens and spacing do not make two names different."""
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().casefold()
    return re.sub(r"[^a-z0-9]+", " ", plain).split()


def _names_match(given: str, registered: str) -> bool:
    """Equal after normalisation, or every given name is among the registered ones (several first names)."""
    mine, theirs = _normalise(given), _normalise(registered)
    return bool(mine) and (mine == theirs or set(mine) <= set(theirs))
