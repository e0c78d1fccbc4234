"""The integrations service's public contract: registry lookups other actors may ask for.

Urgent and non-urgent lookups: a lookup is urgent by default (someone is waiting for the answer, so a
registry that is down is an immediate Unavailable). A caller that can live with a later answer (a
sign-up that may be verified afterwards, a nightly re-check) sends `urgent=False`: if the registry is
unavailable the lookup is queued, the caller still gets Unavailable (code `lookup_queued`), and when a
background try succeeds or gives up, `CitizenLookupCompleted` / `CompanyLookupCompleted` is published.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

import msgspec

from simveb.errors import Invalid, NotFound
from simveb.messages import Ask, Event, Record

# Long enough for any real input (the actor checks the exact format and answers 422), short enough
# that nobody posts a novel.
Identifier = Annotated[str, msgspec.Meta(max_length=32)]
PersonName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]

ServiceName = Literal["anip", "dgi"]
BreakerState = Literal["closed", "open", "half_open"]


# --- replies -----------------------------------------------------------------------------------------


class Citizen(Record):
    """What ANIP's CITIZEN_BY_NPI_LITE returns about a person."""

    npi: str
    last_name: str
    first_name: str
    birth_date: date | None = None
    sex: str | None = None  # "M" or "F"
    phone: str | None = None
    residence: str | None = None
    nationality: str | None = None


class Company(Record):
    """What DGI's DETAIL-IFU returns about a taxpayer."""

    ifu: str
    name: str
    rccm: str | None = None
    address: str | None = None
    tax_status: str | None = None  # e.g. "active", "suspended"


class CitizenVerification(Record):
    """A citizen as ANIP knows them, and whether the details given by the caller match."""

    citizen: Citizen
    # One entry per detail the caller gave (last_name, first_name, birth_date): does it match?
    matches: dict[str, bool]
    verified: bool  # every given detail matches (true when none was given: the NPI exists)


class TaxCheck(Record):
    """A taxpayer as DGI knows them and whether their tax standing is active."""

    company: Company
    active: bool


class BreakerStatus(Record):
    state: BreakerState
    recent_failures: int  # failures inside the breaker window
    opened_at: datetime | None = None
    probe_at: datetime | None = None  # when an open breaker lets a probe through
    rejected: int = 0  # lookups answered at once by the open breaker since this process started


class BreakerChange(Record):
    """A breaker state change as recorded in the database (by whichever process saw it)."""

    at: datetime
    from_state: BreakerState
    to_state: BreakerState
    process: str


class ServiceStatus(Record):
    service: ServiceName
    breaker: BreakerStatus  # this process's breaker
    last_change: BreakerChange | None = None  # the latest change recorded by any process
    window_s: float = 0.0
    calls: int = 0
    errors: int = 0  # calls that failed for a reason other than "not found"
    error_rate: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    queued: int = 0  # non-urgent lookups waiting for another try
    abandoned: int = 0  # queued lookups that gave up


class IntegrationsStatus(Record):
    services: list[ServiceStatus]


# --- queries -----------------------------------------------------------------------------------------


class LookupCitizen(Ask[Citizen]):
    """Sent by users (NPI verification); NotFound when ANIP does not know the NPI, Unavailable when down."""

    errors = (NotFound, Invalid)

    npi: str
    # See the module docstring: False queues the lookup when ANIP is unavailable.
    urgent: bool = True
    # Who the lookup is made for (a user id), sent as X-Road-UserId; never logged.
    requested_by: str | None = None


class LookupCompany(Ask[Company]):
    """Sent by users (company KYC); NotFound when DGI does not know the IFU, Unavailable when down."""

    errors = (NotFound, Invalid)

    ifu: str
    urgent: bool = True
    requested_by: str | None = None


class VerifyCitizen(Ask[CitizenVerification]):
    """Look an NPI up and compare the details a person declared with ANIP's (accents and case ignored)."""

    errors = (NotFound, Invalid)

    npi: Identifier
    last_name: PersonName | None = None
    first_name: PersonName | None = None
    birth_date: date | None = None
    requested_by: str | None = None


class CheckTax(Ask[TaxCheck]):
    """Look an IFU up and say whether the taxpayer is active at DGI."""

    errors = (NotFound, Invalid)

    ifu: Identifier
    requested_by: str | None = None


class GetIntegrationsStatus(Ask[IntegrationsStatus]):
    """Breaker state, recent error rate and latency per registry."""


class ProcessRetryQueue(Ask[int]):
    """Try the due queued lookups now (the background worker does it on its own); returns rows handled."""


# --- events ------------------------------------------------------------------------------------------


class CitizenLookupCompleted(Event):
    """A queued (non-urgent) citizen lookup finished: found, not found, or abandoned after N tries."""

    npi: str
    outcome: Literal["found", "not_found", "abandoned"]
    citizen: Citizen | None = None
    requested_by: str | None = None


class CompanyLookupCompleted(Event):
    """A queued (non-urgent) company lookup finished: found, not found, or abandoned after N tries."""

    ifu: str
    outcome: Literal["found", "not_found", "abandoned"]
    company: Company | None = None
    requested_by: str | None = None
